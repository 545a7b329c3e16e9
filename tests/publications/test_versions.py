"""POST /api/v1/publications/{village}/{kind}: versions, windows, corrections and what they
changed, the files of each version, the versions list, the audit trail, scopes."""

from __future__ import annotations

import io
from datetime import date, datetime
from decimal import Decimal

from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import select
from sqlmodel import col

from backend.audit.models import AuditEvent
from backend.audit.service import verify
from backend.clock import SHANGHAI
from backend.db import unit_of_work
from backend.residents.models import Death, Resident
from backend.runtime import Runtime
from tests.factories import VILLAGE, add_resident
from tests.publications.test_pdf import assert_no_personal_data, pdf_text
from tests.publications.test_publications import SOUTH, _no_personal_data, _seed

BASE = f"/api/v1/publications/{VILLAGE}"
Y = {"year": 2021}


def _sheets(content: bytes) -> dict[str, list[tuple[object, ...]]]:
    wb = load_workbook(io.BytesIO(content), read_only=True)
    return {ws.title: list(ws.iter_rows(values_only=True)) for ws in wb.worksheets}


def _head(rows: list[tuple[object, ...]]) -> dict[object, object]:
    return {row[0]: row[1] for row in rows[1:9]}


def _change_data(rt: Runtime) -> str:
    """张三 died (pension: 未缴 → 不参保), 刘五 moved to 南村, 周八 came: returns 周八's ID."""
    with unit_of_work(rt.sessions) as s:
        people = {r.name: r for r in s.scalars(select(Resident))}
        s.add(Death(id_hash=people["张三"].id_hash, id_masked="x", name="张三",
                    died_on=date(2020, 11, 1)))
        people["刘五"].village_code = SOUTH
        _, number = add_resident(s, rt.pii, "周八", date(1990, 6, 6), seq=66)
    return number


def test_publish_correct_and_republish(rt: Runtime, client: TestClient) -> None:
    h, numbers = _seed(rt)
    assert client.get(f"{BASE}/versions", params=Y,
                      headers=h["town_staff"]).json()["versions"] == []
    for who in ("auditor", "admin", "agent", "other_town", "department", "resident"):
        r = client.post(f"{BASE}/roster", params=Y, headers=h[who])
        assert r.status_code == 403, (who, r.text)

    # version 1 opens the window: 3 days from the business day
    r = client.post(f"{BASE}/roster", params=Y, headers=h["town_staff"])
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert {k: v1[k] for k in ("version", "window_start", "window_end", "correction",
                               "residents", "changes", "published_by", "kind")} == {
        "version": 1, "window_start": "2020-11-02", "window_end": "2020-11-04",
        "correction": False, "residents": 4, "changes": None, "published_by": "town_staff",
        "kind": "roster"}
    assert datetime.fromisoformat(v1["published_at"]).astimezone(SHANGHAI).date() == \
        date(2020, 11, 2) and len(v1["content_hash"]) == 64
    again = client.post(f"{BASE}/roster", params=Y, headers=h["finance"])
    assert again.status_code == 409 and again.json()["error"]["code"] == \
        "publication_unchanged", again.text
    assert "version 1" in again.json()["error"]["message"]

    f1 = client.get(f"{BASE}/roster.xlsx", params=Y, headers=h["agent"])
    assert f1.headers["x-publication-version"] == "1"
    assert f'filename="{VILLAGE}-2021-roster-v1.xlsx"' in f1.headers["content-disposition"]
    sheets = _sheets(f1.content)
    assert list(sheets) == ["公示清册"]
    head = _head(sheets["公示清册"])
    assert "草稿" not in str(sheets["公示清册"][0][0])
    assert head["版本"] == "第1版" and head["公示期"] == "2020-11-02 至 2020-11-04（3天）"
    assert str(head["公示时间"]).startswith("2020-11-02 09:0")

    # the next day, within the window: a correction keeps the window and lists the changes
    rt.clock.advance_to(datetime(2020, 11, 3, 10, tzinfo=SHANGHAI))
    numbers.append(_change_data(rt))
    # the published file does not move with the live data
    assert _sheets(client.get(f"{BASE}/roster.xlsx", params=Y, headers=h["agent"]).content
                   )["公示清册"][-1][:2] == ("合计", "4人")
    r = client.post(f"{BASE}/roster", params=Y, headers=h["finance"])
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert (v2["version"], v2["correction"], v2["window_start"], v2["window_end"],
            v2["published_by"]) == (2, True, "2020-11-02", "2020-11-04", "finance")
    assert v2["changes"] == {"added": 1, "removed": 1, "changed": 1}

    f2 = client.get(f"{BASE}/roster.xlsx", params=Y, headers=h["town_staff"])
    assert f2.headers["x-publication-version"] == "2"
    sheets = _sheets(f2.content)
    assert list(sheets) == ["公示清册", "变更"]
    _no_personal_data(sheets["公示清册"] + sheets["变更"], numbers, f2.content)
    assert _head(sheets["公示清册"])["版本"] == "第2版（公示期内更正）"
    assert _head(sheets["公示清册"])["公示期"] == "2020-11-02 至 2020-11-04（3天）"
    changes = sheets["变更"]
    assert changes[0][0] == "第2版相对第1版的变更：新增1人，移除1人，更改1项"
    assert changes[1][:4] == ("变更", "姓名", "身份证号", "险种")
    mask = {n: n[:6] + "********" + n[-4:] for n in numbers}
    assert changes[2][:3] == ("新增", "周*", mask[numbers[-1]])
    assert changes[3][:3] == ("移除", "刘*", mask[numbers[3]])
    assert changes[4][:6] == ("更改", "张*", mask[numbers[0]], "养老保险", "未缴",
                              Decimal("300"))
    assert changes[4][7] == "不参保"
    # version 1 is still served as it was
    old = client.get(f"{BASE}/roster.xlsx", params={**Y, "version": 1}, headers=h["auditor"])
    assert old.headers["x-publication-version"] == "1" and list(_sheets(old.content)) == [
        "公示清册"]
    assert client.get(f"{BASE}/roster.xlsx", params={**Y, "version": 3},
                      headers=h["auditor"]).status_code == 404
    # the PDF of the correction: its version, window, and the 变更 section
    pdf = client.get(f"{BASE}/roster.pdf", params=Y, headers=h["town_staff"])
    assert pdf.status_code == 200 and pdf.headers["x-publication-version"] == "2"
    text = "\n".join(pdf_text(pdf.content))
    assert_no_personal_data(text, numbers)
    assert "第2版（公示期内更正）" in text and "2020-11-02 至 2020-11-04（3天）" in text
    assert "变更" in text and "新增" in text and "移除" in text and mask[numbers[-1]] in text
    assert "草稿" not in text

    # after the window: a new publication opens a new window
    rt.clock.advance_to(datetime(2020, 11, 6, 9, tzinfo=SHANGHAI))
    with unit_of_work(rt.sessions) as s:
        add_resident(s, rt.pii, "吴九", date(1985, 2, 2), seq=77)
    v3 = client.post(f"{BASE}/roster", params=Y, headers=h["town_staff"]).json()
    assert (v3["version"], v3["correction"], v3["window_start"], v3["window_end"]) == (
        3, False, "2020-11-06", "2020-11-08")
    assert v3["changes"] == {"added": 1, "removed": 0, "changed": 0}
    f3 = _sheets(client.get(f"{BASE}/roster.xlsx", params=Y, headers=h["finance"]).content)
    assert _head(f3["公示清册"])["版本"] == "第3版"

    # the paid list is versioned on its own
    assert client.post(f"{BASE}/paid", params=Y, headers=h["town_staff"]).json()[
        "version"] == 1
    listed = client.get(f"{BASE}/versions", params=Y, headers=h["agent"]).json()["versions"]
    assert [(v["kind"], v["version"]) for v in listed] == [
        ("paid", 1), ("roster", 1), ("roster", 2), ("roster", 3)]
    only = client.get(f"{BASE}/versions", params={**Y, "kind": "roster"},
                      headers=h["auditor"]).json()["versions"]
    assert [v["version"] for v in only] == [1, 2, 3]
    assert only[1]["changes"] == {"added": 1, "removed": 1, "changed": 1}
    for who, status in (("other_town", 403), ("department", 403), ("finance", 200)):
        assert client.get(f"{BASE}/versions", params=Y,
                          headers=h[who]).status_code == status, who
    assert client.get("/api/v1/publications/999/versions", params=Y,
                      headers=h["finance"]).status_code == 404
    assert client.post("/api/v1/publications/999/roster", params=Y,
                       headers=h["finance"]).status_code == 404
    assert client.post(f"{BASE}/roster", params={"year": 2020},
                       headers=h["finance"]).status_code == 422

    # each publication is in the audit trail, with its version and window, chained
    with unit_of_work(rt.sessions) as s:
        events = list(s.scalars(select(AuditEvent).where(
            col(AuditEvent.action) == "publication.publish").order_by(col(AuditEvent.id))))
        assert [e.subject_id for e in events] == [
            f"{VILLAGE}/2021/roster/1", f"{VILLAGE}/2021/roster/2",
            f"{VILLAGE}/2021/roster/3", f"{VILLAGE}/2021/paid/1"]
        assert [e.actor_username for e in events] == [
            "town_staff", "finance", "town_staff", "town_staff"]
        assert events[1].details["correction"] is True
        assert events[1].details["changes"] == {"added": 1, "removed": 1, "changed": 1}
        assert events[2].details["window_start"] == "2020-11-06"
        assert verify(s)[0]


def test_a_corrected_name_is_a_change_of_the_correction(rt: Runtime, client: TestClient
                                                         ) -> None:
    """张三's surname was misspelt (章三) on version 1; the registry is corrected and version
    2 published within the window: its change list says so (it listed nothing changed)."""
    h, numbers = _seed(rt)
    with unit_of_work(rt.sessions) as s:
        zhang = s.scalars(select(Resident).where(col(Resident.name) == "张三")).one()
        zhang.name = "章三"
    assert client.post(f"{BASE}/roster", params=Y, headers=h["town_staff"]).status_code == 201
    with unit_of_work(rt.sessions) as s:
        s.scalars(select(Resident).where(col(Resident.name) == "章三")).one().name = "张三"
    r = client.post(f"{BASE}/roster", params=Y, headers=h["town_staff"])
    assert r.status_code == 201, r.text
    assert r.json()["correction"] is True
    assert r.json()["changes"] == {"added": 0, "removed": 0, "changed": 1}
    f2 = client.get(f"{BASE}/roster.xlsx", params=Y, headers=h["town_staff"])
    changes = _sheets(f2.content)["变更"]
    assert changes[0][0] == "第2版相对第1版的变更：新增0人，移除0人，更改1项"
    assert [row[:2] for row in changes[2:]] == [("更正（原）", "章*"), ("更正（新）", "张*")]
    _no_personal_data(changes, numbers, f2.content)
    pdf = client.get(f"{BASE}/roster.pdf", params=Y, headers=h["town_staff"])
    assert pdf.status_code == 200
    text = "\n".join(pdf_text(pdf.content))
    assert "更正（原） 章*" in text and "更正（新） 张*" in text
