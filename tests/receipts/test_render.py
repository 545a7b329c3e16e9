"""backend/receipts/render.py: the receipt's PDF and PNG for 58 mm roll paper.

The PDF's text read back (Chinese, masked, no full identity number), its page 58 mm wide;
the PNG 384 dots wide and 1-bit, its QR code decoding to the verify URL; a refund shown apart
while the receipt's own lines stay as they were; amounts from fen to the fen."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image
from pypdf import PdfReader

from backend.publications.pdf import FontUnavailable
from backend.receipts.render import PAGE_MM, WIDTH, capital_yuan, render_pdf, render_png
from backend.receipts.view import ReceiptItem, ReceiptView
from backend.security.pii import mask_id_number
from tests.receipts.samples import FULL_IDS, KINDS, view

MM_PT = 72 / 25.4
# a whole identity number: region, birth date, sequence, check character (not the receipt's
# and order's own long numbers)
ID_PATTERN = re.compile(r"(?<!\d)\d{6}(19|20)\d\d[01]\d[0-3]\d\d{3}[\dXx](?!\d)")


def pdf_text(content: bytes) -> str:
    assert content.startswith(b"%PDF-")
    pages = PdfReader(io.BytesIO(content)).pages
    assert len(pages) == 1                        # a roll: one page as long as the receipt
    return pages[0].extract_text()


def png_image(content: bytes) -> Image.Image:
    assert content.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(content))


def qr_texts(image: Image.Image) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(image)]


@pytest.mark.parametrize("kind", KINDS)
def test_pdf_reads_back_in_chinese_masked(kind: str) -> None:
    v = view(kind)
    content = render_pdf(v)
    text = pdf_text(content)
    assert "城乡居民基本养老、医疗保险" in text and "缴费凭证" in text
    assert v.receipt_no in text and v.order_no in text
    assert "2021年度" in text
    assert "2021-10-15 14:03:22" in text          # paid, Asia/Shanghai
    assert "业务日期" in text and "2021-10-15" in text
    assert "扫码核验" in text
    assert f"{v.amount_fen // 100:,}.{v.amount_fen % 100:02d}元" in text
    # nothing whole: no full identity number in the text nor anywhere in the file
    assert not ID_PATTERN.search(text.replace(" ", "")), text
    for number in FULL_IDS:
        assert number not in text
        assert number.encode() not in content
    for name in ("张三丰", "李梅", "欧阳娜娜"):
        assert name not in text


def test_pdf_household_lists_each_resident_masked() -> None:
    text = pdf_text(render_pdf(view("household")))
    assert "张**" in text and "李*" in text
    assert mask_id_number(FULL_IDS[0]) in text and mask_id_number(FULL_IDS[1]) in text
    assert "微信支付" in text
    assert text.count("城乡居民基本养老保险") == 2 and text.count("城乡居民基本医疗保险") == 2
    assert text.count("380.00元") == 2 and text.count("350.00元") == 2
    assert "1,460.00元" in text and "人民币壹仟肆佰陆拾元整" in text


def test_pdf_cash_has_agent_and_paper_receipt() -> None:
    v = view("cash")
    text = pdf_text(render_pdf(v))
    assert "欧***" in text and mask_id_number(FULL_IDS[3]) in text
    assert "现金(代办员代收)" in text
    assert "代办员" in text and "东村代办员 王*" in text
    assert "纸质收据号" in text and "No.0000123" in text
    assert "200.00元" in text and "350.00元" in text and "550.00元" in text


def test_pdf_department_items_with_counts() -> None:
    text = pdf_text(render_pdf(view("department")))
    assert "缴费单位" in text and "证件号码" not in text
    assert "部门代缴" in text
    # the name wraps over lines; never a closing bracket first on a line
    assert "店子镇人民政府民政办公" in text and not re.search(r"\n）", text)
    assert "126人" in text and "131人" in text
    assert "12,600.00元" in text and "45,850.00元" in text and "58,450.00元" in text


def test_an_unmasked_identity_number_is_masked_when_printed() -> None:
    """The view is masked by its maker; should a whole number slip in, it is still printed
    masked."""
    v = dataclasses.replace(view("cash"), payer_id_number_masked=FULL_IDS[3], items=(
        ReceiptItem("pension", 20_000, "欧***", FULL_IDS[3]),))
    content = render_pdf(v)
    text = pdf_text(content)
    assert all(ID_PATTERN.search(n) for n in FULL_IDS)    # the pattern the tests rely on
    assert FULL_IDS[3] not in text and FULL_IDS[3].encode() not in content
    assert mask_id_number(FULL_IDS[3]) in text


def test_pdf_page_is_58_mm_wide_and_as_long_as_the_receipt() -> None:
    heights = {}
    for kind in KINDS:
        page = PdfReader(io.BytesIO(render_pdf(view(kind)))).pages[0]
        assert float(page.mediabox.width) == pytest.approx(58 * MM_PT, abs=0.01)
        assert PAGE_MM == 58
        heights[kind] = float(page.mediabox.height) / MM_PT
    assert all(100 < h < 250 for h in heights.values()), heights
    assert heights["refunded"] > heights["household"]     # the refund section added


@pytest.mark.parametrize("kind", KINDS)
def test_png_is_384_dots_1_bit_and_its_qr_decodes(kind: str) -> None:
    v = view(kind, 4711)
    image = png_image(render_png(v))
    assert WIDTH == 384
    assert image.width == 384 and image.mode == "1"
    assert image.height > image.width
    assert round(image.info["dpi"][0]) == 203
    assert qr_texts(image) == [v.verify_url]


def test_pdf_qr_decodes_once_rasterised(tmp_path: Path) -> None:
    """The PDF's QR code (vector rectangles) scans: rasterised by Ghostscript at the
    printer's 203 dpi, where it is installed."""
    import shutil
    import subprocess

    gs = shutil.which("gs")
    if gs is None:
        pytest.skip("Ghostscript (gs) is not installed")
    v = view("household", 99)
    (tmp_path / "r.pdf").write_bytes(render_pdf(v))
    subprocess.run([gs, "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", "-sDEVICE=pnggray", "-r203",
                    f"-sOutputFile={tmp_path / 'r.png'}", str(tmp_path / "r.pdf")], check=True)
    assert qr_texts(Image.open(tmp_path / "r.png")) == [v.verify_url]


def test_refund_shown_apart_and_the_receipt_unchanged() -> None:
    original = view("household")
    refunded = view("refunded")
    assert refunded.verify_url == original.verify_url    # the same receipt, a refund beside
    text, before = pdf_text(render_pdf(refunded)), pdf_text(render_pdf(original))
    assert "已退款" in text and "已退款" not in before
    assert "退款合计" in text and "重复缴费，原路退回" in text and "2021-10-20 09:30:00" in text
    # the receipt's lines come first, as they were; the refund after them
    assert text.startswith(before.rstrip()), (before, text)
    assert text.index("已退款") > text.index("扫码核验")
    assert "1,460.00元" in text and text.count("350.00元") == 4   # 2 items, refund, its line
    # the PNG: the receipt's rows are the same dots; the refund is added below
    a, b = png_image(render_png(original)), png_image(render_png(refunded))
    assert b.height > a.height
    top = a.height - 30                                   # above the bottom margin
    assert a.crop((0, 0, WIDTH, top)).tobytes() == b.crop((0, 0, WIDTH, top)).tobytes()
    assert qr_texts(b) == [refunded.verify_url]


@pytest.mark.parametrize(("fen", "printed"), [
    (1, "0.01元"), (10, "0.10元"), (99, "0.99元"), (100, "1.00元"), (38_005, "380.05元"),
    (123_456_789, "1,234,567.89元")])
def test_amounts_printed_from_fen_exactly(fen: int, printed: str) -> None:
    v = view("cash", amount_fen=fen)
    assert v.amount_fen == fen
    text = pdf_text(render_pdf(v))
    assert text.count(printed) == 2                       # the item and the total
    assert f"人民币{capital_yuan(fen)}" in text.replace("\n", "")   # long ones wrap


@pytest.mark.parametrize(("fen", "capital"), [
    (0, "零元整"), (1, "壹分"), (10, "壹角"), (11, "壹角壹分"), (100, "壹元整"),
    (1_000, "壹拾元整"), (38_000, "叁佰捌拾元整"), (38_050, "叁佰捌拾元伍角"),
    (38_005, "叁佰捌拾元零伍分"), (146_000, "壹仟肆佰陆拾元整"), (1_000_500, "壹万零伍元整"),
    (10_050_000, "壹拾万零伍佰元整"), (100_000_000, "壹佰万元整"),
    (1_000_010_000, "壹仟万零壹佰元整"), (10_000_000_100, "壹亿零壹元整"),
    (12_345_678_901, "壹亿贰仟叁佰肆拾伍万陆仟柒佰捌拾玖元零壹分"),
    (100_100, "壹仟零壹元整"), (5_845_000, "伍万捌仟肆佰伍拾元整")])
def test_capital_numerals(fen: int, capital: str) -> None:
    assert capital_yuan(fen) == capital


def test_without_the_font_both_files_refuse(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-font.ttc"
    for render in (render_pdf, render_png):
        with pytest.raises(FontUnavailable) as e:
            render(view("cash"), font_path=missing)
        assert e.value.status == 503 and "fonts-wqy-microhei" in str(e.value)


def test_same_view_same_bytes() -> None:
    """A receipt's files do not change between downloads (no render time in them)."""
    v: ReceiptView = view("department")
    assert render_png(v) == render_png(v)
    assert render_pdf(v) == render_pdf(v)


def test_qr_version_is_qrcodes_best_fit() -> None:
    """The QR version render.py computes is the one qrcode's fit finds (which it skips)."""
    import qrcode
    import qrcode.util

    from backend.receipts.render import _qr_version

    for n in (1, 14, 15, 100, 271, 272, 563, 564, 1000, 2331):
        code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M)
        code.add_data(qrcode.util.QRData(b"a" * n, mode=qrcode.util.MODE_8BIT_BYTE))
        assert _qr_version(n) == code.best_fit(), n


def test_pdf_prints_rare_characters() -> None:
    """Names outside GB2312 (喆, traditional 東村代辦員) are in the embedded font too."""
    v = dataclasses.replace(view("cash"), payer_name="喆*", agent="東村代辦員 王*")
    text = pdf_text(render_pdf(v))
    assert "喆*" in text and "東村代辦員 王*" in text


def test_renders_alike_from_several_threads() -> None:
    """The endpoint renders in a thread pool: the kept glyphs and fonts are shared."""
    from concurrent.futures import ThreadPoolExecutor

    from backend.receipts import render

    views = [view(KINDS[i % len(KINDS)], 7000 + i) for i in range(16)]
    # from cold: the threads load the font and draw the glyphs at the same time
    render._SOURCES.clear()
    render._glyph.cache_clear()
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda v: (render_pdf(v), render_png(v)), views))
    serial = [(render_pdf(v), render_png(v)) for v in views]
    assert threaded == serial
