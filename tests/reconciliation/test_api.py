"""Statements through HTTP (once per file, one per day, nothing kept of a bad one) and the
two-person resolution with its ledger entries."""

from __future__ import annotations

import io
import threading
from datetime import date

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.auth.models import StaffUser
from backend.db import unit_of_work
from backend.ledger.models import JournalEntry, Posting
from backend.orders.models import BillLine, Payment
from backend.reconciliation.models import Discrepancy, ReconciliationRun, Statement
from backend.reconciliation.service import approve_discrepancy, reconcile_statement
from backend.runtime import Runtime
from backend.security.tokens import Principal, issue_token
from payment_adapters import statements
from tests.reconciliation.world import (
    AMOUNT,
    at,
    build_world,
    parse_csv,
    payment_line,
    to_csv,
    trade,
)

DAY = date(2020, 11, 2)
URL = "/api/v1/reconciliation/wechat/statements"


@pytest.fixture
def staff(rt: Runtime, client: TestClient,
          monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    monkeypatch.setattr(statements, "parse_statement", parse_csv, raising=False)
    headers = {}
    with unit_of_work(rt.sessions) as s:
        for name, role in (("fin1", "finance"), ("fin2", "finance"), ("aud", "auditor")):
            user = staff_user(s, name, role)
            token = issue_token(rt.app_secret, Principal(sub=f"staff:{user.id}", role=role), 600)
            headers[name] = {"Authorization": f"Bearer {token}"}
    return headers


def staff_user(s: Session, name: str, role: str) -> StaffUser:
    """A staff account without the password hashing (logging in is tested elsewhere)."""
    user = StaffUser(username=name, password_hash="-", role=role)
    s.add(user)
    s.flush()
    return user


def _upload(client: TestClient, h: dict[str, str], body: bytes, day: str = "2020-11-02",
            name: str = "bill.csv") -> object:
    return client.post(URL, headers=h, data={"date": day}, files={"file": (name, body)})


def _counts(rt: Runtime) -> tuple[int, int, int, int]:
    with rt.sessions() as s:
        return tuple(int(s.scalar(text(f"SELECT COUNT(*) FROM {t}")) or 0) for t in (  # type: ignore[return-value]
            "statements", "statement_lines", "reconciliation_runs", "discrepancies"))


def _ledger_balances(rt: Runtime) -> None:
    with rt.sessions() as s:
        assert s.scalar(select(func.coalesce(func.sum(col(Posting.amount_fen)), 0))) == 0
        unbalanced = s.execute(select(col(Posting.entry_id)).group_by(col(Posting.entry_id))
                               .having(func.sum(col(Posting.amount_fen)) != 0)).all()
        assert unbalanced == []


def test_a_statement_once_per_file_and_per_day(rt: Runtime, client: TestClient,
                                               staff: dict[str, dict[str, str]]) -> None:
    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, 3)
    lines = [payment_line(i, at(DAY, 9, i), settings=rt.settings) for i in (1, 2)]
    bill = to_csv(lines)

    assert _upload(client, staff["aud"], bill).status_code == 403        # auditors read
    bad = _upload(client, staff["fin1"], bill.replace(b",38000,", b",38x00,", 1))
    assert bad.status_code == 422, bad.text
    err = bad.json()["error"]
    assert err["code"] == "invalid_statement" and err["line"] == 2 and "bill.csv" in err["message"]
    wrong_day = _upload(client, staff["fin1"], bill, day="2020-11-03")
    assert wrong_day.status_code == 422 and "another day" in wrong_day.json()["error"]["message"]
    assert _counts(rt) == (0, 0, 0, 0)                                   # nothing kept
    for far in ("0001-01-01", "9999-12-31"):       # its Beijing midnight would overflow
        r = _upload(client, staff["fin1"], bill, day=far)
        assert r.status_code == 422 and r.json()["error"]["fields"] == ["date"], r.text

    first = _upload(client, staff["fin1"], bill)
    assert first.status_code == 201, first.text
    run = first.json()
    assert (run["date"], run["channel"], run["matched"]) == ("2020-11-02", "wechat", 2)
    assert [(d["kind"], d["out_trade_no"]) for d in run["discrepancies"]] == [
        ("missing_at_channel", trade(3))]
    assert run["statement"]["sha256"] and run["statement"]["size"] == len(bill)
    again = _upload(client, staff["fin2"], bill, name="the-same.csv")
    assert again.status_code == 200 and again.json() == run             # the same run
    other = _upload(client, staff["fin1"], bill + b"\n")
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "statement_already_loaded"
    assert other.json()["error"]["run_id"] == run["run_id"]
    elsewhere = _upload(client, staff["fin1"], bill, day="2020-11-04")
    assert elsewhere.status_code == 409                                  # loaded for the 2nd
    assert _counts(rt) == (1, 2, 1, 1)
    with rt.sessions() as s:
        stored = s.scalar(select(Statement))
        assert stored is not None and stored.content_encoding == "gzip"
        import gzip
        assert gzip.decompress(stored.content) == bill                   # kept whole

    listed = client.get("/api/v1/reconciliation/runs", headers=staff["aud"],
                        params={"date": "2020-11-02", "channel": "wechat"})
    assert [r["run_id"] for r in listed.json()] == [run["run_id"]]
    read = client.get(f"/api/v1/reconciliation/runs/{run['run_id']}", headers=staff["aud"])
    assert read.json() == run
    assert client.get("/api/v1/reconciliation/runs/999", headers=staff["aud"]).status_code == 404


def test_resolution_takes_two_people_and_corrects_the_books(
        rt: Runtime, client: TestClient, staff: dict[str, dict[str, str]]) -> None:
    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, 4, unpaid=[1])
    lines = [payment_line(1, at(DAY, 9, 1), settings=rt.settings),       # we missed it
             payment_line(2, at(DAY, 9, 2), amount=AMOUNT - 500, settings=rt.settings),
             payment_line(3, at(DAY, 9, 3), fee=80, settings=rt.settings),
             payment_line(4, at(DAY, 9, 4), settings=rt.settings)]
    run = _upload(client, staff["fin1"], to_csv(lines)).json()
    ids = {d["kind"]: d["id"] for d in run["discrepancies"]}
    assert set(ids) == {"missing_locally", "amount_mismatch", "fee_mismatch"}
    base = "/api/v1/reconciliation/discrepancies"

    def resolve(who: str, kind: str, side: str = "channel") -> object:
        return client.post(f"{base}/{ids[kind]}/resolve", headers=staff[who],
                           json={"side": side, "reason": "checked with the channel"})

    def approve(who: str, kind: str) -> object:
        return client.post(f"{base}/{ids[kind]}/approve", headers=staff[who])

    assert approve("fin2", "amount_mismatch").json()["error"]["code"] == \
        "discrepancy_not_proposed"
    assert resolve("aud", "amount_mismatch").status_code == 403
    for kind in ids:
        r = resolve("fin1", kind)
        assert r.status_code == 200 and r.json()["status"] == "proposed", r.text
    same = approve("fin1", "amount_mismatch")
    assert same.status_code == 403 and same.json()["error"]["code"] == "same_approver"

    done = approve("fin2", "amount_mismatch").json()
    assert done["status"] == "resolved" and done["approved_by"] != done["proposed_by"]
    fee = approve("fin2", "fee_mismatch").json()
    recovered = approve("fin2", "missing_locally").json()
    assert approve("fin2", "missing_locally").json()["error"]["code"] == \
        "discrepancy_not_proposed"                                       # once
    with rt.sessions() as s:
        legs = dict(s.execute(text(
            "SELECT a.code, p.amount_fen FROM postings p JOIN ledger_accounts a "
            "ON a.id = p.account_id WHERE p.entry_id = :e"), {"e": done["ledger_entry_id"]}).all())
        assert legs == {"channel_clearing:wechat": -500,
                        "reconciliation_differences:wechat": 500}
        legs = dict(s.execute(text(
            "SELECT a.code, p.amount_fen FROM postings p JOIN ledger_accounts a "
            "ON a.id = p.account_id WHERE p.entry_id = :e"), {"e": fee["ledger_entry_id"]}).all())
        assert legs == {"channel_fees:wechat": 4, "channel_clearing:wechat": -4}
        entry = s.get(JournalEntry, done["ledger_entry_id"])
        assert entry is not None and entry.business_date == rt.clock.today()
        # the missed payment, recovered as a notification would have applied it
        payment = s.scalar(select(Payment).where(col(Payment.attempt_id) == 1))
        assert payment is not None and payment.source == "statement"
        assert recovered["payment_id"] == payment.id and recovered["ledger_entry_id"]
        assert s.get(BillLine, 1).status == "paid"  # type: ignore[union-attr]
        recovery = s.get(JournalEntry, recovered["ledger_entry_id"])
        assert recovery is not None and recovery.kind == "channel_payment"
    _ledger_balances(rt)
    listed = client.get(base, headers=staff["aud"], params={"status": "resolved"}).json()
    assert sorted(d["id"] for d in listed["items"]) == sorted(ids.values())


def test_a_missed_payment_is_recovered_once_however_many_approve(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, 2, unpaid=[1])
        users = [int(staff_user(s, f"f{k}", "finance").id or 0) for k in range(3)]
    done = reconcile_statement(
        rt, channel="wechat", day=DAY, fileobj=io.BytesIO(b"x"), filename="x",
        source="upload", user_id=users[0],
        parse=lambda c, f: [payment_line(1, at(DAY, 9), settings=rt.settings),
                            payment_line(2, at(DAY, 9, 1), settings=rt.settings)])
    (d,) = done.run.discrepancies
    with unit_of_work(rt.sessions) as s:
        from backend.reconciliation.service import resolve_discrepancy
        resolve_discrepancy(rt, s, d.id, user_id=users[0], side="channel", reason="seen")
    outcomes: list[str] = []

    def approve(user: int) -> None:
        try:
            with unit_of_work(rt.sessions) as s:
                approve_discrepancy(rt, s, d.id, user_id=user)
            outcomes.append("approved")
        except Exception as exc:       # the loser: discrepancy_not_proposed
            outcomes.append(getattr(exc, "code", repr(exc)))

    threads = [threading.Thread(target=approve, args=(u,)) for u in users[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["approved", "discrepancy_not_proposed"]
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Payment)
                        .where(col(Payment.attempt_id) == 1)) == 1
        assert s.scalar(select(func.count()).select_from(JournalEntry)) == 1
        assert s.scalar(select(col(Discrepancy.status))) == "resolved"
        assert s.scalar(select(func.count()).select_from(ReconciliationRun)) == 1
    _ledger_balances(rt)
