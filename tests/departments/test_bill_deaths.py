"""A death list credits the department bills' lines of the dead by itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.imports.service import run_import
from tests.conftest import Live
from tests.departments.test_bills import BILLS, issue, listed, lookup_item, town_setup, transfer
from tests.imports.test_import import write_csv
from tests.orders.helpers import staff_headers


def test_a_death_list_credits_the_lines_of_the_dead(live: Live, tmp_path: Path) -> None:
    people = town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("王芳", "李梅"):
        listed(live, name, "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    no = bill["bill_no"]
    assert bill["total_fen"] == 56000
    assert transfer(live, town, no, 20000, "D-1").status_code == 201

    # 王芳 died before 2021 began: her line comes off the bill, released
    report = run_import(live.rt, "deaths", write_csv(tmp_path / "deaths.csv", "deaths", [
        [people["王芳"], "王芳", "2020-08-01"]]), progress=False)
    assert report.committed
    after = live.http.get(f"{BILLS}/bills/{no}", headers=town).json()
    assert [(n["amount_fen"], n["reason"], n["refund_fen"]) for n in after["credit_notes"]] \
        == [(28000, "deceased", 0)]
    assert (after["credited_fen"], after["outstanding_fen"]) == (28000, 8000)
    assert lookup_item(live, town, "李梅", people["李梅"], "medical")["department_bill"] \
        is not None
    # the same list again: credited once
    run_import(live.rt, "deaths", write_csv(tmp_path / "again.csv", "deaths", [
        [people["王芳"], "王芳", "2020-08-01"]]), progress=False)
    again = live.http.get(f"{BILLS}/bills/{no}", headers=town).json()
    assert len(again["credit_notes"]) == 1 and again["credited_fen"] == 28000


def test_money_a_credit_note_leaves_over_is_owed_back_like_a_paid_line(live: Live) -> None:
    """40,000 received on a 56,000 bill, then a 28,000 line credited: the 28,000 left is
    covered and paid, and the 12,000 over is owed back to the department as a paid line's
    money is — on the credit note's ``refund_fen`` and in the refunds payable — not left
    in the department's receivable."""
    from sqlalchemy import select
    from sqlmodel import col

    from backend.db import unit_of_work
    from backend.ledger import service as ledger
    from backend.orders.models import BillLine

    town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("王芳", "李梅"):
        listed(live, name, "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    no = bill["bill_no"]
    li = next(x for x in bill["lines"] if x["name"] == "李*")
    assert transfer(live, town, no, 40000, "O-1").status_code == 201
    r = live.http.post(f"{BILLS}/bills/{no}/credit-notes", headers=town, json={
        "items": [{"resident_ref": li["resident_ref"], "insurance": "medical"}],
        "reason": "not_eligible"})
    assert r.status_code == 201, r.text
    after = r.json()
    assert (after["status"], after["outstanding_fen"], after["overpaid_fen"]) == ("paid", 0, 12000)
    assert [(n["amount_fen"], n["refund_fen"]) for n in after["credit_notes"]] == [(28000, 12000)]
    with unit_of_work(live.rt.sessions) as s:
        assert ledger.balance(s, ledger.department_receivable("civil_affairs")) == 0
        assert ledger.balance(s, ledger.REFUNDS) == -12000
        assert ledger.balance(s, ledger.contributions("medical", 2021)) == -28000
        assert sorted(s.scalars(select(col(BillLine.status))).all()) == ["paid", "unpaid"]


def test_a_list_imported_by_its_due_date_on_the_business_clock_is_not_late(
        live: Live, tmp_path: Path) -> None:
    """A rehearsal's business clock stands before the plan's due date for departments' lists
    (2020-10-31) when the list is imported: the bill carries no "late" warning, whatever the
    wall clock says."""
    from datetime import datetime

    from backend.runtime import Runtime

    people = town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    before = Runtime(live.rt.settings.model_copy(update={
        "collect_now": datetime.fromisoformat("2020-10-20T09:00:00+08:00")}))
    try:
        report = run_import(before, "departments", write_csv(
            tmp_path / "list.csv", "departments",
            [["civil_affairs", people["王芳"], "王芳", "medical", "2021"]]), progress=False)
    finally:
        before.close()
    assert report.committed and report.inserted == 1
    bill = issue(live, town, "civil_affairs").json()
    assert [x["name"] for x in bill["lines"]] == ["王*"]
    assert bill["warnings"] == []


def test_crediting_every_line_of_a_part_paid_bill_gives_all_the_money_back(live: Live) -> None:
    from backend.db import unit_of_work
    from backend.ledger import service as ledger

    town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("王芳", "李梅"):
        listed(live, name, "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    no = bill["bill_no"]
    assert transfer(live, town, no, 30000, "A-1").status_code == 201
    r = live.http.post(f"{BILLS}/bills/{no}/credit-notes", headers=town, json={
        "items": [{"resident_ref": x["resident_ref"], "insurance": "medical"}
                  for x in bill["lines"]], "reason": "not_eligible"})
    assert r.status_code == 201, r.text
    after = r.json()
    assert (after["outstanding_fen"], after["overpaid_fen"]) == (0, 30000)
    assert [n["refund_fen"] for n in after["credit_notes"]] == [30000]
    with unit_of_work(live.rt.sessions) as s:
        assert ledger.balance(s, ledger.department_receivable("civil_affairs")) == 0
        assert ledger.balance(s, ledger.REFUNDS) == -30000
        assert ledger.balance(s, ledger.contributions("medical", 2021)) == 0
    assert transfer(live, town, no, 1, "A-2").status_code == 409


def test_credit_notes_on_one_bill_are_numbered_apart(live: Live, monkeypatch: Any) -> None:
    """Two credit notes on a bill get different numbers, however the random draws fall (they
    were the bill's number and 4 random hex digits: one pair in 65,536 collided, a 500)."""
    from backend.departments import service

    monkeypatch.setattr(service.secrets, "token_hex", lambda n: "ab" * n)
    town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("王芳", "李梅"):
        listed(live, name, "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    for line in bill["lines"]:
        r = live.http.post(f"{BILLS}/bills/{bill['bill_no']}/credit-notes", headers=town, json={
            "items": [{"resident_ref": line["resident_ref"], "insurance": "medical"}],
            "reason": "not_eligible"})
        assert r.status_code == 201, r.text
    notes = [n["credit_no"] for n in r.json()["credit_notes"]]
    assert len(notes) == len(set(notes)) == 2
