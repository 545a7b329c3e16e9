"""A day's statements fetched from the simulator through the service, reconciled, a
difference resolved by two finance users, and the day closed only then.

The business clock starts at 2020-11-02 09:00 (Beijing); the trades are paid then, and the
clock is moved to the next morning, when the channels publish the day's statements.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from backend.auth.models import StaffUser
from backend.db import unit_of_work
from backend.orders.models import Attempt, Order, Payment
from backend.security.tokens import Principal, issue_token
from tests.conftest import Live
from tests.orders.helpers import order, pay, ref, resident_headers, seed

DAY = date(2020, 11, 2)
FETCH = "/api/v1/reconciliation/{}/fetch"


def tokens(live: Live, *users: tuple[str, str]) -> dict[str, dict[str, str]]:
    """Bearer headers of new staff users (name, role), without password hashing."""
    out = {}
    with unit_of_work(live.rt.sessions) as s:
        for name, role in users:
            user = StaffUser(username=name, password_hash="-", role=role)
            s.add(user)
            s.flush()
            token = issue_token(live.rt.app_secret,
                                Principal(sub=f"staff:{user.id}", role=role), 600)
            out[name] = {"Authorization": f"Bearer {token}"}
    return out


def paid_orders(live: Live) -> dict[str, str]:
    """张三 (medical) and 李梅 (pension) pay by WeChat, 李梅 her medical by Alipay; the
    notification of 李梅's pension never arrives. (out_trade_no by name)"""
    people = seed(live.rt)
    h = resident_headers(live)
    trades = {}
    for key, name, channel, item in (
            ("zhang", "张三", "wechat_native", {"insurance": "medical"}),
            ("li", "李梅", "alipay_qr", {"insurance": "medical"}),
            ("unheard", "李梅", "wechat_native", {"insurance": "pension", "tier_yuan": 300})):
        r = order(live, h, channel, [{"resident_ref": ref(live, h, name, people[name]),
                                      **item}])
        assert r.status_code == 201, r.text
        trades[key] = r.json()["payment"]["out_trade_no"]
        pay(live, trades[key], deliver=key != "unheard")
    return trades


def move_clock(live: Live, iso: str) -> None:
    live.rt.clock.advance_to(datetime.fromisoformat(iso))


def test_fetch_reconcile_resolve_and_close(live: Live) -> None:
    trades = paid_orders(live)
    staff = tokens(live, ("fin1", "finance"), ("fin2", "finance"), ("aud", "auditor"))
    fin1, fin2 = staff["fin1"], staff["fin2"]
    body = {"date": DAY.isoformat()}

    move_clock(live, "2020-11-03T09:30:00+08:00")    # Alipay's is out, WeChat's is not
    early = live.http.post(FETCH.format("wechat"), headers=fin1, json=body)
    assert early.status_code == 409, early.text
    assert early.json()["error"]["code"] == "statement_not_ready"
    assert "10:00" in early.json()["error"]["message"]
    assert live.http.post(FETCH.format("wechat"), headers=staff["aud"],
                          json=body).status_code == 403
    other = live.http.post(FETCH.format("unionpay"), headers=fin1, json=body)
    assert other.status_code == 422 and other.json()["error"]["code"] == "validation_error"
    assert live.http.post(FETCH.format("wechat"), headers=fin1,
                          json={"date": "2020-11-02", "x": 1}).status_code == 422

    move_clock(live, "2020-11-03T10:30:00+08:00")
    runs: dict[str, dict[str, Any]] = {}
    for channel in ("alipay", "wechat"):
        r = live.http.post(FETCH.format(channel), headers=fin1, json=body)
        assert r.status_code == 201, r.text
        runs[channel] = run = r.json()
        assert (run["date"], run["channel"], run["statement"]["source"]) == (
            "2020-11-02", channel, "fetch")
        statement = run["totals"]["statement"]
        assert statement["fee_fen"] == statement["expected_fee_fen"] > 0
        again = live.http.post(FETCH.format(channel), headers=fin2, json=body)
        assert again.status_code == 200 and again.json() == run        # the same run
    alipay, wechat = runs["alipay"], runs["wechat"]
    assert (alipay["matched"], alipay["discrepancy_count"]) == (1, 0)
    assert alipay["totals"]["statement"]["payments"] == alipay["totals"]["ours"]["payments"] == 1
    # the WeChat trade the simulator took and we never heard of
    assert wechat["matched"] == 1 and wechat["totals"]["statement"]["payments"] == 2
    [missing] = wechat["discrepancies"]
    assert (missing["kind"], missing["status"], missing["out_trade_no"]) == (
        "missing_locally", "open", trades["unheard"])

    # the day cannot close while it is open
    close = f"/api/v1/ledger/days/{DAY}/close"
    refused = live.http.post(close, headers=fin1, json={})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "open_discrepancies"

    url = f"/api/v1/reconciliation/discrepancies/{missing['id']}"
    proposed = live.http.post(f"{url}/resolve", headers=fin1,
                              json={"side": "channel", "reason": "通知未到，渠道已收款"})
    assert proposed.status_code == 200 and proposed.json()["status"] == "proposed"
    assert live.http.post(f"{url}/approve", headers=fin1).status_code == 403   # the same user
    assert live.http.post(close, headers=fin1, json={}).status_code == 409  # proposed: open
    approved = live.http.post(f"{url}/approve", headers=fin2)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "resolved" and approved.json()["payment_id"]
    again = live.http.post(f"{url}/approve", headers=fin2)
    assert again.status_code == 409
    with unit_of_work(live.rt.sessions) as s:
        attempt = s.scalar(select(Attempt).where(col(Attempt.out_trade_no) == trades["unheard"]))
        assert attempt is not None and attempt.status == "paid"
        o = s.get(Order, attempt.order_id)
        assert o is not None and o.status == "paid"
        payments = s.execute(select(col(Payment.id), col(Payment.source)).where(
            col(Payment.attempt_id) == attempt.id)).all()
        assert [p[1] for p in payments] == ["statement"]                 # recovered once
        assert s.scalar(select(func.count()).select_from(Payment)) == 3

    closed = live.http.post(close, headers=fin1, json={"note": "对账完毕"})
    assert closed.status_code == 200, closed.text
    assert closed.json()["totals"]["count"] == 3


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=False)
def test_fetch_of_a_day_without_trades(live: Live) -> None:
    """WeChat has no bill of a day without any trade: not ready, with its reason."""
    staff = tokens(live, ("fin", "finance"))
    move_clock(live, "2020-11-03T10:30:00+08:00")
    r = live.http.post(FETCH.format("wechat"), headers=staff["fin"], json={"date": "2020-11-02"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "statement_not_ready"
    assert "no trade bill" in r.json()["error"]["message"]
