"""One business clock: under a COLLECT_NOW in 2020 every money event lands on that day.

The served app runs with ``COLLECT_NOW=2020-11-02T09:00:00+08:00`` (tests/conftest.py). A
payment through the simulator, a duplicate paid on one aggregate code by a second wallet and
its automatic refund, a cash collection and its remittance, and a POS collection must all be
dated 2020-11-02 — not the real day the test runs on.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import select

from backend.clock import SHANGHAI
from backend.db import unit_of_work
from backend.orders.models import Attempt, Payment, Refund
from backend.outbox.service import run_due
from tests.conftest import Live
from tests.orders.helpers import order, pay, ref, resident_headers, seed, staff_headers

DAY = date(2020, 11, 2)


def _finance(live: Live) -> dict[str, str]:
    from backend.auth.service import create_staff_user

    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    return staff_headers(live, "fin", "finance-pass")


def test_every_money_event_lands_on_the_business_day(live: Live) -> None:
    assert live.rt.clock.today() == DAY
    people = seed(live.rt)
    h = resident_headers(live)
    agent = staff_headers(live)

    # 1. a WeChat payment through the simulator
    wx = order(live, h, "wechat_native", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                           "insurance": "medical"}]).json()
    assert wx["order_no"].startswith("20201102"), wx["order_no"]
    trade = pay(live, wx["payment"]["out_trade_no"])["trade"]
    assert trade["paid_at"].startswith("2020-11-02T01:"), trade   # 09:xx Beijing, in UTC

    # 2. one aggregate code opened by two wallets, both pay: the second is a duplicate
    agg = order(live, h, "aggregate_qr", [{"resident_ref": ref(live, h, "李梅", people["李梅"]),
                                           "insurance": "medical"}]).json()
    landing = agg["payment"]["qr_content"].removeprefix(live.base_url)
    for ua in ("MicroMessenger/8.0", "AlipayClient/10.6"):
        assert live.http.get(landing, headers={"User-Agent": ua},
                             follow_redirects=False).status_code == 302
    with unit_of_work(live.rt.sessions) as s:
        trades = {a.channel: a.out_trade_no for a in s.scalars(
            select(Attempt).where(Attempt.out_trade_no != wx["payment"]["out_trade_no"]))}
    pay(live, trades["wechat"])
    pay(live, trades["alipay"])
    while run_due(live.rt):     # closes the other trade (finds it paid) and refunds it
        pass
    with unit_of_work(live.rt.sessions) as s:
        refund = s.scalar(select(Refund))
        assert refund is not None and refund.status == "succeeded"
        assert refund.refunded_at is not None
        assert refund.refunded_at.astimezone(SHANGHAI).date() == DAY
        assert {p.business_date for p in s.scalars(select(Payment))} == {DAY}

    # 3. cash and its remittance, 4. POS
    wang = ref(live, agent, "王芳", people["王芳"])
    zhang = ref(live, agent, "张三", people["张三"])
    cash = live.http.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "method": "cash", "receipt_no": "C-1",
        "items": [{"resident_ref": wang, "insurance": "pension", "tier_yuan": 300}]})
    assert cash.status_code == 201, cash.text
    assert cash.json()["business_date"] == "2020-11-02"
    pos = live.http.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "method": "pos", "receipt_no": "P-1", "pos_reference": "SLIP-1",
        "items": [{"resident_ref": zhang, "insurance": "pension", "tier_yuan": 500}]})
    assert pos.status_code == 201, pos.text
    remit = live.http.post("/api/v1/agent/remittances", headers=agent, json={
        "business_date": "2020-11-02", "amount_fen": 30000, "bank_receipt_no": "B-1"})
    assert remit.status_code == 201, remit.text
    assert remit.json()["outstanding_fen"] == 0

    body = live.http.get("/api/v1/ledger/daily", headers=_finance(live),
                         params={"date": "2020-11-02"}).json()
    rows = {r["channel"]: {k: r[k] for k in ("count", "amount_fen", "refunded_fen",
                                             "remitted_fen")} for r in body["rows"]}
    assert rows == {
        "wechat": {"count": 2, "amount_fen": 56000, "refunded_fen": 0, "remitted_fen": 0},
        # the second wallet's money: received and refunded the same day, not an item paid
        "alipay": {"count": 0, "amount_fen": 28000, "refunded_fen": 28000, "remitted_fen": 0},
        "cash": {"count": 1, "amount_fen": 30000, "refunded_fen": 0, "remitted_fen": 30000},
        "pos": {"count": 1, "amount_fen": 50000, "refunded_fen": 0, "remitted_fen": 0},
    }
    assert body["totals"]["count"] == 4 and body["totals"]["amount_fen"] == 164000
    # and nothing strays onto the real day the test runs on
    real_day = live.http.get("/api/v1/ledger/daily", headers=_finance_again(live),
                             params={"date": date.today().isoformat()}).json()
    assert real_day["rows"] == []


def _finance_again(live: Live) -> dict[str, str]:
    return staff_headers(live, "fin", "finance-pass")


def test_a_rehearsal_clock_moves_forward_only_through_the_sandbox(client) -> None:
    """The sandbox's clock control: the next morning arrives (yesterday's statements are
    published), the simulator's payments and our business dates follow; never backwards."""
    rt = client.app.state.runtime
    before = client.get("/sandbox/clock").json()
    assert before["movable"] is True
    moved = client.post("/sandbox/clock", json={"to": "2020-11-03T10:30:00+08:00"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["now"].startswith("2020-11-03T02:30:")
    assert str(rt.clock.today()) == "2020-11-03"
    back = client.post("/sandbox/clock", json={"to": "2020-11-02T10:30:00+08:00"})
    assert back.status_code == 409
    assert "only runs forward" in back.json()["error"]["message"]
    naive = client.post("/sandbox/clock", json={"to": "2020-11-04T10:30:00"})
    assert naive.status_code == 409 and "offset" in naive.json()["error"]["message"]


def test_a_real_time_clock_cannot_be_moved() -> None:
    import pytest

    from backend.clock import BusinessClock

    with pytest.raises(ValueError, match="real time"):
        BusinessClock(None).advance_to(datetime.fromisoformat("2030-01-01T00:00:00+08:00"))
