"""ChinaUMS and Alipay as the channels really behave, through the whole service: answers
that leave the outcome unknown, refunds read back by the refund query, and a precreated
Alipay code that stays payable after we closed its order."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from backend.channels import Channels
from backend.config import ConfigError, Settings
from backend.db import unit_of_work
from backend.orders.models import Attempt, BillLine, Refund
from backend.refunds.service import RefundNotDone, execute_refund
from payment_adapters.base import Channel, OutcomeUnknown
from payment_adapters.sandbox.alipay import AlipaySimulator
from payment_adapters.sandbox.unionpay import UnionpaySimulator
from tests.conftest import Live
from tests.orders.helpers import (
    get_order,
    order,
    pay,
    ref,
    resident_headers,
    seed,
    two_orders_for_one_item,
)

LIVE_KEYS = {"wechat_mchid": "1900000109", "alipay_appid": "2021000117600001",
             "unionpay_mid": "898340149000005", "unionpay_tid": "88880001",
             "unionpay_msg_src_id": "3194", "unionpay_key": "k" * 32}


@pytest.fixture
def people(live: Live) -> dict[str, str]:
    return seed(live.rt)


def _faults(live: Live, channel: str, **switches: object) -> None:
    r = live.http.post("/sandbox/faults", json={"channel": channel, **switches})
    assert r.status_code == 200, r.text


def _unionpay_sim(live: Live) -> UnionpaySimulator:
    sim = live.rt.channels.simulators[Channel.UNIONPAY]
    assert isinstance(sim, UnionpaySimulator)
    return sim


def _alipay_sim(live: Live) -> AlipaySimulator:
    sim = live.rt.channels.simulators[Channel.ALIPAY]
    assert isinstance(sim, AlipaySimulator)
    return sim


def _duplicate_refund(live: Live, people: dict[str, str], channel: str) -> tuple[int, str]:
    """张三's medical paid by WeChat and again by ``channel``: the second is queued for
    refund. (The refund id, the second trade's number.)"""
    _, first, _, second = two_orders_for_one_item(live, people, "wechat_native", channel)
    for o in (first, second):
        pay(live, o["payment"]["out_trade_no"])
    with unit_of_work(live.rt.sessions) as s:
        refund = s.scalar(select(Refund))
        assert refund is not None and refund.status == "queued" and refund.id is not None
        return refund.id, second["payment"]["out_trade_no"]


def _refund_status(live: Live, refund_id: int) -> str:
    with unit_of_work(live.rt.sessions) as s:
        refund = s.get(Refund, refund_id)
        assert refund is not None
        return refund.status


# --------------------------------------------------------------------------- settings
def test_live_mode_needs_the_merchants_own_msg_src(tmp_path: Path) -> None:
    for settings in (Settings(**LIVE_KEYS), Settings(**LIVE_KEYS, payment_sandbox=False)):
        assert settings.sandbox is False
        with pytest.raises(ConfigError, match="UNIONPAY_MSG_SRC"):
            settings.check_live_mode()
    live = Settings(**LIVE_KEYS, unionpay_msg_src="WWW.DISTRICT.COM")
    assert live.sandbox is False
    assert not any("UNIONPAY" in problem for problem in live.live_mode_problems())
    assert Channels(live).unionpay_config.msg_src == "WWW.DISTRICT.COM"
    # the public test set's msgSrc is the simulator's only
    sandbox = Settings(payment_sandbox=True, data_dir=tmp_path)
    assert Channels(sandbox).unionpay_config.msg_src == "WWW.TEST.COM"


def test_the_service_refuses_to_start_live_without_msg_src(tmp_path: Path) -> None:
    from backend.app import create_app
    from backend.runtime import Runtime

    with pytest.raises(ConfigError, match="UNIONPAY_MSG_SRC"):
        create_app(runtime=Runtime(Settings(**LIVE_KEYS, data_dir=tmp_path,
                                            database_url=f"sqlite:///{tmp_path / 'x.db'}")))


# --------------------------------------------------------------------------- ChinaUMS
def test_unionpay_bill_numbers_fit_27_characters(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    body = order(live, h, "unionpay_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                           "insurance": "medical"}])
    assert body.status_code == 201, body.text
    bill_no = body.json()["payment"]["out_trade_no"]
    assert bill_no.startswith("3194") and len(bill_no) <= 27


def test_system_busy_on_create_leaves_the_order_pending_until_a_query_settles_it(
        live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    # ChinaUMS made the bill but answered SYSTEM_BUSY
    _faults(live, "unionpay", answer_error="SYSTEM_BUSY", error_after_effect=True)
    r = order(live, h, "unionpay_qr", items)
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "channel_timeout" and err["order_no"]
    with unit_of_work(live.rt.sessions) as s:
        attempt = s.scalar(select(Attempt))
        assert attempt is not None and attempt.status == "unknown"
        bill_no = attempt.out_trade_no
    assert get_order(live, h, err["order_no"])["status"] == "pending"
    _faults(live, "unionpay", answer_error="")
    pay(live, bill_no, deliver=False)          # paid, and the notification never came
    synced = live.http.post(f"/api/v1/orders/{err['order_no']}/sync", headers=h)
    assert synced.status_code == 200, synced.text
    assert synced.json()["status"] == "paid"


def test_a_unionpay_refund_whose_answer_was_lost_is_completed_by_the_query(
        live: Live, people: dict[str, str]) -> None:
    refund_id, bill_no = _duplicate_refund(live, people, "unionpay_qr")
    sim = _unionpay_sim(live)
    # ChinaUMS refunds, then its answer is TIMEOUT: the outcome is unknown to us
    _faults(live, "unionpay", answer_error="TIMEOUT", error_after_effect=True)
    with pytest.raises(OutcomeUnknown):
        execute_refund(live.rt, refund_id)
    assert _refund_status(live, refund_id) == "processing"
    _faults(live, "unionpay", answer_error="")
    assert execute_refund(live.rt, refund_id) == "succeeded"
    assert sim.calls["bills.refund"] == 1       # asked with bills.query, never sent again
    trade = live.http.get(f"/sandbox/trades/{bill_no}").json()
    assert trade["refunded_fen"] == 28000


def test_a_unionpay_refund_that_never_arrived_is_sent_again_after_the_query(
        live: Live, people: dict[str, str]) -> None:
    refund_id, bill_no = _duplicate_refund(live, people, "unionpay_qr")
    sim = _unionpay_sim(live)
    _faults(live, "unionpay", answer_error="SYSTEM_BUSY")      # nothing done
    with pytest.raises(OutcomeUnknown):
        execute_refund(live.rt, refund_id)
    _faults(live, "unionpay", answer_error="")
    assert execute_refund(live.rt, refund_id) == "succeeded"
    assert sim.calls["bills.refund"] == 2
    assert live.http.get(f"/sandbox/trades/{bill_no}").json()["refunded_fen"] == 28000


# --------------------------------------------------------------------------- Alipay
def test_an_alipay_refund_without_refund_success_is_not_recorded(
        live: Live, people: dict[str, str]) -> None:
    refund_id, out_trade_no = _duplicate_refund(live, people, "alipay_qr")
    sim = _alipay_sim(live)
    sim.refunds_pending = True       # Alipay takes the refund and has not done it yet
    with pytest.raises(RefundNotDone):
        execute_refund(live.rt, refund_id)
    assert _refund_status(live, refund_id) == "processing"
    assert live.http.get(f"/sandbox/trades/{out_trade_no}").json()["refunded_fen"] == 0
    sim.finish_refunds()
    assert execute_refund(live.rt, refund_id) == "succeeded"
    assert sim.calls["alipay.trade.refund"] == 1
    assert live.http.get(f"/sandbox/trades/{out_trade_no}").json()["refunded_fen"] == 28000


def _close_unscanned_alipay_order(live: Live, h: dict[str, str],
                                  people: dict[str, str]) -> dict[str, object]:
    body = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                         "insurance": "medical"}]).json()
    closed = live.http.post(f"/api/v1/orders/{body['order_no']}/close", headers=h)
    # Alipay has no trade before the scan (close: ACQ.TRADE_NOT_EXIST): closed on our side
    assert closed.status_code == 200 and closed.json()["status"] == "closed", closed.text
    out_trade_no = str(body["payment"]["out_trade_no"])  # type: ignore[index]
    assert live.http.get(f"/sandbox/trades/{out_trade_no}").json()["state"] == "pending"
    return dict(body)


def test_money_for_a_closed_alipay_order_is_applied(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    body = _close_unscanned_alipay_order(live, h, people)
    # the resident still had the code open, and pays it
    pay(live, body["payment"]["out_trade_no"])  # type: ignore[index]
    assert get_order(live, h, str(body["order_no"]))["status"] == "paid"
    with unit_of_work(live.rt.sessions) as s:
        line = s.scalar(select(BillLine).where(BillLine.insurance == "medical"))
        assert line is not None and line.status == "paid"
        assert s.scalar(select(Refund)) is None


def test_money_for_a_closed_alipay_order_whose_item_was_paid_meanwhile_is_refunded(
        live: Live, people: dict[str, str]) -> None:
    from backend.outbox.service import run_due

    h = resident_headers(live)
    body = _close_unscanned_alipay_order(live, h, people)
    again = order(live, h, "wechat_native", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                              "insurance": "medical"}]).json()
    pay(live, again["payment"]["out_trade_no"])
    late = str(body["payment"]["out_trade_no"])  # type: ignore[index]
    pay(live, late)
    with unit_of_work(live.rt.sessions) as s:
        refund = s.scalar(select(Refund))
        assert refund is not None and refund.amount_fen == 28000
    assert run_due(live.rt) >= 1
    assert _refund_status(live, refund.id) == "succeeded"  # type: ignore[arg-type]
    assert live.http.get(f"/sandbox/trades/{late}").json()["refunded_fen"] == 28000
