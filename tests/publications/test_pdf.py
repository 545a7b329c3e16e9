"""GET /api/v1/publications/{village}/{kind}.pdf: Chinese text read back, masking, pages with
the header row repeated, the font subset, scopes, and the missing font's 503."""

from __future__ import annotations

import io
from datetime import date, datetime
from pathlib import Path

from fastapi.testclient import TestClient
from pypdf import PdfReader

from backend.clock import SHANGHAI
from backend.db import unit_of_work
from backend.publications.pdf import write_pdf
from backend.publications.service import Publication
from backend.residents.models import Town, Village
from backend.runtime import Runtime
from tests.factories import TOWN, VILLAGE, add_resident
from tests.publications.test_publications import ID_PATTERN, PHONES, _seed

NAMES = ("张三", "李梅", "王芳", "刘五", "孙七")


def pdf_text(content: bytes) -> list[str]:
    """Each page's text, as a reader of the file would copy it."""
    assert content.startswith(b"%PDF-")
    return [page.extract_text() for page in PdfReader(io.BytesIO(content)).pages]


def assert_no_personal_data(text: str, numbers: list[str]) -> None:
    assert not ID_PATTERN.search(text.replace(" ", "")), ID_PATTERN.search(text)
    assert not any(n in text for n in (*numbers, *PHONES)), text
    assert not any(name in text for name in NAMES), text


def test_pdf_roster_and_paid_read_back(rt: Runtime, client: TestClient) -> None:
    h, numbers = _seed(rt)
    with unit_of_work(rt.sessions) as s:      # enough residents for three pages
        numbers += [add_resident(s, rt.pii, f"赵{i}", date(1970, 1, 1 + i % 28), seq=100 + i)[1]
                    for i in range(60)]
    url = f"/api/v1/publications/{VILLAGE}/%s.pdf"
    r = client.get(url % "roster", params={"year": 2021}, headers=h["town_staff"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert f'filename="{VILLAGE}-2021-roster-draft.pdf"' in r.headers["content-disposition"]
    pages = pdf_text(r.content)
    text = "\n".join(pages)
    assert_no_personal_data(text, numbers)
    assert "店子镇东村 2021年度城乡居民基本养老保险、基本医疗保险公示清册（草稿）" in text
    assert f"东村（{VILLAGE}）" in text and "尚未公示" in text
    assert "2020-11-02 至 2020-11-04（3天）" in text
    masked = {n[:6] + "********" + n[-4:] for n in numbers[:4]}
    assert all(m in text for m in masked), text
    assert "张*" in text and "已缴" in text and "本人缴纳" in text and "280.00" in text
    assert "养老保险：已死亡；医疗保险：已死亡" in text
    assert "合计" in pages[-1] and "64人" in pages[-1]
    # every page starts its table with the header row, and is numbered
    assert len(pages) >= 3
    for n, page in enumerate(pages, 1):
        assert "序号" in page and "身份证号" in page and "养老保险状态" in page, n
        assert f"第 {n} 页 / 共 {len(pages)} 页" in page
    # the font is embedded, subset: the 5 MB collection does not come along
    assert b"/FontFile2" in r.content and len(r.content) < 150_000

    paid = client.get(url % "paid", params={"year": 2021}, headers=h["agent"])
    assert paid.status_code == 200, paid.text
    text = "\n".join(pdf_text(paid.content))
    assert_no_personal_data(text, numbers)
    assert "已缴费名单（草稿）" in text and "医疗保险" in text and "代办员代收" in text
    assert "2人 2项" in text and "560.00" in text

    for who, status in (("finance", 200), ("auditor", 200), ("admin", 200),
                        ("other_town", 403), ("other_agent", 403), ("department", 403),
                        ("resident", 403)):
        assert client.get(url % "paid", params={"year": 2021},
                          headers=h[who]).status_code == status, who
    assert client.get(url % "paid", params={"year": 2021}).status_code == 401
    assert client.get(url % "nope", params={"year": 2021},
                      headers=h["finance"]).status_code == 422
    assert client.get("/api/v1/publications/999/roster.pdf", params={"year": 2021},
                      headers=h["finance"]).status_code == 404


def test_pdf_without_the_font_answers_503(rt: Runtime, client: TestClient,
                                          tmp_path: Path) -> None:
    h, _ = _seed(rt)
    rt.settings.pdf_font_path = tmp_path / "no-such-font.ttc"
    r = client.get(f"/api/v1/publications/{VILLAGE}/roster.pdf", params={"year": 2021},
                   headers=h["finance"])
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "pdf_font_unavailable"
    assert "no-such-font.ttc" in r.json()["error"]["message"]
    assert "fonts-wqy-microhei" in r.json()["error"]["message"]
    # the XLSX needs no font
    assert client.get(f"/api/v1/publications/{VILLAGE}/roster.xlsx", params={"year": 2021},
                      headers=h["finance"]).status_code == 200


def test_a_long_note_is_set_smaller_not_cut(rt: Runtime) -> None:
    """备注 with both insurances' longest reasons is wider than its column at 8.5 pt."""
    item = {"status": "not_eligible", "amount_due_fen": 0, "paid_by": None}
    rows = [{"resident_id": 1, "name": "赵*", "id_masked": "370406********0011",
             "items": [{"insurance": "pension", **item, "reason": "employee_pension"},
                       {"insurance": "medical", **item, "reason": "employee_medical"}]}]
    p = Publication(village=Village(code=VILLAGE, name="东村", town_code=TOWN),
                    town=Town(code=TOWN, name="店子镇"), year=2021, kind="roster",
                    window_start=date(2020, 11, 2), window_end=date(2020, 11, 4),
                    generated_at=datetime(2020, 11, 2, 9, tzinfo=SHANGHAI), rows=rows)
    text = pdf_text(write_pdf(p, rt.settings.pdf_font_path))[0]
    assert "养老保险：已参加职工养老保险；医疗保险：已参加职工医疗保险" in text
    assert "…" not in text
