"""Residents' reports for staff, on both databases: the note kept encrypted and read back
masked; the list's scope (town staff their town, the district for finance, auditors and
admins, 403 for others), filters and pages; closing an open report (audited, counted no
longer open on the progress page, 409 a second time, 404 unknown, 403 for auditors); bad
input refused naming the field."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from backend.auth.service import create_staff_user
from backend.clock import SHANGHAI
from backend.db import unit_of_work
from backend.runtime import Runtime
from tests.factories import OTHER_TOWN, OTHER_VILLAGE, TOWN, VILLAGE
from tests.orders.helpers import resident_headers, seed, staff_headers
from tests.receipts.test_reports import MEDICAL_FEN, app_client, audit_events, body, take_cash

ID_NUMBER = "370406199001011234"
PHONE = "13812345678"
NOTE = f"代办员王某收的现金，我的身份证 {ID_NUMBER}，电话{PHONE}"
MASKED = "代办员王某收的现金，我的身份证 370406********1234，电话138****5678"
LIST = "/api/v1/receipt-reports"


@pytest.fixture
def world(rt: Runtime) -> Iterator[SimpleNamespace]:
    """The seeded village and its agent; an auditor, finance, an admin and the staff of
    both towns; one client."""
    people = seed(rt)
    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="aud", password="auditor-pass", role="auditor")
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
        create_staff_user(s, username="adm", password="admin-pass", role="admin")
        create_staff_user(s, username="town1", password="town-pass", role="town_staff",
                          town_code=TOWN)
        create_staff_user(s, username="town2", password="town-pass", role="town_staff",
                          town_code=OTHER_TOWN)
    with app_client(rt) as c:
        w = SimpleNamespace(rt=rt, http=c, people=people)
        w.agent = staff_headers(w)            # type: ignore[arg-type]
        w.aud = staff_headers(w, "aud", "auditor-pass")  # type: ignore[arg-type]
        w.fin = staff_headers(w, "fin", "finance-pass")  # type: ignore[arg-type]
        w.adm = staff_headers(w, "adm", "admin-pass")  # type: ignore[arg-type]
        w.town1 = staff_headers(w, "town1", "town-pass")  # type: ignore[arg-type]
        w.town2 = staff_headers(w, "town2", "town-pass")  # type: ignore[arg-type]
        yield w


def report(w: SimpleNamespace, **change: Any) -> dict[str, Any]:
    r = w.http.post("/r/report", json=body(**change))
    assert r.status_code == 201, r.text
    return dict(r.json())


def listed(w: SimpleNamespace, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = w.http.get(LIST, headers=headers, params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["reports"])


def raw_rows(rt: Runtime) -> list[dict[str, Any]]:
    """The table's rows as the database holds them, every column."""
    with unit_of_work(rt.sessions) as s:
        return [dict(r._mapping) for r in s.execute(text("SELECT * FROM receipt_reports"))]


# --------------------------------------------------------------------------- the note
def test_the_note_is_encrypted_at_rest_and_masked_for_staff(
        world: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    made = report(world, note=NOTE)
    [row] = raw_rows(world.rt)
    assert "note" not in row and row["note_encrypted"]
    stored = repr(row)
    for plain in (ID_NUMBER, PHONE, "代办员", "身份证"):
        assert plain not in stored
    # not in the logs, nor in the audit trail
    assert ID_NUMBER not in caplog.text and PHONE not in caplog.text
    [event] = audit_events(world, "receipt_report.record")
    assert "note" not in event["details"] and ID_NUMBER not in str(event)

    [item] = listed(world, world.fin)
    assert item["note"] == MASKED
    assert item == {
        "id": item["id"], "report_no": made["report_no"], "village_code": VILLAGE,
        "village_name": "东村", "town_code": TOWN, "paper_receipt_no": "SJ-0001",
        "amount_fen": 38000, "paid_on": "2020-11-01", "kind": "unknown_receipt",
        "status": "open", "created_at": made["reported_at"], "note": MASKED,
        "matched_order_no": None, "matched_at": None, "closed_at": None, "closed_by": None,
        "close_reason": None}
    # no note: null
    report(world, paper_receipt_no="SJ-0002", note=...)
    assert [i["note"] for i in listed(world, world.fin)] == [MASKED, None]


# --------------------------------------------------------------------------- the list
def test_the_list_is_scoped_to_the_callers_town(world: SimpleNamespace) -> None:
    ours = report(world, paper_receipt_no="T-1")
    theirs = report(world, village_code=OTHER_VILLAGE, paper_receipt_no="T-2")
    both = [ours["report_no"], theirs["report_no"]]
    for headers in (world.fin, world.aud, world.adm):
        assert [i["report_no"] for i in listed(world, headers)] == both
        assert [i["report_no"] for i in listed(world, headers, town=OTHER_TOWN)] == both[1:]
    assert [i["report_no"] for i in listed(world, world.town1)] == both[:1]
    assert [i["report_no"] for i in listed(world, world.town1, town=TOWN)] == both[:1]
    assert [i["report_no"] for i in listed(world, world.town2)] == both[1:]
    for params in ({"town": OTHER_TOWN}, {"village": OTHER_VILLAGE}):
        r = world.http.get(LIST, headers=world.town1, params=params)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    for headers in (world.agent, resident_headers(world)):   # type: ignore[arg-type]
        r = world.http.get(LIST, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert world.http.get(LIST).status_code == 401
    for params in ({"town": "999"}, {"village": "370406999999"}):
        r = world.http.get(LIST, headers=world.fin, params=params)
        assert r.status_code == 404, r.text


def test_the_list_filters_and_pages(world: SimpleNamespace) -> None:
    made = [report(world, paper_receipt_no=f"F-{n}", amount_fen=MEDICAL_FEN)
            for n in range(4)]
    numbers = [m["report_no"] for m in made]
    collection = take_cash(world, "F-1")            # matches the second one
    matched = listed(world, world.fin, status="matched")
    assert [i["report_no"] for i in matched] == [numbers[1]]
    assert matched[0]["matched_order_no"] == collection["order_no"]
    assert matched[0]["matched_at"] is not None
    assert [i["report_no"] for i in listed(world, world.fin, status="open")] == \
        [numbers[0], *numbers[2:]]
    assert [i["report_no"] for i in listed(world, world.fin, village=VILLAGE)] == numbers
    assert listed(world, world.fin, village=OTHER_VILLAGE) == []
    assert len(listed(world, world.fin, **{"from": "2020-11-02", "to": "2020-11-02"})) == 4
    assert listed(world, world.fin, **{"from": "2020-11-03"}) == []
    assert listed(world, world.fin, to="2020-11-01") == []

    seen, after = [], 0
    while True:
        r = world.http.get(LIST, headers=world.town1, params={"limit": 3, "after_id": after})
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [i["report_no"] for i in page["reports"]]
        if page["next_after_id"] is None:
            break
        after = page["next_after_id"]
    assert seen == numbers


@pytest.mark.parametrize(("params", "field"), [
    ({"status": "pending"}, "status"),
    ({"village": "东村"}, "village"),
    ({"town": "a b"}, "town"),
    ({"from": "2020-13-01"}, "from"),
    ({"from": "2020-11-02", "to": "2020-11-01"}, "to"),
    ({"from": "0001-01-01"}, "from"),
    ({"limit": 0}, "limit"),
    ({"limit": 501}, "limit"),
    ({"after_id": -1}, "after_id"),
])
def test_a_bad_filter_is_refused_naming_it(world: SimpleNamespace, params: dict[str, Any],
                                          field: str) -> None:
    r = world.http.get(LIST, headers=world.fin, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"] == [field]


# --------------------------------------------------------------------------- closing
def close(w: SimpleNamespace, headers: dict[str, str], report_no: str,
          payload: Any = None) -> Any:
    return w.http.post(f"{LIST}/{report_no}/close", headers=headers,
                       json={"reason": "重复举报，已电话核实"} if payload is None else payload)


def open_counts(w: SimpleNamespace) -> tuple[int, int]:
    r = w.http.get("/api/v1/progress", headers=w.fin, params={"year": 2021, "town": TOWN})
    assert r.status_code == 200, r.text
    [village] = [v for t in r.json()["towns"] for v in t["villages"]
                 if v["village_code"] == VILLAGE]
    return village["receipt_reports_open"], village["receipt_reports_total"]


def test_town_staff_close_an_open_report(world: SimpleNamespace) -> None:
    made = report(world, note=NOTE)
    no = made["report_no"]
    assert open_counts(world) == (1, 1)
    # auditors watch, they do not act; nor do agents, residents, another town's staff
    for headers in (world.aud, world.agent, resident_headers(world)):  # type: ignore[arg-type]
        r = close(world, headers, no)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert close(world, world.town2, no).status_code == 403
    assert listed(world, world.fin, status="open")[0]["report_no"] == no

    world.rt.clock.advance_to(datetime(2020, 11, 2, 11, 0, tzinfo=SHANGHAI))
    reason = f"重复举报，已电话核实 {PHONE}"
    r = close(world, world.town1, no, {"reason": reason})
    assert r.status_code == 200, r.text
    item = r.json()
    assert (item["report_no"], item["status"], item["closed_by"]) == (no, "closed", "town1")
    assert item["closed_at"].startswith("2020-11-02T11:00:0")
    assert item["closed_at"].endswith("+08:00")
    assert item["close_reason"] == "重复举报，已电话核实 138****5678"
    assert item["note"] == MASKED
    assert open_counts(world) == (0, 1)
    assert listed(world, world.fin, status="open") == []
    assert [i["report_no"] for i in listed(world, world.town1, status="closed")] == [no]
    [event] = audit_events(world, "receipt_report.close")
    assert (event["actor"], event["actor_role"], event["subject_id"]) == (
        "town1", "town_staff", no)
    assert event["reason"] == "重复举报，已电话核实 138****5678"
    assert event["details"] == {"village_code": VILLAGE, "town_code": TOWN,
                                "kind": "unknown_receipt", "paper_receipt_no": "SJ-0001",
                                "amount_fen": 38000}
    raw = repr(raw_rows(world.rt))
    assert PHONE not in raw and ID_NUMBER not in raw

    # a second close: 409, nothing changes
    again = close(world, world.fin, no)
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "receipt_report_not_open"
    assert len(audit_events(world, "receipt_report.close")) == 1
    # an unknown one: 404
    missing = close(world, world.fin, "J2020110299999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # a closed report is no longer the open one a new report repeats
    assert report(world, note=...)["report_no"] != no


def test_finance_and_admins_close_any_but_not_a_matched_one(world: SimpleNamespace) -> None:
    ours = report(world, paper_receipt_no="C-1", amount_fen=MEDICAL_FEN)["report_no"]
    theirs = report(world, village_code=OTHER_VILLAGE, paper_receipt_no="C-2")["report_no"]
    assert close(world, world.fin, theirs).json()["status"] == "closed"
    take_cash(world, "C-1")
    r = close(world, world.adm, ours)
    assert r.status_code == 409 and r.json()["error"]["code"] == "receipt_report_not_open"
    late = report(world, paper_receipt_no="C-3")["report_no"]
    r = close(world, world.adm, late)
    assert r.status_code == 200 and r.json()["closed_by"] == "adm", r.text
    # a collection recorded after it was closed does not match it
    take_cash(world, "C-3", "李梅")
    [item] = [i for i in listed(world, world.fin) if i["report_no"] == late]
    assert (item["status"], item["matched_order_no"]) == ("closed", None)


@pytest.mark.parametrize(("payload", "field"), [
    ({}, "reason"),
    ({"reason": ""}, "reason"),
    ({"reason": "   "}, "reason"),
    ({"reason": "x" * 501}, "reason"),
    ({"reason": "a\x00b"}, "reason"),
    ({"reason": 5}, "reason"),
    ({"reason": "ok", "status": "open"}, "status"),
])
def test_a_bad_close_is_refused_naming_the_field(world: SimpleNamespace,
                                                  payload: dict[str, Any],
                                                  field: str) -> None:
    no = report(world)["report_no"]
    r = close(world, world.town1, no, payload)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"] == [field], r.text
    assert listed(world, world.fin)[0]["status"] == "open"
    assert audit_events(world, "receipt_report.close") == []


def test_a_malformed_report_number_is_refused_naming_it(world: SimpleNamespace) -> None:
    r = close(world, world.fin, "not-a-report")
    assert r.status_code == 422 and r.json()["error"]["fields"] == ["report_no"], r.text
