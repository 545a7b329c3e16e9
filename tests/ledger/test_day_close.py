"""Closing a business day: it stays as it was; later money for it goes into the next open day.

The business clock stands at 2020-11-02 09:00 (Beijing): 2020-11-01 is over, 11-02 is not.
"""

from __future__ import annotations

import threading
import time
from datetime import date, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from backend.agents.models import AgentCollection
from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.ledger import closing
from backend.ledger.models import ClosedDay, JournalEntry, Posting
from backend.ledger.pos import PosSettled, remit_pos
from backend.ledger.service import (
    Leg,
    agent_cash,
    balance,
    channel_clearing,
    channel_fees,
    contributions,
    post_entry,
    town_collection,
)
from backend.orders.payment_flow import ChannelConfirmation, confirm_channel_payment
from backend.runtime import Runtime
from tests.conftest import Live
from tests.factories import TOWN, VILLAGE
from tests.orders.helpers import order, ref, resident_headers, seed, staff_headers

D1, D2 = date(2020, 11, 1), date(2020, 11, 2)
WHERE = {"village_code": VILLAGE, "town_code": TOWN}


def _at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _staff(live: Live, name: str, role: str) -> dict[str, str]:
    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username=name, password=f"{name}-pass-1", role=role)
    return staff_headers(live, name, f"{name}-pass-1")


def _alipay(live: Live, out_trade_no: str, n: int, at: str) -> None:
    with unit_of_work(live.rt.sessions) as s:
        confirm_channel_payment(s, ChannelConfirmation(
            channel="alipay", out_trade_no=out_trade_no, transaction_id=f"2020110122001{n:015d}",
            amount_fen=28000, paid_at=_at(at), source="notification"))


def _daily(live: Live, headers: dict[str, str], day: date) -> dict[str, Any]:
    r = live.http.get("/api/v1/ledger/daily", headers=headers, params={"date": day.isoformat()})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_closed_day_stays_as_it_was_and_late_money_goes_into_the_next_day(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    fin, agent = _staff(live, "fin", "finance"), staff_headers(live)
    auditor = _staff(live, "aud", "auditor")
    trades = [order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, name, people[name]),
                                            "insurance": "medical"}]).json()
              ["payment"]["out_trade_no"] for name in ("张三", "李梅")]
    _alipay(live, trades[0], 1, "2020-11-01T10:00:00+08:00")
    with unit_of_work(live.rt.sessions) as s:     # cash an agent took on 11-01
        aid = int(s.scalar(text("SELECT id FROM staff_users WHERE username = 'agent1'")))
        post_entry(s, kind="cash_collection", reason="cash of 11-01", business_date=D1,
                   occurred_at=_at("2020-11-01T11:00:00+08:00"), legs=[
                       Leg(agent_cash(aid), 30000, channel="cash", measure="collected", **WHERE),
                       Leg(contributions("pension", 2021), -30000, channel="cash", **WHERE)])

    close = "/api/v1/ledger/days/{}/close"
    r = live.http.post(close.format(D2), headers=fin, json={})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "day_not_over")
    for who in (agent, auditor):
        assert live.http.post(close.format(D1), headers=who).status_code == 403
    # a precondition (open reconciliation discrepancies, wired by reconciliation) refuses
    monkeypatch.setattr(closing, "PRECONDITIONS", [closing.no_open_discrepancies(
        lambda session, day: 2 if day == D1 else 0)])
    r = live.http.post(close.format(D1), headers=fin, json={"note": "对账完毕"})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "open_discrepancies")
    assert "2 reconciliation discrepancies" in r.json()["error"]["message"]
    monkeypatch.setattr(closing, "PRECONDITIONS", [closing.no_open_discrepancies(
        lambda session, day: 0)])
    before = _daily(live, fin, D1)
    assert before["closed"] is False and before["corrections"] == []
    r = live.http.post(close.format(D1), headers=fin, json={"note": "对账完毕"})
    assert r.status_code == 200, r.text
    closed = r.json()
    assert closed["closed"] is True and closed["closed_by"] == "fin"
    assert closed["note"] == "对账完毕"
    # cash not yet remitted does not stop a close: it is shown
    assert closed["totals"] == {"count": 2, "amount_fen": 58000, "refunded_fen": 0,
                                "remitted_fen": 0, "outstanding_fen": 30000}
    r = live.http.post(close.format(D1), headers=fin)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "day_closed")

    # after the close: a late notification of a payment made on 11-01, cash of 11-01 remitted
    _alipay(live, trades[1], 2, "2020-11-01T23:50:00+08:00")
    remit = {"business_date": "2020-11-01", "bank_receipt_no": "B-1"}
    r = live.http.post("/api/v1/agent/remittances", headers=agent,
                       json=remit | {"amount_fen": 20000})
    assert r.status_code == 201, r.text
    assert r.json()["outstanding_fen"] == 10000
    # what belongs to 11-01 is still counted against 11-01's cash, wherever it was posted
    r = live.http.post("/api/v1/agent/remittances", headers=agent,
                       json=remit | {"amount_fen": 10001, "bank_receipt_no": "B-2"})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "remittance_exceeds_cash")

    after = _daily(live, fin, D1)
    assert after["closed"] is True and after["closed_by"] == "fin"
    assert after["closed_at"] == closed["closed_at"]
    keep = ("date", "rows", "totals", "corrections")
    assert {k: after[k] for k in keep} == {k: before[k] for k in keep}
    with unit_of_work(live.rt.sessions) as s:
        day = s.get(ClosedDay, D1)
        assert day is not None
        assert day.totals == {k: after[k] for k in ("rows", "totals", "corrections")}
        moved = s.execute(select(JournalEntry.kind, JournalEntry.business_date,
                                 JournalEntry.for_date).where(JournalEntry.for_date.isnot(None))
                          .order_by(JournalEntry.id)).all()
        assert moved == [("channel_payment", D2, D1), ("remittance", D2, D1)]
        assert s.scalar(select(func.sum(Posting.amount_fen))) == 0      # still balanced
        assert s.scalar(select(func.count()).select_from(Posting).where(
            Posting.business_date == D1)) == 4
    with pytest.raises(DBAPIError, match="closed day stays closed"):
        with unit_of_work(live.rt.sessions) as s:
            s.execute(text("DELETE FROM closed_days"))
    nxt = _daily(live, fin, D2)
    assert nxt["closed"] is False
    rows = {r["channel"]: r for r in nxt["rows"]}
    assert rows["alipay"]["amount_fen"] == 28000 and rows["alipay"]["count"] == 1
    # 11-01's cash remitted on 11-02 is in 11-02's remitted money, not 11-02's own cash
    assert rows["cash"]["remitted_fen"] == 20000 and rows["cash"]["outstanding_fen"] == 0
    assert [(c["for_date"], c["kind"], c["channel"], c["measure"], c["amount_fen"],
             c["village_code"]) for c in nxt["corrections"]] == [
        ("2020-11-01", "channel_payment", "alipay", "collected", 28000, VILLAGE),
        ("2020-11-01", "remittance", "cash", "remitted", 20000, VILLAGE)]
    # the agent sees their village's corrections too
    assert len(_daily(live, agent, D2)["corrections"]) == 2

    r = live.http.get("/api/v1/ledger/days", headers=auditor,
                      params={"from": "2020-10-31", "to": "2020-11-02"})
    assert r.status_code == 200, r.text
    days = {d["date"]: d for d in r.json()["days"]}
    assert [d["closed"] for d in days.values()] == [False, True, False]
    assert days["2020-11-01"]["totals"] == closed["totals"]
    assert days["2020-11-02"]["totals"]["amount_fen"] == 28000
    assert live.http.get("/api/v1/ledger/days", headers=agent,
                         params={"from": "2020-11-01", "to": "2020-11-01"}).status_code == 403
    assert live.http.get("/api/v1/ledger/days", headers=fin,
                         params={"from": "2020-11-02", "to": "2020-11-01"}).status_code == 422


def test_the_acquirers_settlement_remits_pos_collections_once(live: Live) -> None:
    people = seed(live.rt)
    agent = staff_headers(live)
    fin = _staff(live, "fin", "finance")
    for n, name in enumerate(("张三", "王芳")):
        r = live.http.post("/api/v1/agent/collections", headers=agent, json={
            "year": 2021, "method": "pos", "receipt_no": f"P-{n}",
            "pos_reference": f"SLIP-{n}", "items": [{
                "resident_ref": ref(live, agent, name, people[name]), "insurance": "pension",
                "tier_yuan": 300}]})
        assert r.status_code == 201, r.text
    with unit_of_work(live.rt.sessions) as s:
        pay = {ref: pid for ref, pid in s.execute(
            select(AgentCollection.pos_reference, AgentCollection.payment_id))}
    settled_on = date(2020, 11, 3)
    lines = [PosSettled(30000, 60, pos_reference="SLIP-0"),
             PosSettled(30000, 60, payment_id=pay["SLIP-1"]),
             PosSettled(30000, 60, payment_id=pay["SLIP-1"]),          # named twice
             PosSettled(30000, pos_reference="SLIP-9"),
             PosSettled(29999, payment_id=pay["SLIP-0"])]
    with unit_of_work(live.rt.sessions) as s:
        out = remit_pos(s, settle_date=settled_on, collections=lines, reference="ACQ-1103",
                        occurred_at=_at("2020-11-03T10:00:00+08:00"))
    assert sorted(out.remitted) == sorted(pay.values()) and out.already_remitted == []
    assert [why for _, why in out.refused] == ["duplicate_line", "unknown", "amount_mismatch"]
    assert (out.remitted_fen, out.fee_fen) == (60000, 120)
    with unit_of_work(live.rt.sessions) as s:        # the same settlement again
        again = remit_pos(s, settle_date=settled_on, collections=lines[:2], reference="ACQ-1103",
                          occurred_at=_at("2020-11-03T10:00:00+08:00"))
        assert again.remitted == [] and sorted(again.already_remitted) == sorted(pay.values())
        assert balance(s, channel_clearing("pos")) == 0
        assert balance(s, town_collection(TOWN)) == 60000 - 120
        assert balance(s, channel_fees("pos")) == 120
    row = _daily(live, fin, D2)["rows"]
    assert [(r["channel"], r["amount_fen"], r["remitted_fen"]) for r in row] == [
        ("pos", 60000, 60000)]


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_a_close_and_a_posting_at_the_same_moment(rt: Runtime) -> None:
    """An entry written before the close commits is in the closed day and its snapshot; one
    that comes while the close runs waits, then goes into the next day."""
    with unit_of_work(rt.sessions) as s:
        user = create_staff_user(s, username="fin", password="finance-pass", role="finance")
        uid = user.id
    assert uid is not None

    def post(session: Session, fen: int, day: date = D1) -> Any:
        return post_entry(session, kind="correction", reason=f"{fen}", business_date=day,
                          occurred_at=_at("2020-11-01T12:00:00+08:00"), legs=[
                              Leg(channel_clearing("wechat"), fen, channel="wechat",
                                  measure="collected", **WHERE),
                              Leg(contributions("medical", 2021), -fen, **WHERE)])

    def waiting_on_a_lock(n: int) -> None:
        deadline = time.monotonic() + 5
        with rt.engine.connect() as conn:
            while conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()")).scalar() != n:
                assert time.monotonic() < deadline, "nobody waits on the lock"
                time.sleep(0.02)
                conn.rollback()

    locked, go = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def hold(session: Session, day: date) -> None:
        locked.set()
        assert go.wait(10)
        return None

    def close() -> None:
        with unit_of_work(rt.sessions) as s:
            results["closed"] = closing.close_day(s, rt.clock, D1, uid, preconditions=[hold])

    conn = rt.engine.connect()
    late_session = Session(bind=conn)
    post(late_session, 1, D2)          # the statement prepared on this connection already
    late_session.commit()

    def late() -> None:
        results["late"] = post(late_session, 300)
        late_session.commit()

    with unit_of_work(rt.sessions) as early:
        post(early, 200)                # written, not yet committed
        closer = threading.Thread(target=close)
        closer.start()
        waiting_on_a_lock(1)            # the close waits for it
    assert locked.wait(5)
    poster = threading.Thread(target=late)
    poster.start()
    waiting_on_a_lock(1)                # the late entry waits for the close
    go.set()
    closer.join(10)
    poster.join(10)
    late_session.close()
    conn.close()
    assert results["closed"].totals["totals"]["amount_fen"] == 200
    assert (results["late"].business_date, results["late"].for_date) == (D2, D1)
    with unit_of_work(rt.sessions) as s:
        assert closing.ledger_of(s, rt.clock, D1).totals.amount_fen == 200
        assert closing.ledger_of(s, rt.clock, D2).totals.amount_fen == 301
