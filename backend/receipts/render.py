"""A receipt (缴费凭证) as files: PDF and PNG for 58 mm roll paper, in Chinese.

One layout, made in printer dots, drawn twice:

- the PNG is what a 203-dpi thermal printer prints on 58 mm paper: 384 dots wide (48 mm
  printable), as long as the receipt, 1-bit black and white (a thermal head has no grey), text
  drawn without anti-aliasing;
- the PDF page is 58 mm wide (5 mm margins, the same 48 mm of content), as long as the
  receipt, the text real text (copyable, read back by tests) in the CJK font embedded and
  subset by fpdf2, the QR code drawn as vector rectangles.

The font is ``settings.pdf_font_path`` (Debian's fonts-wqy-microhei by default), as for the
publications; without it both files raise ``FontUnavailable`` (503 ``pdf_font_unavailable``).

The view is masked already (``张*``, ``370406********1234``); as a second line of defence an
identity number without a ``*`` is masked again here, so no full number is ever printed.
Amounts are integer fen, printed as yuan by ``backend.money.yuan`` (no float anywhere).

Speed (bench/receipt_render.py): PIL fonts are loaded once per size and each character drawn
once (the PNG pastes kept glyph bitmaps); the PDF font is read once per process and each PDF
embeds a font built of just its characters (fpdf2 subsetting the whole collection took most
of a PDF's time); the QR matrix of a URL is cached, so the PDF and PNG of one receipt encode
it once, and its version computed rather than searched.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import qrcode
import qrcode.util as qrutil
from fontTools import ttLib
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.recordingPen import DecomposingRecordingPen
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fontTools.ttLib.tables._g_l_y_f import Glyph
from fpdf import FPDF
from fpdf.fonts import TTFFont
from PIL import Image, ImageDraw, ImageFont

from backend.clock import SHANGHAI
from backend.config import get_settings
from backend.money import yuan
from backend.publications.pdf import FontUnavailable
from backend.receipts.view import CHANNEL_LABELS, INSURANCE_LABELS, ReceiptItem, ReceiptView
from backend.security.pii import mask_id_number

__all__ = ["DPI", "WIDTH", "PAGE_MM", "FontUnavailable", "render_pdf", "render_png",
           "capital_yuan"]

DPI = 203
WIDTH = 384                       # dots: 48 mm, the printable width of 58 mm paper
PAGE_MM = 58.0
MM = 25.4 / DPI                   # one dot in mm
SIDE_MM = (PAGE_MM - WIDTH * MM) / 2    # the PDF's left and right margin (≈ 5 mm)
TOP_MM, BOTTOM_MM = 4.0, 6.0
PAD = 12                          # the PNG's blank dots above and below the content

# type sizes in dots (24 dots is the thermal printers' own CJK size: 16 characters a line)
HEAD, TITLE, TOTAL, BODY, SMALL, TINY = 34, 27, 28, 23, 20, 18
LABEL_W = 5 * BODY + 8            # the field labels' column: 纸质收据号 is five characters
FONT = "cjk"

# punctuation never put first on a line (禁则)
NO_LINE_START = frozenset("，。、；：！？）」』】》,.;:!?)%")

TITLE_TEXT = "城乡居民基本养老、医疗保险"
HEAD_TEXT = "缴费凭证"
VERIFY_TEXT = "扫码核验"
REFUNDED_TEXT = "已退款"


# --- the layout, in dots ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Text:
    x: int                        # left edge, right edge or centre (align l, r, c)
    y: int                        # baseline
    size: int
    s: str
    align: str = "l"
    white: bool = False           # on a black bar


@dataclass(frozen=True, slots=True)
class _Rule:
    y: int
    dashed: bool = True


@dataclass(frozen=True, slots=True)
class _Bar:                       # a black band (the refund section's heading)
    y: int
    h: int


@dataclass(frozen=True, slots=True)
class _QR:
    x: int
    y: int
    box: int                      # dots per module
    matrix: tuple[bytes, ...]      # one byte a module, 1 = dark


_Op = _Text | _Rule | _Bar | _QR


@lru_cache(maxsize=32)
def _pil_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # a .ttc holds several faces: index 0 is WenQuanYi Micro Hei
    return ImageFont.truetype(path, size, index=0)


@dataclass(frozen=True, slots=True)
class _Glyph:
    advance: float                # dots to the next character's origin
    dx: int                       # the bitmap's top left from the origin on the baseline
    dy: int
    mask: Image.Image | None      # 1-bit, None for a blank (space)


_PIL_LOCK = threading.Lock()


@lru_cache(maxsize=8192)
def _glyph(path: str, size: int, ch: str) -> _Glyph:
    """One character drawn once (1-bit, no anti-aliasing) and kept: a receipt is a few
    hundred characters of a few hundred distinct ones, and pasting a kept bitmap costs a
    fraction of FreeType drawing it again (drawing whole lines took most of the PNG's time)."""
    with _PIL_LOCK:     # one FreeType face shared by the endpoint's threads
        font = _pil_font(path, size)
        x0, y0, x1, y1 = (int(v) for v in font.getbbox(ch, anchor="ls"))
        mask = None
        if x1 > x0 and y1 > y0:
            mask = Image.new("1", (x1 - x0, y1 - y0), 0)
            draw = ImageDraw.Draw(mask)
            draw.fontmode = "1"
            draw.text((-x0, -y0), ch, fill=1, font=font, anchor="ls")
        return _Glyph(font.getlength(ch), x0, y0, mask)


def _text_width(path: str, size: int, s: str) -> float:
    """The width of ``s`` as drawn (character by character: no kerning, as in the PDF)."""
    return sum(_glyph(path, size, ch).advance for ch in s)


class _Layout:
    """Lines placed top to bottom; text measured with the PIL font (the PDF's advance widths
    are the same font's, so what fits here fits there)."""

    def __init__(self, font_path: str):
        self.path = font_path
        self.ops: list[_Op] = []
        self.y = 0

    def width(self, s: str, size: int) -> float:
        return _text_width(self.path, size, s)

    def wrap(self, s: str, size: int, width: float) -> list[str]:
        """Lines of ``s`` no wider than ``width``, broken between characters (Chinese has no
        spaces to break at; the numbers printed here fit a line)."""
        if self.width(s, size) <= width:
            return [s]
        lines, line, w = [], "", 0.0
        for ch in s:
            advance = self.width(ch, size)
            if line and w + advance > width:
                carry = ""
                if ch in NO_LINE_START and len(line) > 1:
                    line, carry = line[:-1], line[-1]   # 室（低保、特困人员代缴 / 人员代缴）
                lines.append(line)
                line = (carry + ch).lstrip()
                w = self.width(line, size)
            else:
                line += ch
                w += advance
        return [*lines, line] if line else lines

    def line(self, s: str, size: int, align: str = "l", x: int = 0, gap: float = 1.3) -> None:
        for part in self.wrap(s, size, WIDTH - x):
            self.y += round(size * gap)
            pos = {"l": x, "c": WIDTH // 2, "r": WIDTH}[align]
            self.ops.append(_Text(pos, self.y, size, part, align))

    def field(self, label: str, value: str, size: int = BODY) -> None:
        """``label`` in the left column, ``value`` beside it (wrapped within its column)."""
        parts = self.wrap(value, size, WIDTH - LABEL_W)
        for i, part in enumerate(parts):
            self.y += round(size * 1.35)
            if i == 0:
                self.ops.append(_Text(0, self.y, size, label))
            self.ops.append(_Text(LABEL_W, self.y, size, part))

    def pair(self, left: str, right: str, size: int = BODY, indent: int = 0) -> None:
        """``left`` at the left, ``right`` at the right edge; on a line of its own under
        ``left`` when both do not fit."""
        lines = self.wrap(left, size, WIDTH - indent)
        for part in lines:
            self.y += round(size * 1.35)
            self.ops.append(_Text(indent, self.y, size, part))
        if self.width(lines[-1], size) + indent + size + self.width(right, size) > WIDTH:
            self.y += round(size * 1.35)
        self.ops.append(_Text(WIDTH, self.y, size, right, "r"))

    def rule(self, dashed: bool = True) -> None:
        self.y += 12
        self.ops.append(_Rule(self.y, dashed))
        self.y += 4

    def space(self, dots: int) -> None:
        self.y += dots

    def bar(self, s: str, size: int) -> None:
        h = round(size * 1.6)
        self.y += 8
        self.ops.append(_Bar(self.y, h))
        self.ops.append(_Text(WIDTH // 2, self.y + round(h * 0.5 + size * 0.36), size, s,
                              "c", white=True))
        self.y += h

    def qr(self, content: str) -> None:
        matrix = _qr_matrix(content)
        # as large as the width allows with a module to spare each side: 4 dots (0.5 mm) a
        # module up to version 17 (a receipt of one or two items), 3 dots (ESC/POS printers'
        # own default) for the longer tokens of a household's 4 items (version 19); the
        # paper's 5 mm margins complete the quiet zone
        box = max(2, min(6, WIDTH // (len(matrix) + 2)))
        side = box * len(matrix)
        self.y += 8
        self.ops.append(_QR((WIDTH - side) // 2, self.y, box, matrix))
        self.y += side


def _qr_version(n_bytes: int) -> int:
    """The smallest QR version holding ``n_bytes`` as one 8-bit segment at level M: what
    qrcode's ``make(fit=True)`` finds by writing the data out bit by bit an extra time (a
    third of the code's time)."""
    limits = qrutil.BIT_LIMIT_TABLE[qrcode.constants.ERROR_CORRECT_M]
    for version in range(1, 41):
        bits = 4 + qrutil.length_in_bits(qrutil.MODE_8BIT_BYTE, version) + 8 * n_bytes
        if bits <= limits[version]:
            return version
    raise ValueError(f"{n_bytes} bytes do not fit a QR code")


@lru_cache(maxsize=256)
def _qr_matrix(content: str) -> tuple[bytes, ...]:
    """The QR code's modules with a 2-module quiet zone inside the image (the paper's margins
    add more). Level M (15 % of the code may be smudged or folded: it is paper); a fixed mask
    pattern, as in backend/orders/qr.py: choosing the best of eight costs most of the time,
    and every reader decodes any of them. Cached: the PDF and PNG of a receipt share it."""
    data = content.encode()
    code = qrcode.QRCode(version=_qr_version(len(data)), border=2, mask_pattern=2,
                         error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(qrutil.QRData(data, mode=qrutil.MODE_8BIT_BYTE))
    code.make(fit=False)
    return tuple(bytes(row) for row in code.get_matrix())


def _id(number: str | None) -> str | None:
    """An identity number as printed: masked, whatever the caller passed."""
    if not number or "*" in number:
        return number
    return mask_id_number(number)


def _whose(item: ReceiptItem) -> str:
    """The resident an item is for, as printed: ``李* 370406********562X``."""
    return " ".join(p for p in (item.name, _id(item.id_number_masked)) if p)


def _time(at: datetime) -> str:
    return at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def _money(fen: int) -> str:
    return f"{yuan(fen, thousands=True)}元"


DIGITS = "零壹贰叁肆伍陆柒捌玖"


def _capital_int(n: int) -> str:
    """An integer amount of yuan in capital numerals: 10500 → 壹万零伍佰."""
    if n == 0:
        return "零"
    groups = []
    while n:
        n, g = divmod(n, 10000)
        groups.append(g)
    out, zero = "", False
    for gi in range(len(groups) - 1, -1, -1):
        g = groups[gi]
        if g == 0:
            zero = bool(out)
            continue
        if out and (zero or g < 1000):
            out += "零"
        part, pending, started = "", False, False
        for pos in (3, 2, 1, 0):
            d = g // 10 ** pos % 10
            if d == 0:
                pending = started
                continue
            if pending:
                part += "零"
                pending = False
            part += DIGITS[d] + ("", "拾", "佰", "仟")[pos]
            started = True
        out += part + ("", "万", "亿", "万亿")[gi]
        zero = False
    return out


def capital_yuan(fen: int) -> str:
    """An amount in fen as the capital numerals of a Chinese receipt (大写), integer
    arithmetic only: 146000 → 壹仟肆佰陆拾元整, 38050 → 叁佰捌拾元伍角, 38005 →
    叁佰捌拾元零伍分, 1 → 壹分."""
    if fen < 0:
        raise ValueError("a receipt's amount is not negative")
    whole, cents = divmod(fen, 100)
    jiao, f = divmod(cents, 10)
    if cents == 0:
        return f"{_capital_int(whole)}元整"
    out = f"{_capital_int(whole)}元" if whole else ""
    if jiao:
        out += DIGITS[jiao] + "角"
    elif whole:
        out += "零"
    if f:
        out += DIGITS[f] + "分"
    return out


def _layout(view: ReceiptView, font_path: str) -> _Layout:
    lay = _Layout(font_path)
    lay.line(TITLE_TEXT, TITLE, "c")
    lay.line(HEAD_TEXT, HEAD, "c", gap=1.25)
    lay.rule(dashed=False)
    lay.field("凭证号", view.receipt_no)
    lay.field("缴费年度", f"{view.year}年度")
    lay.field("缴费单位" if view.kind == "department" else "缴费人", view.payer_name)
    payer_id = _id(view.payer_id_number_masked)
    if payer_id:
        lay.field("证件号码", payer_id)
    lay.rule()
    lay.pair("缴费项目", "金额", SMALL)
    # a household's items go under each resident's line; one person's items need none
    payer = " ".join(p for p in (view.payer_name, payer_id) if p)
    several = any(_whose(i) not in ("", payer) for i in view.items)
    shown = "" if several else payer
    for item in view.items:
        who = _whose(item)
        if who and who != shown:
            lay.line(who, SMALL)
            shown = who
        label = INSURANCE_LABELS.get(item.insurance, item.insurance)
        if view.kind == "department" or item.count != 1:
            label += f" {item.count}人"
        lay.pair(label, _money(item.amount_fen), BODY, indent=SMALL if several else 0)
    lay.rule()
    lay.pair("合计", _money(view.amount_fen), TOTAL)
    if view.amount_fen >= 0:
        lay.line(f"大写 人民币{capital_yuan(view.amount_fen)}", SMALL)
    lay.rule()
    lay.field("缴费渠道", CHANNEL_LABELS.get(view.channel, view.channel))
    lay.field("缴费时间", _time(view.paid_at))
    lay.field("业务日期", view.business_date.isoformat())
    lay.field("订单号", view.order_no)
    if view.agent:
        lay.field("代办员", view.agent)
    if view.paper_receipt_no:
        lay.field("纸质收据号", view.paper_receipt_no)
    if view.verify_url:
        lay.rule()
        lay.qr(view.verify_url)
        lay.line(VERIFY_TEXT, BODY, "c")
        lay.line("微信或浏览器扫码，核对本凭证真伪及退款情况", TINY, "c")
    if view.refunded_fen > 0:
        # shown beside the receipt, never in it: the lines above are the receipt as issued
        lay.space(10)
        whole = view.refunded_fen >= view.amount_fen
        lay.bar(REFUNDED_TEXT + ("（全额）" if whole else "（部分）"), TITLE)
        lay.pair("退款合计", _money(view.refunded_fen), BODY)
        for refund in view.refunds:
            lay.pair(_time(refund.refunded_at), _money(refund.amount_fen), SMALL)
            if refund.reason:
                lay.line(f"原因：{refund.reason}", SMALL, x=SMALL)
        lay.line("以上为凭证签发后的退款，凭证原内容不变", TINY)
        lay.rule(dashed=False)
    lay.space(round(BODY * 0.5))
    return lay


def _font_path(font_path: Path | None) -> Path:
    if font_path is None:
        font_path = get_settings().pdf_font_path
    if not font_path.is_file():
        raise FontUnavailable(f"the receipt's CJK font {font_path} is not installed "
                              f"(PDF_FONT_PATH; Debian: apt-get install fonts-wqy-microhei)")
    return font_path


def _texts(ops: list[_Op]) -> Iterator[str]:
    return (op.s for op in ops if isinstance(op, _Text))


# --- PNG ------------------------------------------------------------------------------

def render_png(view: ReceiptView, *, font_path: Path | None = None) -> bytes:
    """The receipt for a 203-dpi thermal printer on 58 mm paper: a 1-bit PNG 384 dots
    (``WIDTH``) wide and as long as the receipt, 203 dpi recorded in it."""
    path = str(_font_path(font_path))
    lay = _layout(view, path)
    height = lay.y + 2 * PAD
    img = Image.new("1", (WIDTH, height), 1)
    draw = ImageDraw.Draw(img)
    for op in lay.ops:
        if isinstance(op, _Text):
            _draw_text(img, path, op, PAD)
        elif isinstance(op, _Rule):
            y = op.y + PAD
            if op.dashed:
                for x in range(0, WIDTH, 8):
                    draw.line((x, y, x + 4, y), fill=0, width=2)
            else:
                draw.line((0, y, WIDTH - 1, y), fill=0, width=2)
        elif isinstance(op, _Bar):
            draw.rectangle((0, op.y + PAD, WIDTH - 1, op.y + PAD + op.h - 1), fill=0)
        else:
            img.paste(_qr_image(op.matrix, op.box), (op.x, op.y + PAD))
    buf = io.BytesIO()
    # zlib level 1: a tenth of the default's time, and a 1-bit receipt is small either way
    img.save(buf, format="PNG", dpi=(DPI, DPI), compress_level=1)
    return buf.getvalue()


def _draw_text(img: Image.Image, path: str, op: _Text, top: int) -> None:
    """``op``'s text pasted glyph by glyph from the kept bitmaps."""
    glyphs = [_glyph(path, op.size, ch) for ch in op.s]
    x = float(op.x)
    if op.align != "l":
        width = sum(g.advance for g in glyphs)
        x -= width if op.align == "r" else width / 2
    ink, y = (1 if op.white else 0), op.y + top
    for g in glyphs:
        if g.mask is not None:
            left, upper = round(x) + g.dx, y + g.dy
            img.paste(ink, (left, upper, left + g.mask.width, upper + g.mask.height), g.mask)
        x += g.advance


# a row of the matrix (one byte a module, 1 = dark) as grey levels: dark black
_DARK = bytes.maketrans(b"\x00\x01", b"\xff\x00")


def _qr_image(matrix: tuple[bytes, ...], box: int) -> Image.Image:
    n = len(matrix)
    raw = b"".join(matrix).translate(_DARK)
    return Image.frombytes("L", (n, n), raw).resize((n * box, n * box),
                                                     Image.Resampling.NEAREST).convert("1")


# --- PDF ------------------------------------------------------------------------------

class _GlyphSource:
    """The CJK font, read once a process (its character map and metrics; outlines as they
    are asked for), from which each PDF gets a font of just the characters it prints.

    fpdf2 subsets the font it embeds when it writes the file; given the whole collection
    (some 50,000 glyphs) that took 100-150 ms a receipt, most of it reading tables. Given a
    font of the receipt's hundred-odd characters, built here with fontTools' FontBuilder
    (composite glyphs drawn out into plain outlines, so no glyph refers to another by
    number), it takes a few milliseconds. Outlines are kept once drawn; fontTools' lazy
    reading is not thread-safe, so drawing one happens under a lock."""

    def __init__(self, path: Path):
        self.font = ttLib.TTFont(str(path), fontNumber=0, lazy=True, recalcTimestamp=False)
        self.cmap: dict[int, str] = self.font.getBestCmap()
        self.glyphset = self.font.getGlyphSet()
        self.notdef = self.font.getGlyphOrder()[0]
        self.lock = threading.Lock()
        self.glyphs: dict[str, tuple[bytes, int, int]] = {}    # name: glyf data, advance, lsb
        head, hhea, os2 = self.font["head"], self.font["hhea"], self.font["OS/2"]
        self.units = head.unitsPerEm
        self.head = {k: getattr(head, k) for k in ("xMin", "yMin", "xMax", "yMax",
                                                    "created", "modified")}
        self.ascent, self.descent = hhea.ascent, hhea.descent
        self.os2 = {k: getattr(os2, k) for k in (
            "sTypoAscender", "sTypoDescender", "sTypoLineGap", "usWinAscent", "usWinDescent",
            "sCapHeight", "sxHeight", "usWeightClass")}
        self.family = self.font["name"].getBestFamilyName() or "CJK"

    def _glyph(self, name: str) -> tuple[bytes, int, int]:
        glyph = self.glyphs.get(name)
        if glyph is None:
            with self.lock:
                if name in self.glyphs:
                    return self.glyphs[name]
                recording = DecomposingRecordingPen(self.glyphset)
                self.glyphset[name].draw(recording)
                pen = TTGlyphPen(None)
                recording.replay(pen)
                outline = pen.glyph()
                glyf = self.font["glyf"]
                outline.recalcBounds(glyf)
                advance = self.font["hmtx"][name][0]
                glyph = (outline.compile(glyf), advance, getattr(outline, "xMin", 0))
                self.glyphs[name] = glyph
        return glyph

    def font_for(self, text: str) -> bytes:
        """A TrueType font of the characters of ``text`` (those the font has), as bytes."""
        cmap = {cp: self.cmap[cp] for cp in {ord(ch) for ch in text} | {0x20}
                if cp in self.cmap}
        order = [self.notdef, *sorted(set(cmap.values()) - {self.notdef})]
        glyphs = {name: self._glyph(name) for name in order}
        fb = FontBuilder(self.units, isTTF=True)
        fb.font.recalcBBoxes = False              # the outlines' bounds are set already
        fb.font.recalcTimestamp = False           # the same receipt, the same bytes
        fb.setupGlyphOrder(order)
        fb.setupCharacterMap(cmap)
        fb.font["loca"] = ttLib.newTable("loca")
        glyf = fb.font["glyf"] = ttLib.newTable("glyf")
        glyf.glyphs = {name: Glyph(data) for name, (data, _, _) in glyphs.items()}
        glyf.glyphOrder = order
        fb.setupHorizontalMetrics({name: (adv, lsb) for name, (_, adv, lsb) in glyphs.items()})
        fb.setupHorizontalHeader(ascent=self.ascent, descent=self.descent)
        fb.setupNameTable({"familyName": self.family, "styleName": "Regular"})
        fb.setupOS2(version=3, **self.os2)
        fb.setupPost()
        for key, value in self.head.items():
            setattr(fb.font["head"], key, value)
        buf = io.BytesIO()
        fb.save(buf)
        return buf.getvalue()


_SOURCES: dict[str, _GlyphSource] = {}
_SOURCES_LOCK = threading.Lock()


def _glyph_source(path: Path) -> _GlyphSource:
    with _SOURCES_LOCK:
        source = _SOURCES.get(str(path))
        if source is None:
            source = _SOURCES[str(path)] = _GlyphSource(path)
    return source


def render_pdf(view: ReceiptView, *, font_path: Path | None = None) -> bytes:
    """The receipt as a PDF page 58 mm (``PAGE_MM``) wide and as long as the receipt, its
    text in the embedded CJK font."""
    path = _font_path(font_path)
    lay = _layout(view, str(path))
    font = _glyph_source(path).font_for("".join(_texts(lay.ops)))
    height = TOP_MM + lay.y * MM + BOTTOM_MM
    doc = FPDF(unit="mm", format=(PAGE_MM, height))
    doc.set_title(f"缴费凭证 {view.receipt_no}")
    doc.set_lang("zh-CN")
    doc.set_creator("resident-insurance-collection")
    doc.set_creation_date(view.paid_at)
    doc.set_margins(0, 0, 0)
    doc.set_auto_page_break(False)
    # fpdf2's add_font wants a file; its font class reads any file object
    embedded = TTFFont(doc, io.BytesIO(font), FONT, "")  # type: ignore[arg-type]
    embedded.ttfont.recalcBBoxes = False    # set when built: writing copies the outlines as-is
    doc.fonts[FONT] = embedded
    doc.add_page()
    doc.set_font(FONT, size=BODY)

    def x(dots: float) -> float:
        return SIDE_MM + dots * MM

    def y(dots: float) -> float:
        return TOP_MM + dots * MM

    size = 0
    for op in lay.ops:
        if isinstance(op, _Text):
            if op.size != size:
                size = op.size
                doc.set_font_size(size * 72 / DPI)
            left = x(op.x)
            if op.align != "l":
                w = doc.get_string_width(op.s)
                left -= w if op.align == "r" else w / 2
            doc.set_text_color(255 if op.white else 0)
            doc.text(left, y(op.y), op.s)
        elif isinstance(op, _Rule):
            doc.set_line_width(2 * MM)
            if op.dashed:
                doc.set_dash_pattern(dash=4 * MM, gap=4 * MM)
            doc.line(x(0), y(op.y), x(WIDTH), y(op.y))
            doc.set_dash_pattern()
        elif isinstance(op, _Bar):
            doc.set_fill_color(0)
            doc.rect(x(0), y(op.y), WIDTH * MM, op.h * MM, style="F")
        else:
            _pdf_qr(doc, op, x(op.x), y(op.y))
    return bytes(doc.output())


def _pdf_qr(doc: FPDF, qr: _QR, left: float, top: float) -> None:
    """The QR code as one filled path of rectangles, one per run of dark modules in a row:
    sharp at any zoom and on any printer. Written as PDF operators (fpdf2's ``rect`` per run
    took a tenth of the file's time)."""
    k, box = doc.k, qr.box * MM                   # points per mm; a module in mm
    page_h = doc.h
    ops = []
    for r, row in enumerate(qr.matrix):
        y = (page_h - top - (r + 1) * box) * k    # PDF's y runs up from the page's bottom
        c, n = 0, len(row)
        while c < n:
            if not row[c]:
                c += 1
                continue
            start = c
            while c < n and row[c]:
                c += 1
            ops.append(f"{(left + start * box) * k:.2f} {y:.2f} "
                       f"{(c - start) * box * k:.2f} {box * k:.2f} re")
    doc.set_fill_color(0)
    doc._out("\n".join(ops) + "\nf")  # noqa: SLF001
