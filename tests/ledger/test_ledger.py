"""The ledger: balanced, append-only, and the daily view agreeing with the payments."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from backend.db import unit_of_work
from backend.ledger.models import JournalEntry, Posting
from backend.ledger.service import REFUNDS, Leg, UnbalancedEntry, channel_clearing, post_entry
from backend.orders.payment_flow import ChannelConfirmation, confirm_channel_payment
from tests.conftest import Live
from tests.orders.helpers import (
    order,
    ref,
    resident_headers,
    seed,
    staff_headers,
    two_orders_for_one_item,
)


def _finance(live: Live) -> dict[str, str]:
    from backend.auth.service import create_staff_user

    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    return staff_headers(live, "fin", "finance-pass")


def test_payments_at_2359_59_and_0000_00_beijing_fall_on_two_days(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    nos = []
    for name in ("张三", "李梅"):
        body = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, name, people[name]),
                                             "insurance": "medical"}]).json()
        nos.append(body["payment"]["out_trade_no"])
    instants = ["2020-11-02T23:59:59+08:00", "2020-11-03T00:00:00+08:00"]
    with unit_of_work(live.rt.sessions) as s:
        for n, (no, at) in enumerate(zip(nos, instants, strict=True)):
            confirm_channel_payment(s, ChannelConfirmation(
                channel="alipay", out_trade_no=no, transaction_id=f"2020110222001{n:015d}",
                amount_fen=28000, paid_at=datetime.fromisoformat(at), source="notification"))
    fin = _finance(live)
    for day in ("2020-11-02", "2020-11-03"):
        r = live.http.get("/api/v1/ledger/daily", headers=fin, params={"date": day})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["date"] == day
        assert body["rows"] == [{"town_code": "370406100", "village_code": "370406100201",
                                 "channel": "alipay", "count": 1, "amount_fen": 28000,
                                 "refunded_fen": 0, "remitted_fen": 0, "outstanding_fen": 0,
                                 "overdue": False}]
    # scoping: town staff of another town may not look at this town
    r = live.http.get("/api/v1/ledger/daily", headers=h, params={"date": "2020-11-02"})
    assert r.status_code == 403


def test_the_ledger_is_append_only_and_balanced(live: Live) -> None:
    rt = live.rt
    with unit_of_work(rt.sessions) as s:
        post_entry(s, kind="correction", reason="test", business_date=date(2020, 11, 2),
                   occurred_at=datetime.fromisoformat("2020-11-02T10:00:00+08:00"),
                   legs=[Leg(channel_clearing("wechat"), 100), Leg(REFUNDS, -100)])
    with pytest.raises(UnbalancedEntry):
        with unit_of_work(rt.sessions) as s:
            post_entry(s, kind="correction", reason="bad", business_date=date(2020, 11, 2),
                       occurred_at=datetime.fromisoformat("2020-11-02T10:00:00+08:00"),
                       legs=[Leg(channel_clearing("wechat"), 100), Leg(REFUNDS, -99)])
    for sql in ("UPDATE postings SET amount_fen = 1", "DELETE FROM postings",
                "UPDATE journal_entries SET reason = 'rewritten'", "DELETE FROM journal_entries"):
        with pytest.raises((DBAPIError, IntegrityError)) as err:
            with unit_of_work(rt.sessions) as s:
                s.execute(text(sql))
        assert "append-only" in str(err.value)
    if rt.engine.dialect.name == "postgresql":
        # the database itself refuses an unbalanced entry at commit
        with pytest.raises(DBAPIError, match="does not balance"):
            with unit_of_work(rt.sessions) as s:
                entry = s.execute(text(
                    "INSERT INTO journal_entries (kind, reason, business_date, occurred_at, "
                    "created_at) VALUES ('x', 'x', '2020-11-02', now(), now()) RETURNING id"
                )).scalar_one()
                account = s.execute(text("SELECT id FROM ledger_accounts LIMIT 1")).scalar_one()
                s.execute(text("INSERT INTO postings (entry_id, account_id, amount_fen, "
                               "business_date) VALUES (:e, :a, 5, '2020-11-02')"),
                          {"e": entry, "a": account})
    with unit_of_work(rt.sessions) as s:
        assert s.scalar(select(func.count()).select_from(JournalEntry)) == 1
        assert s.scalar(select(func.sum(Posting.amount_fen))) == 0


def test_duplicate_is_refunded_through_the_channel_by_the_worker(live: Live) -> None:
    from backend.orders.models import Refund
    from backend.outbox.service import run_due

    people = seed(live.rt)
    _, o1, _, o2 = two_orders_for_one_item(live, people, "wechat_native", "unionpay_qr")
    for o in (o1, o2):
        r = live.http.post("/sandbox/pay", json={"out_trade_no": o["payment"]["out_trade_no"]})
        assert r.status_code == 200
    assert run_due(live.rt) == 1
    with unit_of_work(live.rt.sessions) as s:
        refund = s.scalar(select(Refund))
        assert refund is not None and refund.status == "succeeded" and refund.amount_fen == 28000
    trade = live.http.get(f"/sandbox/trades/{o2['payment']['out_trade_no']}").json()
    assert trade["refunded_fen"] == 28000
    fin = _finance(live)
    body = live.http.get("/api/v1/ledger/daily", headers=fin,
                         params={"date": live.rt.clock.today().isoformat()}).json()
    assert body["totals"]["amount_fen"] == 56000 and body["totals"]["refunded_fen"] == 28000
    # one item was paid (twice): the count says items paid, the amount says money received
    assert body["totals"]["count"] == 1
    assert {r["channel"]: r["count"] for r in body["rows"]} == {"wechat": 1, "unionpay": 0}
    assert {r["channel"]: r["refunded_fen"] for r in body["rows"]} == {"wechat": 0,
                                                                       "unionpay": 28000}


def test_a_lost_notification_is_recovered_by_active_query(live: Live) -> None:
    from backend.worker.jobs import recover_attempts

    people = seed(live.rt)
    h = resident_headers(live)
    body = order(live, h, "wechat_native", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                              "insurance": "medical"}]).json()
    live.http.post("/sandbox/pay", json={"out_trade_no": body["payment"]["out_trade_no"],
                                         "deliver": False})
    assert recover_attempts(live.rt) == 0          # too young to query
    with unit_of_work(live.rt.sessions) as s:
        s.execute(text("UPDATE attempts SET created_at = :t"),
                  {"t": datetime.fromisoformat("2020-01-01T00:00:00+00:00")})
    assert recover_attempts(live.rt) == 1
    r = live.http.get(f"/api/v1/orders/{body['order_no']}", headers=h)
    assert r.json()["status"] == "paid"
