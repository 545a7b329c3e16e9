"""The audit trail: staff actions recorded with who, when and why, in their own transaction;
the hash chain verifies, tampering is found, the database refuses changes; auditors read it."""

from __future__ import annotations

import csv
import io
import threading
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col

from backend.audit import service as audit
from backend.audit.models import AuditEvent
from backend.auth.models import StaffUser
from backend.auth.service import create_staff_user, set_staff_active, staff_principal
from backend.db import unit_of_work
from backend.reconciliation.service import (
    approve_discrepancy,
    reconcile_statement,
    resolve_discrepancy,
)
from backend.runtime import Runtime
from backend.security.tokens import issue_token
from tests.orders.helpers import ref, seed, staff_headers
from tests.reconciliation.world import at, build_world, payment_line

DAY = date(2020, 11, 2)
FULL_ID, PHONE = "370406199001011234", "13812345678"


def _events(rt: Runtime) -> list[AuditEvent]:
    with rt.sessions() as s:
        return list(s.scalars(select(AuditEvent).order_by(col(AuditEvent.id))).all())


def _tokens(rt: Runtime) -> dict[str, dict[str, str]]:
    with unit_of_work(rt.sessions) as s:
        users = [StaffUser(username=name, password_hash="-", role=role)
                 for name, role in (("fin1", "finance"), ("fin2", "finance"),
                                    ("aud", "auditor"), ("adm", "admin"))]
        s.add_all(users)
        s.flush()
        return {u.username: {"Authorization": "Bearer " + issue_token(
            rt.app_secret, staff_principal(u), 600)} for u in users}


def test_staff_actions_are_recorded_and_auditors_read_them(rt: Runtime,
                                                           client: TestClient) -> None:
    people = seed(rt)                       # the agent "agent1" (created with no clock)
    staff = _tokens(rt)
    fin1, fin2 = staff["fin1"], staff["fin2"]
    live = SimpleNamespace(http=client, rt=rt)
    agent = staff_headers(live)             # type: ignore[arg-type]
    item = [{"resident_ref": ref(live, agent, "张三", people["张三"]),  # type: ignore[arg-type]
             "insurance": "medical"}]
    r = client.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "items": item, "method": "cash", "receipt_no": "R-1"})
    assert r.status_code == 201, r.text
    order_no = r.json()["order_no"]
    first = client.post("/api/v1/refunds", headers=fin1,
                        json={"order_no": order_no, "reason": "重复缴费"}).json()["refund_id"]
    assert client.post(f"/api/v1/refunds/{first}/reject", headers=fin2,
                       json={"reason": "not a duplicate"}).status_code == 200
    rid = client.post("/api/v1/refunds", headers=fin1,
                      json={"order_no": order_no, "reason": "误缴"}).json()["refund_id"]
    assert client.post(f"/api/v1/refunds/{rid}/approve", headers=fin2).status_code == 200
    assert client.post(f"/api/v1/agent/refunds/{rid}/paid", headers=agent,
                       json={"receipt_no": "TK-1"}).status_code == 200
    item = [{"resident_ref": ref(live, agent, "李梅", people["李梅"]),  # type: ignore[arg-type]
             "insurance": "medical"}]
    assert client.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "items": item, "method": "cash", "receipt_no": "R-2"}).status_code == 201
    assert client.post("/api/v1/agent/remittances", headers=agent, json={
        "business_date": "2020-11-02", "amount_fen": 28000,
        "bank_receipt_no": "B-1"}).status_code == 201
    closed = client.post("/api/v1/ledger/days/2020-11-01/close", headers=fin1,
                         json={"note": "checked"})
    assert closed.status_code == 200, closed.text
    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="aud2", password="aud2-pass-1", role="auditor",
                          clock=rt.clock)
        # whatever a caller puts in the details, no full ID or phone number is kept
        audit.record(s, rt, None, "resident.note", "resident", 1, reason=f"caller {PHONE}",
                     details={"id_number": FULL_ID, "said": [f"id {FULL_ID}"]})
    set_staff_active(rt, "aud2", False, reason="left the district")
    set_staff_active(rt, "aud2", True)

    events = _events(rt)
    got = [(e.action, e.actor_username, e.actor_role, e.subject_type, e.reason)
           for e in events]
    assert got == [
        ("user.create", "system", "system", "staff_user", None),           # agent1, by seed
        ("collection.record", "agent1", "agent", "order", None),
        ("refund.request", "fin1", "finance", "refund", "重复缴费"),
        ("refund.reject", "fin2", "finance", "refund", "not a duplicate"),
        ("refund.request", "fin1", "finance", "refund", "误缴"),
        ("refund.approve", "fin2", "finance", "refund", None),
        ("refund.cash_paid", "agent1", "agent", "refund", None),
        ("collection.record", "agent1", "agent", "order", None),
        ("remittance.record", "agent1", "agent", "remittance", None),
        ("day.close", "fin1", "finance", "business_day", "checked"),
        ("user.create", "system", "system", "staff_user", None),
        ("resident.note", "system", "system", "resident", "caller 138****5678"),
        ("user.deactivate", "system", "system", "staff_user", "left the district"),
        ("user.activate", "system", "system", "staff_user", None)]
    assert events[2].details["amount_fen"] == 28000 and events[2].subject_id == str(first)
    assert events[9].subject_id == "2020-11-01"
    assert events[0].occurred_at.year > 2020             # created with no clock: real time
    assert all(e.occurred_at.year == 2020 for e in events[1:])        # the business clock
    assert all(e.recorded_at.year > 2020 for e in events)             # the real one
    assert events[11].details == {"id_number": "370406********1234",
                                  "said": ["id 370406********1234"]}

    # auditors (and admins) read, page, export and verify; finance and agents may not
    for who in ("fin1", "agent"):
        h = agent if who == "agent" else staff[who]
        for url in ("/api/v1/audit?from=2020-11-01&to=2020-11-02", "/api/v1/audit/verify",
                    "/api/v1/audit.csv?from=2020-11-01&to=2020-11-02"):
            assert client.get(url, headers=h).status_code == 403, (who, url)
    page = client.get("/api/v1/audit", headers=staff["aud"],
                      params={"from": "2020-11-02", "to": "2020-11-02", "limit": 10}).json()
    assert len(page["events"]) == 10 and page["events"][0]["actor"] == "agent1"
    rest = client.get("/api/v1/audit", headers=staff["adm"], params={
        "from": "2020-11-02", "to": "2020-11-02", "after_id": page["next_after_id"]}).json()
    assert [e["action"] for e in rest["events"]] == [
        "resident.note", "user.deactivate", "user.activate"]
    assert rest["next_after_id"] is None
    assert client.get("/api/v1/audit", headers=staff["aud"], params={
        "from": "2020-11-03", "to": "2020-11-02"}).status_code == 422
    for far in ("0001-01-01", "9999-12-31"):     # its Beijing midnight would overflow
        r = client.get("/api/v1/audit", headers=staff["aud"], params={"from": far, "to": far})
        assert r.status_code == 422 and r.json()["error"]["fields"] == ["from"], r.text
    exported = client.get("/api/v1/audit.csv", headers=staff["aud"],
                          params={"from": "2020-11-01", "to": "2020-11-02"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["action"] for row in rows] == [a for a, *_ in got[1:]]
    assert rows[2]["actor"] == "fin2" and rows[2]["reason"] == "not a duplicate"
    for secret in (FULL_ID, PHONE, *people.values()):
        assert secret not in exported.text
    verified = client.get("/api/v1/audit/verify", headers=staff["aud"]).json()
    assert verified == {"ok": True, "checked": 14, "head": events[-1].hash}


def test_reconciliation_actions_are_recorded(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, 2, unpaid=[1])
        users = []
        for name in ("f1", "f2"):
            user = StaffUser(username=name, password_hash="-", role="finance")
            s.add(user)
            s.flush()
            users.append(int(user.id or 0))
    done = reconcile_statement(
        rt, channel="wechat", day=DAY, fileobj=io.BytesIO(b"x"), filename="bill.csv",
        source="upload", user_id=users[0],
        parse=lambda c, f: [payment_line(1, at(DAY, 9), settings=rt.settings),
                            payment_line(2, at(DAY, 9, 1), settings=rt.settings)])
    (d,) = done.run.discrepancies
    with unit_of_work(rt.sessions) as s:
        resolve_discrepancy(rt, s, d.id, user_id=users[0], side="channel", reason="on the bill")
    with unit_of_work(rt.sessions) as s:
        approve_discrepancy(rt, s, d.id, user_id=users[1])
    events = _events(rt)
    assert [(e.action, e.actor_username, e.subject_id, e.reason) for e in events] == [
        ("statement.load", "f1", str(done.run.statement.id), None),
        ("discrepancy.resolve", "f1", str(d.id), "on the bill"),
        ("discrepancy.approve", "f2", str(d.id), "on the bill")]
    assert events[0].details["channel"] == "wechat" and events[2].details["ledger_entry_id"]
    with rt.sessions() as s:
        assert audit.verify(s)[:2] == (True, 3)


def _disable(conn: Any, backend: str) -> None:
    if backend == "postgresql":
        conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
    else:
        for action in ("update", "delete"):
            conn.execute(text(f"DROP TRIGGER audit_events_no_{action}"))


def test_tampering_is_found_and_changes_are_refused(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        for n in range(1, 8):
            audit.record(s, rt, None, "test.step", "thing", n, details={"n": n})
    with rt.sessions() as s:
        assert audit.verify(s, batch=3) == (True, 7, None)       # batches: 3 + 3 + 1
    for sql in ("UPDATE audit_events SET reason = 'x' WHERE id = 3",
                "DELETE FROM audit_events WHERE id = 3"):
        with pytest.raises(DBAPIError, match="append-only"), rt.engine.begin() as conn:
            conn.execute(text(sql))
    backend = rt.engine.dialect.name
    # A database superuser can switch the triggers off; the chain still tells.
    with rt.engine.begin() as conn:
        _disable(conn, backend)
    try:
        with rt.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET details = :d WHERE id = 3"),
                         {"d": '{"n": 30}'})
        with rt.sessions() as s:
            ok, checked, broken = audit.verify(s, batch=3)
            assert (ok, checked, broken) == (False, 2, audit.Broken(3, "hash"))
        with rt.engine.begin() as conn:          # put back, then cut a middle event out
            conn.execute(text("UPDATE audit_events SET details = :d WHERE id = 3"),
                         {"d": '{"n": 3}'})
            conn.execute(text("DELETE FROM audit_events WHERE id = 5"))
        with rt.sessions() as s:
            assert audit.verify(s, batch=3) == (False, 4, audit.Broken(6, "prev_hash"))
    finally:
        if backend == "postgresql":      # the database is shared by the whole session
            with rt.engine.begin() as conn:
                conn.execute(text(
                    "ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))


# SQLite has one writer at a time: the race is PostgreSQL's
@pytest.mark.parametrize("backend_name", ["postgres"])
def test_concurrent_appends_keep_one_chain(rt: Runtime) -> None:
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def append(who: int) -> None:
        try:
            barrier.wait()
            for n in range(15):
                with unit_of_work(rt.sessions) as s:
                    audit.record(s, rt, None, "test.race", "thread", who, details={"n": n})
        except BaseException as exc:     # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=append, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with rt.sessions() as s:
        assert audit.verify(s) == (True, 30, None)


def test_a_files_digest_is_kept_and_numbers_in_it_are_not_taken_for_ids() -> None:
    digest = "7425fda90e532689d11c0eb06699bb02b926dd8de2cfa855596917492e1c6a57"
    number = "370406196903150112"
    assert audit._masked({"sha256": digest, "sha1": digest[:40], "md5": digest[:32]}) == {
        "sha256": digest, "sha1": digest[:40], "md5": digest[:32]}
    # only a whole digest: an ID number in a longer string, or alone, is masked still
    mixed = audit._masked(f"{digest} {number}")
    assert mixed.endswith(" 370406********0112") and digest not in mixed
    assert audit._masked("1" * 64) != "1" * 64


def test_region_codes_are_kept_and_numbers_elsewhere_masked() -> None:
    """A village's 12 digits under village_code (public: 统计用区划代码) are kept; the same
    digits elsewhere, or an ID number under that key, are masked still."""
    kept = audit._masked({"village_code": "370406100201", "town_code": "370406100",
                          "note": "370406100201", "phone": "13812345678"})
    assert kept == {"village_code": "370406100201", "town_code": "370406100",
                    "note": "370*****0201", "phone": "138****5678"}
    assert audit._masked({"village_code": "370406196903150112"}) == {
        "village_code": "370406********0112"}
