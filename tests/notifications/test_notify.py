"""Every channel's notifications, through HTTP, on SQLite and PostgreSQL.

Genuine → paid; the same one 50 times concurrently → paid once; anything that must change
nothing (tampered, wrong key, stale, probe, unknown order, wrong amount, wrong app or
merchant) → the channel's failure answer, nothing changed, a row kept for audit.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from backend.db import unit_of_work
from backend.notifications.models import InboxNotification
from backend.orders.models import Attempt, BillLine, Payment
from payment_adapters.base import Channel
from payment_adapters.sandbox.core import PayOptions, SimTrade
from tests.conftest import Live
from tests.notifications.conftest import CHANNELS
from tests.orders.helpers import get_order, pay

SUCCESS = {"wechat": (204, b""), "alipay": (200, b"success"), "unionpay": (200, b"SUCCESS")}


def is_success(channel: str, resp: httpx.Response) -> bool:
    if channel == "wechat":
        return resp.status_code in (200, 204)
    return resp.status_code == 200 and resp.content.strip() == SUCCESS[channel][1]


def notification(live: Live, out_trade_no: str, **kw: Any) -> dict[str, Any]:
    """Have the simulator's channel pay the trade and hand us the notification unsent."""
    note = pay(live, out_trade_no, deliver=False, **kw)["notifications"][0]
    return dict(note)


def post(live: Live, note: dict[str, Any], body: bytes | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    path = note["url"].removeprefix(live.base_url)
    return live.http.post(path, content=body if body is not None else note["body"].encode(),
                          headers=headers or note["headers"])


def state(live: Live) -> tuple[int, list[str]]:
    with unit_of_work(live.rt.sessions) as s:
        payments = s.scalar(select(func.count()).select_from(Payment)) or 0
        lines = list(s.scalars(select(BillLine.status)))
    return payments, lines


def inbox(live: Live) -> list[tuple[bool, str]]:
    with unit_of_work(live.rt.sessions) as s:
        return [(r.verified, r.outcome) for r in s.scalars(
            select(InboxNotification).order_by(InboxNotification.id))]


ALL = pytest.mark.parametrize("pending", list(CHANNELS), indirect=True)


@ALL
def test_genuine_notification_pays(live: Live, pending: dict[str, Any]) -> None:
    note = notification(live, pending["out_trade_no"])
    resp = post(live, note)
    assert is_success(pending["channel"], resp), resp.text
    o = get_order(live, pending["headers"], pending["order"]["order_no"])
    assert o["status"] == "paid" and o["channel_transaction_id"]
    assert state(live) == (1, ["paid"])
    assert inbox(live) == [(True, "applied")]


@ALL
def test_the_same_notification_50_times_concurrently_pays_once(live: Live,
                                                               pending: dict[str, Any]) -> None:
    note = notification(live, pending["out_trade_no"])
    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(live, note), range(50)))
    assert all(is_success(pending["channel"], a) for a in answers), [
        (a.status_code, a.text) for a in answers if not is_success(pending["channel"], a)]
    assert state(live) == (1, ["paid"])
    assert inbox(live) == [(True, "applied")]


def _unchanged(live: Live, pending: dict[str, Any], resp: httpx.Response, outcome: str) -> None:
    assert not is_success(pending["channel"], resp), resp.text
    assert state(live) == (0, ["unpaid"])
    assert get_order(live, pending["headers"], pending["order"]["order_no"])["status"] == "pending"
    assert inbox(live)[-1] == (outcome != "rejected", outcome)


@ALL
def test_tampered_body_changes_nothing(live: Live, pending: dict[str, Any]) -> None:
    note = notification(live, pending["out_trade_no"])
    body = note["body"]
    tampered = body.replace("0", "1", 1) if pending["channel"] != "wechat" else \
        body.replace('"summary"', '"Summary"', 1)
    assert tampered != body
    _unchanged(live, pending, post(live, note, tampered.encode()), "rejected")


@ALL
def test_wrong_key_changes_nothing(live: Live, pending: dict[str, Any]) -> None:
    note = notification(live, pending["out_trade_no"], bad_signature=True)
    _unchanged(live, pending, post(live, note), "rejected")


@ALL
def test_wrong_amount_changes_nothing(live: Live, pending: dict[str, Any]) -> None:
    note = notification(live, pending["out_trade_no"], amount_fen=100)
    _unchanged(live, pending, post(live, note), "amount_mismatch")


@ALL
def test_unknown_order_changes_nothing(live: Live, pending: dict[str, Any]) -> None:
    channel = Channel(pending["channel"])
    sim = live.rt.channels.simulators[channel]
    trade = live.rt.channels.sandbox_state.put(SimTrade(
        channel=channel, out_trade_no=live.rt.channels.clients[channel].new_out_trade_no(
            "20201102NOSUCHORDER01"), amount_fen=28000,
        notify_url=live.rt.channels.notify_url(channel), kind="qr"))
    live.rt.channels.sandbox_state.mark_paid(trade, PayOptions(), "4200000000202011020000000099")
    out = sim.payment_notification(trade, PayOptions())
    resp = live.http.post(out.url.removeprefix(live.base_url), content=out.body,
                          headers=dict(out.headers))
    _unchanged(live, pending, resp, "unknown_order")


@ALL
def test_wrong_app_or_merchant_changes_nothing(live: Live, pending: dict[str, Any]) -> None:
    channel = Channel(pending["channel"])
    ch = live.rt.channels
    sim = ch.simulators[channel]
    trade = ch.sandbox_state.get(channel, pending["out_trade_no"])
    assert trade is not None
    ch.sandbox_state.mark_paid(trade, PayOptions(), "4200000000202011020000000098")
    if channel is Channel.WECHAT:
        other = type(sim)(ch.sandbox_state, dataclasses.replace(ch.wechat_config,
                                                               mchid="1999999999"),
                          ch.sandbox_wechat_private_key)
    elif channel is Channel.ALIPAY:
        other = type(sim)(ch.sandbox_state, dataclasses.replace(ch.alipay_config,
                                                               seller_id="2088999999999999"),
                          ch.sandbox_alipay_private_key)
    else:
        other = type(sim)(ch.sandbox_state, dataclasses.replace(ch.unionpay_config,
                                                               mid="898999999999999"))
    out = other.payment_notification(trade, PayOptions())
    resp = live.http.post(out.url.removeprefix(live.base_url), content=out.body,
                          headers=dict(out.headers))
    _unchanged(live, pending, resp, "rejected")


@pytest.mark.parametrize("pending", ["wechat"], indirect=True)
def test_wechat_stale_timestamp_and_probe_change_nothing(live: Live,
                                                          pending: dict[str, Any]) -> None:
    import time

    ch = live.rt.channels
    sim: Any = ch.simulators[Channel.WECHAT]
    trade = ch.sandbox_state.get(Channel.WECHAT, pending["out_trade_no"])
    ch.sandbox_state.mark_paid(trade, PayOptions(), "4200000000202011020000000097")  # type: ignore[arg-type]
    stale = sim.build_notification(trade, PayOptions(), timestamp=int(time.time()) - 301)
    resp = live.http.post(stale.url.removeprefix(live.base_url), content=stale.body,
                          headers=dict(stale.headers))
    _unchanged(live, pending, resp, "rejected")
    probe = sim.payment_notification(trade, PayOptions(event="SIGNTEST"))
    assert probe.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    resp = live.http.post(probe.url.removeprefix(live.base_url), content=probe.body,
                          headers=dict(probe.headers))
    _unchanged(live, pending, resp, "rejected")


@pytest.mark.parametrize("pending", ["wechat"], indirect=True)
def test_wechat_before_the_order_commit_is_seen_then_retry(live: Live,
                                                           pending: dict[str, Any]) -> None:
    """WeChat may call before our order's commit is visible: fail, then succeed on retry."""
    note = notification(live, pending["out_trade_no"])
    with unit_of_work(live.rt.sessions) as s:   # hide the attempt, as if not yet committed
        attempt = s.scalar(select(Attempt).where(Attempt.out_trade_no == pending["out_trade_no"]))
        real_no = attempt.out_trade_no  # type: ignore[union-attr]
        attempt.out_trade_no = "hidden-" + real_no  # type: ignore[union-attr]
    first = post(live, note)
    assert not is_success("wechat", first)
    with unit_of_work(live.rt.sessions) as s:
        attempt = s.scalar(select(Attempt).where(Attempt.out_trade_no == "hidden-" + real_no))
        attempt.out_trade_no = real_no  # type: ignore[union-attr]
    retry = post(live, note)
    assert is_success("wechat", retry), retry.text
    assert state(live) == (1, ["paid"])
    assert [o for _, o in inbox(live)] == ["unknown_order", "applied"]


@pytest.mark.parametrize("pending", ["alipay"], indirect=True)
def test_alipay_finished_is_not_a_new_payment(live: Live,
                                                         pending: dict[str, Any]) -> None:
    success = notification(live, pending["out_trade_no"])
    sim = live.rt.channels.simulators[Channel.ALIPAY]
    trade = live.rt.channels.sandbox_state.get(Channel.ALIPAY, pending["out_trade_no"])
    finished = sim.payment_notification(trade, PayOptions(event="TRADE_FINISHED"))  # type: ignore[arg-type]
    # out of order: the later status first (it alone proves the money: applied), then the
    # success, then the later status again — one payment all the same
    for out in (finished, None, finished):
        if out is None:
            resp = post(live, success)
        else:
            resp = live.http.post(out.url.removeprefix(live.base_url), content=out.body,
                                  headers=dict(out.headers))
        assert is_success("alipay", resp), resp.text
    assert state(live) == (1, ["paid"])
    assert get_order(live, pending["headers"], pending["order"]["order_no"])["status"] == "paid"
