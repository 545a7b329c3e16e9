"""GET /api/v1/publications/{village}/{kind}.xlsx: both kinds read back (the draft, before
anything is published), masking, scopes."""

from __future__ import annotations

import io
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient
from openpyxl import load_workbook

from backend.auth.service import create_staff_user, staff_principal
from backend.db import unit_of_work
from backend.departments.models import DepartmentListing
from backend.orders.models import BillLine, Order, Payment
from backend.residents.models import Death, Village
from backend.runtime import Runtime
from backend.security.tokens import Principal, issue_token
from tests.factories import OTHER_TOWN, OTHER_VILLAGE, TOWN, VILLAGE, add_regions, add_resident

NOW = datetime(2020, 11, 2, 1, tzinfo=UTC)
SOUTH = "370406100202"
PHONES = ("13912345678", "13887654321")
ID_PATTERN = re.compile(r"\d{17}[\dXx]")


def _seed(rt: Runtime) -> tuple[dict[str, dict[str, str]], list[str]]:
    """东村: 张三 (medical paid by WeChat), 李梅 (medical in cash), 王芳 (dibao, listed by
    civil affairs), 刘五 (dead); 孙七 in 西村. Returns headers per caller and the full IDs."""
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        s.add(Village(code=SOUTH, name="南村", town_code=TOWN))
        zhang, n1 = add_resident(s, rt.pii, "张三", date(1969, 3, 15), seq=11,
                                 phone_enc=rt.pii.encrypt(PHONES[0]), phone_masked="139****5678")
        li, n2 = add_resident(s, rt.pii, "李梅", date(1972, 8, 2), seq=12,
                              phone_enc=rt.pii.encrypt(PHONES[1]), phone_masked="138****4321")
        wang, n3 = add_resident(s, rt.pii, "王芳", date(1980, 5, 20), seq=22, categories="dibao")
        dead, n4 = add_resident(s, rt.pii, "刘五", date(1950, 1, 1), seq=44)
        _, n5 = add_resident(s, rt.pii, "孙七", date(1975, 1, 1), seq=55, village=OTHER_VILLAGE)
        s.add(Death(id_hash=dead.id_hash, id_masked="x", name="刘五", died_on=date(2020, 5, 1)))
        s.add(DepartmentListing(department="civil_affairs", resident_id=wang.id,
                                insurance="medical", year=2021))
        for resident, channel, source in ((zhang, "wechat", "notification"),
                                          (li, "cash", "agent")):
            o = Order(order_no=f"O-{channel}", payer_sub="t", payer_role="resident", year=2021,
                      channel=channel, status="paid", amount_fen=28000,
                      expires_at=NOW + timedelta(hours=2))
            s.add(o)
            s.flush()
            p = Payment(order_id=o.id, channel=channel, transaction_id=f"T-{channel}",
                        amount_fen=28000, paid_at=NOW, business_date=date(2020, 11, 2),
                        source=source)
            s.add(p)
            s.flush()
            s.add(BillLine(resident_id=resident.id, year=2021, insurance="medical",
                           status="paid", paid_payment_id=p.id, paid_fen=28000, paid_at=NOW))
        headers = {}
        for role, kw in {"finance": {}, "auditor": {}, "admin": {},
                         "town_staff": {"town_code": TOWN},
                         "other_town": {"town_code": OTHER_TOWN},
                         "agent": {"village_code": VILLAGE},
                         "other_agent": {"village_code": SOUTH},
                         "department": {"department": "civil_affairs"}}.items():
            user = create_staff_user(s, username=role, password="password-1",
                                     role=role.replace("other_town", "town_staff")
                                     .replace("other_agent", "agent"), **kw)
            headers[role] = {"Authorization": "Bearer " + issue_token(
                rt.app_secret, staff_principal(user), 600)}
        headers["resident"] = {"Authorization": "Bearer " + issue_token(
            rt.app_secret, Principal(sub="openid-1", role="resident"), 600)}
    return headers, [n1, n2, n3, n4, n5]


def _read(content: bytes) -> list[tuple[Any, ...]]:
    wb = load_workbook(io.BytesIO(content), read_only=True)
    return [tuple(c for c in row) for row in wb.active.iter_rows(values_only=True)]


def _no_personal_data(rows: list[tuple[Any, ...]], numbers: list[str], raw: bytes) -> None:
    for row in rows:
        for cell in row:
            text = str(cell or "")
            assert not ID_PATTERN.search(text), text
            assert not any(x in text for x in (*numbers, *PHONES, "5678", "4321")), text
            assert not any(x in text for x in ("张三", "李梅", "王芳", "刘五", "孙七")), text
    # nor in the zip's parts (shared strings, properties)
    with __import__("zipfile").ZipFile(io.BytesIO(raw)) as z:
        for name in z.namelist():
            part = z.read(name).decode("utf-8", "replace")
            assert not ID_PATTERN.search(part) and not any(x in part for x in PHONES)


def test_publications_content_masking_and_scope(rt: Runtime, client: TestClient) -> None:
    h, numbers = _seed(rt)
    url = f"/api/v1/publications/{VILLAGE}/%s.xlsx"
    r = client.get(url % "roster", params={"year": 2021}, headers=h["town_staff"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    assert f'filename="{VILLAGE}-2021-roster-draft.xlsx"' in r.headers["content-disposition"]
    assert r.headers["x-publication-version"] == "draft"
    rows = _read(r.content)
    _no_personal_data(rows, numbers, r.content)
    head = {row[0]: row[1] for row in rows[1:9]}
    assert "东村" in rows[0][0] and "公示清册（草稿）" in rows[0][0]
    assert head["版本"].startswith("草稿") and head["公示时间"] == "尚未公示"
    assert head["村(居)"] == f"东村（{VILLAGE}）" and head["镇(街道)"] == f"店子镇（{TOWN}）"
    assert head["年度"] == 2021 and head["类型"] == "公示清册"
    # the business day is 2020-11-02; Shanting publishes for 3 days
    assert head["公示期"] == "尚未公示（今日公示则为 2020-11-02 至 2020-11-04（3天））"
    assert head["生成时间"].startswith("2020-11-02 09:0")
    assert rows[10][:3] == ("序号", "姓名", "身份证号")
    body = {row[1]: row for row in rows[11:15]}
    mask = {n: n[:6] + "********" + n[-4:] for n in numbers}
    assert [row[0] for row in rows[11:15]] == [1, 2, 3, 4]
    assert body["张*"][2:] == (mask[numbers[0]], "未缴", Decimal("300"), None,
                               "已缴", Decimal("280"), "本人缴纳", None)
    assert body["李*"][3:9] == ("未缴", Decimal("300"), None, "已缴", Decimal("280"),
                                "代办员代收")
    assert body["王*"][6:9] == ("政府代缴", Decimal("0"), "部门代缴")
    assert body["刘*"][3] == "不参保" and body["刘*"][6] == "不参保"
    assert body["刘*"][9] == "养老保险：已死亡；医疗保险：已死亡"
    assert len(rows) == 17 and rows[16][:2] == ("合计", "4人")   # 孙七 lives elsewhere
    assert rows[16][4] == sum(row[4] for row in rows[11:15]
                              if row[3] == "未缴") + sum(row[7] for row in rows[11:15]
                                                         if row[6] == "未缴")

    paid = client.get(url % "paid", params={"year": 2021}, headers=h["agent"])
    assert paid.status_code == 200, paid.text
    rows = _read(paid.content)
    _no_personal_data(rows, numbers, paid.content)
    assert "已缴费名单" in rows[0][0] and rows[4][1] == "已缴费名单"
    assert rows[10] == ("序号", "姓名", "身份证号", "险种", "缴费金额(元)", "缴费方")
    assert rows[11:13] == [(1, "张*", mask[numbers[0]], "医疗保险", Decimal("280"), "本人缴纳"),
                          (2, "李*", mask[numbers[1]], "医疗保险", Decimal("280"),
                           "代办员代收")]
    assert rows[-1][:2] == ("合计", "2人 2项") and rows[-1][4] == Decimal("560")

    for who in ("finance", "auditor", "admin", "town_staff", "agent"):
        assert client.get(url % "paid", params={"year": 2021},
                          headers=h[who]).status_code == 200, who
    for who, path, params, status, says in [
            ("other_town", url % "roster", {"year": 2021}, 403, "own town"),
            ("other_agent", url % "roster", {"year": 2021}, 403, "own village"),
            ("department", url % "roster", {"year": 2021}, 403, "town staff"),
            ("resident", url % "roster", {"year": 2021}, 403, "town staff"),
            ("finance", "/api/v1/publications/999/roster.xlsx", {"year": 2021}, 404, "999"),
            ("finance", url % "unpaid", {"year": 2021}, 422, "kind"),
            ("finance", url % "roster", {"year": 2020}, 422, "year"),
            ("finance", url % "roster", {}, 422, "year"),
            ("finance", url % "roster", {"year": 2021, "version": 1}, 404, "version 1"),
            # no such format: the path is only the publishing POST's
            ("finance", f"/api/v1/publications/{VILLAGE}/roster.csv", {"year": 2021}, 405,
             "")]:
        r = client.get(path, params=params, headers=h[who])
        assert r.status_code == status, (who, path, r.text)
        assert says in r.json()["error"]["message"], r.text
    assert client.get(url % "roster", params={"year": 2021}).status_code == 401


def test_text_starting_with_equals_is_text_not_a_formula() -> None:
    """openpyxl writes any string starting with ``=`` as a formula: a (masked) name or a
    village's name so written must stay text in the published XLSX (spreadsheet
    injection)."""
    import zipfile

    from backend.publications.service import Publication, write_xlsx
    from backend.residents.models import Town

    item = {"insurance": "medical", "status": "unpaid", "amount_due_fen": 38000,
            "paid_by": None, "reason": None}
    rows = [{"resident_id": 1, "name": "=HYPERLINK(\"http://x\",\"y\")",
             "id_masked": "370406********1234", "items": [item]}]
    p = Publication(village=Village(code=VILLAGE, name="=1+1", town_code=TOWN),
                    town=Town(code=TOWN, name="山亭镇"), year=2021, kind="roster",
                    window_start=date(2020, 11, 2), window_end=date(2020, 11, 4),
                    generated_at=NOW, rows=rows, version=2, published_at=NOW,
                    changes={"added": [{"resident_id": 1, "name": "=2+2",
                                        "id_masked": "370406********1234"}],
                             "removed": [], "changed": []})
    content = write_xlsx(p)
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        sheets = [z.read(n).decode() for n in z.namelist() if n.startswith("xl/worksheets/")]
    assert len(sheets) == 2 and not any("<f>" in x for x in sheets)
    wb = load_workbook(io.BytesIO(content))
    texts = [c.value for ws in wb.worksheets for row in ws.iter_rows() for c in row
             if isinstance(c.value, str)]
    assert "=HYPERLINK(\"http://x\",\"y\")" in texts and "=2+2" in texts
    assert any("=1+1" in t for t in texts)
