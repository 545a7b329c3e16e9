"""What a probe sends: NUL bytes, over-long fields in correctly signed notifications, a
transaction id that another trade already holds, and our own failures. Every one gets the
channel's failure answer (never a 500), changes nothing, and is kept for audit."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from backend.db import unit_of_work
from backend.notifications.models import InboxNotification
from backend.orders.models import Payment
from backend.orders.payment_flow import (
    ChannelConfirmation,
    TransactionConflict,
    confirm_channel_payment,
)
from backend.outbox.service import run_due
from payment_adapters.base import Channel
from payment_adapters.sandbox.core import PayOptions, SandboxState, sim_transaction_id
from tests.conftest import Live
from tests.notifications.conftest import CHANNELS
from tests.notifications.test_notify import is_success, state
from tests.orders.helpers import get_order, order, pay, ref, resident_headers, seed

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NUL_BODIES = {"wechat": (b'{"id":"a\x00b"}', {"Content-Type": "application/json"}),
              "alipay": (b"a=b\x00c", FORM), "unionpay": (b"a=b\x00c", FORM)}


def last_inbox(live: Live) -> InboxNotification:
    with unit_of_work(live.rt.sessions) as s:
        row = s.scalar(select(InboxNotification).order_by(InboxNotification.id.desc()))
    assert row is not None
    return row


@pytest.mark.parametrize("channel", list(CHANNELS))
def test_a_nul_byte_gets_the_failure_answer_and_is_kept(live: Live, channel: str) -> None:
    body, headers = NUL_BODIES[channel]
    resp = live.http.post(f"/api/v1/notify/{channel}", content=body, headers=headers)
    assert resp.status_code != 500 and not is_success(channel, resp), resp.text
    row = last_inbox(live)
    assert (row.channel, row.outcome, row.verified) == (channel, "rejected", False)
    assert "\\x00" in row.body and "\x00" not in row.body


def _signed(live: Live, channel: str, trade_no: str, changes: dict[str, str]) -> httpx.Response:
    """A notification the channel's own key signed, with fields no channel would send."""
    changes = dict(changes)
    ch = live.rt.channels
    trade = ch.sandbox_state.get(Channel(channel), trade_no)
    assert trade is not None
    ch.sandbox_state.mark_paid(trade, PayOptions(), "42000000000000000000000001")
    sim: Any = ch.simulators[Channel(channel)]
    if channel == "wechat":
        resource = sim.transaction(trade, as_paid=True)
        event_id = changes.pop("event_id", None)
        resource.update(changes)
        note = sim.build_event(trade.notify_url, "TRANSACTION.SUCCESS", "支付成功",
                               "transaction", resource, event_id=event_id)
    elif channel == "alipay":
        fields = sim._trade_fields(trade, "TRADE_SUCCESS")
        fields.update(changes)
        note = sim._note(trade.notify_url, fields, bad_signature=False)
    else:
        trade.out_trade_no = changes["out_trade_no"]
        note = sim.payment_notification(trade, PayOptions())
    return live.http.post(note.url.removeprefix(live.base_url), content=note.body,
                          headers=dict(note.headers))


OVERLONG = [
    ("wechat", {"out_trade_no": "W" * 65}),
    ("wechat", {"transaction_id": "4" * 65}),
    ("wechat", {"event_id": "E" * 129}),
    ("wechat", {"success_time": "9999-12-31T23:59:59-14:00"}),
    ("wechat", {"success_time": "1970-01-01T08:00:00+08:00"}),
    ("alipay", {"out_trade_no": "A" * 65}),
    ("alipay", {"trade_no": "2" * 65}),
    ("unionpay", {"out_trade_no": "3194" + "9" * 61}),
]


@pytest.mark.parametrize(("pending", "changes"), OVERLONG, indirect=["pending"])
def test_signed_fields_no_channel_sends_are_refused(live: Live, pending: dict[str, Any],
                                                    changes: dict[str, str]) -> None:
    channel = pending["channel"]
    resp = _signed(live, channel, pending["out_trade_no"], changes)
    assert resp.status_code != 500 and not is_success(channel, resp), resp.text
    assert state(live) == (0, ["unpaid"])
    row = last_inbox(live)
    assert row.outcome in ("malformed", "rejected"), (row.outcome, row.detail)
    assert row.outcome == "malformed" or channel == "unionpay", row.detail
    if row.out_trade_no:
        assert len(row.out_trade_no) <= 64


@pytest.mark.parametrize("pending", ["alipay"], indirect=True)
def test_our_own_failure_is_the_failure_answer_not_a_500(
        live: Live, pending: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.notifications.service as service

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("a defect of ours")

    monkeypatch.setattr(service, "_apply", broken)
    monkeypatch.setattr(service, "_apply_at_once", broken)   # PostgreSQL's one statement
    monkeypatch.setattr(service, "_apply_at_once_async", broken)
    note = pay(live, pending["out_trade_no"], deliver=False)["notifications"][0]
    resp = live.http.post(note["url"].removeprefix(live.base_url), content=note["body"],
                          headers=note["headers"])
    assert (resp.status_code, resp.text) == (200, "fail")
    assert last_inbox(live).outcome == "error"


def test_a_transaction_id_of_another_trade_is_an_anomaly_settled_by_query(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    """The simulator once reused transaction ids after a restart: the second payment was
    taken for a repeat of the first and silently dropped. It is an anomaly: refused (the
    channel retries), alerted, and the trade settled by asking the channel about it."""
    people = seed(live.rt)
    h = resident_headers(live)
    first = order(live, h, "wechat_native", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]).json()
    txn = pay(live, first["payment"]["out_trade_no"])["trade"]["transaction_id"]
    second = order(live, h, "wechat_native", [
        {"resident_ref": ref(live, h, "李梅", people["李梅"]), "insurance": "medical"}]).json()
    with caplog.at_level(logging.ERROR):
        answer = pay(live, second["payment"]["out_trade_no"], transaction_id=txn)
    assert answer["deliveries"][0]["status"] == 400
    assert get_order(live, h, second["order_no"])["status"] == "pending"
    assert last_inbox(live).outcome == "transaction_conflict"
    assert any("transaction_conflict" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.ERROR)
    # the worker asks WeChat about this out_trade_no, and that settles it
    while run_due(live.rt):
        pass
    assert get_order(live, h, second["order_no"])["status"] == "paid"
    with unit_of_work(live.rt.sessions) as s:
        payments = {p.attempt_id: p.shared_transaction for p in s.scalars(select(Payment))}
        outcomes = [r.outcome for r in s.scalars(select(InboxNotification))]
    assert sorted(payments.values()) == [False, True]
    assert "shared_transaction" in outcomes
    # WeChat's next retry of the refused notification is now a repeat: success
    again = pay(live, second["payment"]["out_trade_no"], transaction_id=txn)
    assert again["deliveries"][0]["status"] == 204


def test_a_conflict_on_a_closed_order_is_settled_too(live: Live) -> None:
    """An Alipay code stays payable after we closed its order: money arriving then under a
    transaction id another trade holds is queried and applied all the same."""
    people = seed(live.rt)
    h = resident_headers(live)
    first = order(live, h, "alipay_qr", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]).json()
    txn = pay(live, first["payment"]["out_trade_no"])["trade"]["transaction_id"]
    second = order(live, h, "alipay_qr", [
        {"resident_ref": ref(live, h, "李梅", people["李梅"]), "insurance": "medical"}]).json()
    closed = live.http.post(f"/api/v1/orders/{second['order_no']}/close", headers=h)
    assert closed.status_code == 200 and closed.json()["status"] == "closed", closed.text
    answer = pay(live, second["payment"]["out_trade_no"], transaction_id=txn)
    assert answer["deliveries"][0]["body"] == "fail"
    while run_due(live.rt):
        pass
    assert get_order(live, h, second["order_no"])["status"] == "paid"


@pytest.mark.parametrize("backend_name", ["postgres"], indirect=True)
@pytest.mark.parametrize("second_source", ["notification", "query"])
def test_two_trades_reported_under_one_transaction_id_at_once(live: Live,
                                                              second_source: str) -> None:
    """The guard reads only what is committed: two such payments at the same moment meet
    the database's unique index. A notification is then the anomaly (refused, the trade
    queried); what a query of the trade answers is applied all the same, marked shared."""
    people = seed(live.rt)
    h = resident_headers(live)
    nos = [order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, name, people[name]),
                                         "insurance": "medical"}]).json()["payment"][
               "out_trade_no"] for name in ("张三", "李梅")]
    at = live.rt.clock.now()
    first = live.rt.sessions()
    confirm_channel_payment(first, ChannelConfirmation("alipay", nos[0], "T-SAME", 28000, at,
                                                       "notification"))
    outcome: list[BaseException | str] = []

    def second() -> None:
        try:
            with unit_of_work(live.rt.sessions) as s:
                applied = confirm_channel_payment(s, ChannelConfirmation(
                    "alipay", nos[1], "T-SAME", 28000, at, second_source))
            outcome.append(f"{applied.outcome}, shared={applied.shared_transaction}")
        except BaseException as exc:  # noqa: BLE001  (what it raised is the point)
            outcome.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)                 # the second waits on the first's uncommitted index entry
    first.commit()
    first.close()
    thread.join(10)
    if second_source == "notification":
        assert len(outcome) == 1 and isinstance(outcome[0], TransactionConflict), outcome
    else:
        assert outcome == ["applied, shared=True"]
        with unit_of_work(live.rt.sessions) as s:
            assert sorted(p.shared_transaction for p in s.scalars(select(Payment))) == [
                False, True]


def test_another_transaction_id_for_a_paid_trade_is_not_a_repeat(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    body = order(live, h, "alipay_qr", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]).json()
    no = body["payment"]["out_trade_no"]
    at = live.rt.clock.now()
    with unit_of_work(live.rt.sessions) as s:
        confirm_channel_payment(s, ChannelConfirmation("alipay", no, "T-1", 28000, at,
                                                       "notification"))
    for source in ("notification", "query"):
        with pytest.raises(TransactionConflict):
            with unit_of_work(live.rt.sessions) as s:
                confirm_channel_payment(s, ChannelConfirmation("alipay", no, "T-2", 28000, at,
                                                               source))
    with unit_of_work(live.rt.sessions) as s:
        repeat = confirm_channel_payment(s, ChannelConfirmation("alipay", no, "T-1", 28000, at,
                                                                "query"))
    assert repeat.outcome == "repeat"


def test_the_simulators_ids_are_unique_across_restarts() -> None:
    before = SandboxState()
    first = [before.next_seq() for _ in range(200)]
    time.sleep(0.01)                       # a restart takes far longer than this
    after = SandboxState()                 # the counter starts again, in a new process
    second = [after.next_seq() for _ in range(200)]
    assert first == sorted(set(first)) and second == sorted(set(second))
    assert max(first) < min(second)
    now = before.now()
    for channel in Channel:
        ids = {sim_transaction_id(channel, n, now) for n in first + second}
        assert len(ids) == 400
