"""Defects a review found, each pinned by a test."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.config import Settings
from backend.db import unit_of_work
from backend.notifications.models import InboxNotification
from backend.orders.models import Attempt
from tests.conftest import HANG_S, Live
from tests.orders.helpers import get_order, order, pay, ref, resident_headers, seed, staff_headers


@pytest.fixture
def people(live: Live) -> dict[str, str]:
    people = seed(live.rt)
    from backend.auth.service import create_staff_user

    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="aud", password="auditor-pass", role="auditor")
    return people


def test_half_configured_live_channels_refuse_to_start() -> None:
    with pytest.raises(ValueError, match="PAYMENT_SANDBOX"):
        _ = Settings(wechat_mchid="1900000109").sandbox
    assert Settings().sandbox is True
    assert Settings(wechat_mchid="1", alipay_appid="2", unionpay_mid="3", unionpay_tid="4",
                    unionpay_msg_src="5", unionpay_msg_src_id="6", unionpay_key="7",
                    wechat_platform_certs_dir="/etc/wechatpay/certs").sandbox is False
    assert Settings(wechat_mchid="1", payment_sandbox=True).sandbox is True


def test_close_when_the_channel_answers_garbage_is_a_clear_504(live: Live,
                                                               people: dict[str, str]) -> None:
    """Garbage may come from anything between us and the channel after the request reached
    it: how the close ended is unknown, so the order stays pending and the caller retries."""
    h = resident_headers(live)
    body = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                         "insurance": "medical"}]).json()
    live.http.post("/sandbox/faults", json={"channel": "alipay", "garbage": True})
    r = live.http.post(f"/api/v1/orders/{body['order_no']}/close", headers=h)
    assert r.status_code == 504 and r.json()["error"]["code"] == "channel_timeout"
    assert "channel_garbage" in r.json()["error"]["message"]
    assert get_order(live, h, body["order_no"])["status"] == "pending"


def test_a_query_reporting_another_amount_is_an_anomaly_not_a_500(live: Live,
                                                                 people: dict[str, str]) -> None:
    h = resident_headers(live)
    body = order(live, h, "unionpay_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                           "insurance": "medical"}]).json()
    pay(live, body["payment"]["out_trade_no"], amount_fen=100, deliver=False)
    r = live.http.post(f"/api/v1/orders/{body['order_no']}/sync", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "pending"
    with unit_of_work(live.rt.sessions) as s:
        attempt = s.scalar(select(Attempt))
        assert attempt is not None and attempt.status == "anomaly"
        row = s.scalar(select(InboxNotification))
        assert row is not None and row.outcome == "amount_mismatch"
        assert "100" in (row.detail or "")
    closed = live.http.post(f"/api/v1/orders/{body['order_no']}/close", headers=h)
    assert closed.status_code == 200 and closed.json()["status"] == "closed"


def test_auditors_change_nothing(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    body = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                         "insurance": "medical"}]).json()
    aud = staff_headers(live, "aud", "auditor-pass")
    assert live.http.get(f"/api/v1/orders/{body['order_no']}", headers=aud).status_code == 200
    r = live.http.post(f"/api/v1/orders/{body['order_no']}/close", headers=aud)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = order(live, aud, "alipay_qr", [{"resident_ref": ref(live, aud, "李梅", people["李梅"]),
                                        "insurance": "medical"}])
    assert r.status_code == 403


def test_retrying_a_timed_out_order_with_its_key_finds_the_same_order(
        live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    live.http.post("/sandbox/faults", json={"channel": "alipay", "timeout": True, "hang_s": HANG_S})
    first = order(live, h, "alipay_qr", items, key="retry-me")
    live.http.post("/sandbox/faults", json={"channel": "alipay", "timeout": False})
    again = order(live, h, "alipay_qr", items, key="retry-me")
    assert first.status_code == again.status_code == 504
    assert first.json() == again.json() and first.json()["error"]["order_no"]


def test_chunked_body_over_the_limit_is_refused(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b" " * 65536

    r = live.http.post("/api/v1/residents/lookup", headers=h | {
        "content-type": "application/json"}, content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = live.http.post("/api/v1/residents/lookup", headers=h | {
        "content-type": "application/json"}, content=b'{"name":')
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]


def test_paying_one_wallet_closes_the_other_trade(live: Live, people: dict[str, str]) -> None:
    from backend.outbox.service import run_due

    h = resident_headers(live)
    body = order(live, h, "aggregate_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                            "insurance": "medical"}]).json()
    landing = body["payment"]["qr_content"].removeprefix(live.base_url)
    for ua in ("MicroMessenger/8.0", "AlipayClient/10.6"):
        assert live.http.get(landing, headers={"User-Agent": ua},
                             follow_redirects=False).status_code == 302
    with unit_of_work(live.rt.sessions) as s:
        trades = {a.channel: a.out_trade_no for a in s.scalars(select(Attempt))}
    pay(live, trades["wechat"])
    assert run_due(live.rt) == 1
    # Alipay had no trade yet (the code was opened, not scanned): its close answered
    # ACQ.TRADE_NOT_EXIST and the code stays payable there; our attempt is closed, and any
    # money that still comes for it is refunded.
    alipay = live.http.get(f"/sandbox/trades/{trades['alipay']}").json()
    assert alipay["state"] == "pending"
    with unit_of_work(live.rt.sessions) as s:
        states = {a.channel: a.status for a in s.scalars(select(Attempt))}
    assert states == {"wechat": "paid", "alipay": "closed"}
