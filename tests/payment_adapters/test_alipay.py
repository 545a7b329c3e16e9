"""Alipay: client ↔ simulator over loopback HTTP, and the notification verifier."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest
from alipay import AliPay
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from payment_adapters.alipay import AlipayClient, AlipayNotificationVerifier
from payment_adapters.alipay.client import fen_to_yuan, yuan_to_fen
from payment_adapters.base import (
    AlipayConfig,
    Channel,
    ChannelError,
    ChannelTimeout,
    CreateRequest,
    OutcomeUnknown,
    RefundRequest,
    VerificationFailed,
)
from payment_adapters.sandbox.alipay import AlipaySimulator
from payment_adapters.sandbox.control import control_router
from payment_adapters.sandbox.core import PayOptions, SandboxState, SimTrade
from tests.payment_adapters.conftest import ServedApp, rsa_pem_pair

APPID = "2021000000000001"
SELLER = "2088000000000001"
BEIJING = ZoneInfo("Asia/Shanghai")
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
NOW = datetime.now(UTC)


def make_config(gateway: str = "https://openapi.alipay.com/gateway.do", *,
                timeout_s: float = 5.0) -> AlipayConfig:
    app_private, _ = rsa_pem_pair("alipay-app")
    _, alipay_public = rsa_pem_pair("alipay-platform")
    return AlipayConfig(appid=APPID, app_private_key_pem=app_private,
                        alipay_public_key_pem=alipay_public, seller_id=SELLER,
                        gateway=gateway, timeout_s=timeout_s)


def alipay_sign(fields: dict[str, str], *, key_name: str = "alipay-platform",
                charset: str = "utf-8") -> str:
    """Sign a notification as Alipay does (independently of the code under test)."""
    content = "&".join(f"{k}={v}" for k, v in sorted(fields.items())
                       if k not in ("sign", "sign_type") and v != "")
    key = serialization.load_pem_private_key(rsa_pem_pair(key_name)[0].encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = key.sign(content.encode(charset), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


class Env:
    def __init__(self, serve: Callable[[FastAPI], ServedApp],
                 clock: Callable[[], datetime] | None = None) -> None:
        self.state = SandboxState(clock) if clock else SandboxState()
        self.sim = AlipaySimulator(self.state, make_config(), rsa_pem_pair("alipay-platform")[0])
        self.received: list[tuple[dict[str, str], bytes]] = []
        app = FastAPI()
        app.include_router(control_router(self.state, [self.sim]))

        @app.post("/notify/alipay")
        async def notify(request: Request) -> PlainTextResponse:
            self.received.append((dict(request.headers), await request.body()))
            return PlainTextResponse("success")

        self.served = serve(app)
        self.base = self.served.base_url
        self.config = make_config(f"{self.base}/sandbox/alipay/gateway.do")
        self.client = AlipayClient(self.config)
        self.verifier = AlipayNotificationVerifier(self.config)

    def create(self, no: str, amount_fen: int = 38000, minutes: int = 30) -> Any:
        return self.client.create(CreateRequest(
            out_trade_no=no, amount_fen=amount_fen,
            description="2027年度城乡居民医保+养老保险", kind="qr",
            expires_at=datetime.now(UTC) + timedelta(minutes=minutes),
            notify_url=f"{self.base}/notify/alipay"))

    def pay(self, no: str, **extra: Any) -> dict[str, Any]:
        resp = httpx.post(f"{self.base}/sandbox/pay",
                          json={"out_trade_no": no, "times": 1, **extra}, timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def faults(self, **switches: Any) -> None:
        resp = httpx.post(f"{self.base}/sandbox/faults",
                          json={"channel": "alipay", **switches}, timeout=10)
        assert resp.status_code == 200, resp.text

    def scan(self, no: str) -> httpx.Response:
        """The resident scans the code (and has not paid yet): the trade now exists."""
        return httpx.post(f"{self.base}/sandbox/alipay/scan", json={"out_trade_no": no},
                          timeout=10)


@pytest.fixture
def env(serve: Callable[[FastAPI], ServedApp]) -> Env:
    return Env(serve)


def paid_trade(env: Env, no: str, amount_fen: int = 38000) -> SimTrade:
    env.create(no, amount_fen)
    env.pay(no)
    trade = env.state.get(Channel.ALIPAY, no)
    assert trade is not None
    return trade


# --------------------------------------------------------------------------- money, numbers
def test_money_conversion_is_exact_and_strict() -> None:
    assert fen_to_yuan(1) == "0.01"
    assert fen_to_yuan(38000) == "380.00"
    assert fen_to_yuan(980) == "9.80"
    assert fen_to_yuan(10_000_000_000) == "100000000.00"
    assert yuan_to_fen("0.10") == 10
    assert yuan_to_fen("380.00") == 38000
    for bad in ("1.5", "1.500", "-1.00", "1e2", "01.00", " 1.00", "１.00"):
        with pytest.raises(ValueError):
            yuan_to_fen(bad)


def test_new_out_trade_no_is_alipay_shaped_and_fresh() -> None:
    client = AlipayClient(make_config())
    first, second = client.new_out_trade_no("SB2027000123"), client.new_out_trade_no("SB2027000123")
    assert first != second
    for no in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9_]{1,64}", no)
        assert no.startswith("SB2027000123_")
    with pytest.raises(ValueError):
        client.new_out_trade_no("bad-base")


# --------------------------------------------------------------------------- client ↔ simulator
def test_create_returns_qr_and_records_the_trade(env: Env) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=30)
    result = env.client.create(CreateRequest(
        out_trade_no="SB1_create", amount_fen=38000, description="医保/养老=两险&缴费",
        expires_at=expires, notify_url=f"{env.base}/notify/alipay", kind="qr"))
    assert result.out_trade_no == "SB1_create"
    assert result.qr_content is not None
    assert re.fullmatch(r"https://qr\.alipay\.com/bax0[0-9a-f]{21}", result.qr_content)
    trade = env.state.get(Channel.ALIPAY, "SB1_create")
    assert trade is not None
    assert (trade.amount_fen, trade.kind, trade.state) == (38000, "qr", "pending")
    assert trade.notify_url == f"{env.base}/notify/alipay"
    assert trade.description == "医保 养老 两险 缴费"      # / = & are not allowed in subject
    assert trade.expires_at == expires                 # time_expire went out in Beijing time
    # Same number, same amount: Alipay hands out the same QR again.
    again = env.create("SB1_create")
    assert again.qr_content == result.qr_content


def test_create_refuses_bad_input_before_calling() -> None:
    client = AlipayClient(make_config("http://127.0.0.1:9/never"))
    req = CreateRequest(out_trade_no="SB1", amount_fen=100, description="x", kind="qr",
                        expires_at=datetime.now(UTC) - timedelta(seconds=1), notify_url="u")
    with pytest.raises(ValueError):
        client.create(req)
    with pytest.raises(ValueError):
        client.create(dataclasses.replace(req, expires_at=NOW + timedelta(hours=1),
                                          out_trade_no="has-dash"))
    with pytest.raises(ValueError):
        client.create(dataclasses.replace(req, expires_at=NOW + timedelta(hours=1), kind="jsapi"))


def test_create_with_changed_amount_is_refused(env: Env) -> None:
    env.create("SB1_amount", 38000)
    with pytest.raises(ChannelError) as err:
        env.create("SB1_amount", 28000)
    assert err.value.code == "ACQ.CONTEXT_INCONSISTENT"


def test_query_pending_then_pay_then_paid(env: Env) -> None:
    env.create("SB1_pay", 38000)
    assert env.scan("SB1_pay").status_code == 200
    pending = env.client.query("SB1_pay")
    assert (pending.state, pending.amount_fen, pending.paid_at) == ("pending", 38000, None)

    out = env.pay("SB1_pay")
    assert out["deliveries"] == [{"status": 200, "body": "success"}]
    assert len(env.received) == 1
    headers, body = env.received[0]
    assert headers["content-type"] == "application/x-www-form-urlencoded; charset=utf-8"

    paid = env.client.query("SB1_pay")
    trade = env.state.get(Channel.ALIPAY, "SB1_pay")
    assert trade is not None and trade.paid_at is not None
    assert paid.state == "paid"
    assert paid.amount_fen == 38000
    assert paid.transaction_id == trade.transaction_id
    assert re.fullmatch(r"\d{28}", paid.transaction_id or "")
    assert paid.paid_at == trade.paid_at                 # Beijing wall time, parsed aware
    assert paid.paid_at is not None and paid.paid_at.utcoffset() == timedelta(hours=8)

    note = env.verifier.verify(headers, body, datetime.now(UTC))
    assert (note.kind, note.succeeded, note.trade_state) == ("payment", True, "TRADE_SUCCESS")
    assert (note.out_trade_no, note.amount_fen) == ("SB1_pay", 38000)
    assert note.transaction_id == trade.transaction_id
    assert note.paid_at == trade.paid_at


def test_close_pending_and_close_errors(env: Env) -> None:
    env.create("SB1_close")
    env.scan("SB1_close")
    env.client.close("SB1_close")
    assert env.client.query("SB1_close").state == "closed"
    # a closed trade can not be paid
    assert httpx.post(f"{env.base}/sandbox/pay", json={"out_trade_no": "SB1_close"},
                      timeout=10).status_code == 409
    with pytest.raises(ChannelError) as again:
        env.client.close("SB1_close")
    assert again.value.code == "ACQ.TRADE_STATUS_ERROR"
    # "No such trade" on close is not success: the resident may be scanning right now.
    with pytest.raises(ChannelError) as missing:
        env.client.close("SB1_never_created")
    assert missing.value.code == "ACQ.TRADE_NOT_EXIST"
    assert "ACQ.TRADE_NOT_EXIST" in str(missing.value)


def test_close_of_a_paid_trade_is_refused(env: Env) -> None:
    paid_trade(env, "SB1_paidclose")
    with pytest.raises(ChannelError) as err:
        env.client.close("SB1_paidclose")
    assert err.value.code == "ACQ.TRADE_STATUS_ERROR"
    assert env.client.query("SB1_paidclose").state == "paid"


def test_refund_partial_repeat_and_full(env: Env) -> None:
    paid_trade(env, "SB1_refund", 38000)

    def refund(no: str, fen: int) -> Any:
        return env.client.refund(RefundRequest(out_trade_no="SB1_refund", out_refund_no=no,
                                               total_fen=38000, refund_fen=fen, reason="重复缴费"))

    first = refund("SB1_R1", 8000)
    assert (first.out_refund_no, first.state) == ("SB1_R1", "success")
    assert first.raw["fund_change"] == "Y" and first.raw["refund_fee"] == "80.00"
    assert env.client.query("SB1_refund").state == "paid"     # partly refunded: still paid

    # The same out_request_no again: fund_change=N, confirmed by the refund query.
    repeat = refund("SB1_R1", 8000)
    assert repeat.state == "success"
    assert repeat.raw["refund"]["fund_change"] == "N"
    assert repeat.raw["refund_query"]["refund_status"] == "REFUND_SUCCESS"
    trade = env.state.get(Channel.ALIPAY, "SB1_refund")
    assert trade is not None and trade.refunded_fen == 8000   # no second money movement

    with pytest.raises(ChannelError) as too_much:
        refund("SB1_R2", 30001)
    assert too_much.value.code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"

    assert refund("SB1_R2", 30000).state == "success"
    after = env.client.query("SB1_refund")
    assert (after.state, after.amount_fen) == ("refunded", 38000)   # TRADE_CLOSED after payment


def test_a_precreated_code_is_no_trade_until_scanned_yet_payable_until_it_expires(
        serve: Callable[[FastAPI], ServedApp]) -> None:
    clock = {"now": datetime.now(UTC)}
    env = Env(serve, clock=lambda: clock["now"])    # the business clock, moved by the test
    env.create("SB1_unscanned", minutes=30)
    # Before the scan Alipay knows no trade: query and close say so…
    assert env.client.query("SB1_unscanned").state == "not_found"
    with pytest.raises(ChannelError) as err:
        env.client.close("SB1_unscanned")
    assert err.value.code == "ACQ.TRADE_NOT_EXIST"
    # …and the code stays payable: closing did nothing at Alipay.
    env.pay("SB1_unscanned")
    assert env.client.query("SB1_unscanned").state == "paid"

    env.create("SB1_expiring", minutes=30)
    clock["now"] += timedelta(minutes=31)
    late = httpx.post(f"{env.base}/sandbox/pay", json={"out_trade_no": "SB1_expiring"},
                      timeout=10)
    assert late.status_code == 409 and "expired" in late.text
    assert env.scan("SB1_expiring").status_code == 409
    assert env.client.query("SB1_expiring").state == "not_found"
    # a paid trade's notification can still be sent again after the expiry
    assert httpx.post(f"{env.base}/sandbox/pay", json={"out_trade_no": "SB1_unscanned"},
                      timeout=10).status_code == 200


def test_query_refund_needs_refund_success(env: Env) -> None:
    paid_trade(env, "SB1_rq", 38000)
    req = RefundRequest(out_trade_no="SB1_rq", out_refund_no="SB1_rq_R1", total_fen=38000,
                        refund_fen=8000, reason="重复缴费")
    assert env.client.query_refund(req).state == "not_found"       # never asked for
    env.sim.refunds_pending = True
    taken = env.client.refund(req)
    # Alipay has the request but has not refunded: its query answers without refund_status
    assert taken.state == "processing"
    assert taken.raw["refund_query"]["refund_amount"] == "80.00"
    assert "refund_status" not in taken.raw["refund_query"]
    queried = env.client.query_refund(req)
    assert queried.state == "not_found" and "refund_status" not in queried.raw
    trade = env.state.get(Channel.ALIPAY, "SB1_rq")
    assert trade is not None and trade.refunded_fen == 0
    env.sim.finish_refunds()
    done = env.client.query_refund(req)
    assert done.state == "success" and done.raw["refund_status"] == "REFUND_SUCCESS"
    assert trade.refunded_fen == 8000
    with pytest.raises(ChannelError) as err:
        env.client.query_refund(dataclasses.replace(req, refund_fen=7000))
    assert err.value.code == "refund_amount_mismatch"
    unknown = env.client.query_refund(dataclasses.replace(req, out_trade_no="SB1_never"))
    assert unknown.state == "not_found"


def test_refund_of_unknown_trade_raises_with_code(env: Env) -> None:
    with pytest.raises(ChannelError) as err:
        env.client.refund(RefundRequest(out_trade_no="SB1_nothing", out_refund_no="R1",
                                        total_fen=100, refund_fen=100, reason="x"))
    assert err.value.code == "ACQ.TRADE_NOT_EXIST"


def test_timeout_switch_raises_channel_timeout(env: Env) -> None:
    env.create("SB1_slow")
    env.faults(timeout=True, hang_s=1.5)
    client = AlipayClient(dataclasses.replace(env.config, timeout_s=0.5))
    started = datetime.now(UTC)
    with pytest.raises(ChannelTimeout) as err:
        client.query("SB1_slow")
    assert err.value.code == "channel_timeout" and err.value.retryable
    assert datetime.now(UTC) - started < timedelta(seconds=1.4)


def test_garbage_switch_raises_channel_garbage(env: Env) -> None:
    env.create("SB1_garbage")
    env.faults(garbage=True)
    with pytest.raises(ChannelError) as err:
        env.client.query("SB1_garbage")
    assert err.value.code == "channel_garbage"
    with pytest.raises(ChannelError) as err2:
        env.create("SB1_garbage2")
    assert err2.value.code == "channel_garbage"


def test_query_not_found_switch_and_unknown_trade(env: Env) -> None:
    assert env.client.query("SB1_unknown").state == "not_found"
    paid_trade(env, "SB1_nf")
    env.faults(query_not_found=True)
    status = env.client.query("SB1_nf")
    assert status.state == "not_found"
    assert status.raw["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_response_signed_by_another_key_is_garbage(env: Env) -> None:
    env.create("SB1_forged_answer")
    _, other_public = rsa_pem_pair("alipay-other")
    client = AlipayClient(dataclasses.replace(env.config, alipay_public_key_pem=other_public))
    with pytest.raises(ChannelError) as err:
        client.query("SB1_forged_answer")
    assert err.value.code == "channel_garbage"
    assert "signature" in str(err.value)


def test_simulator_rejects_bad_request_signature_and_app_id(env: Env) -> None:
    other_private, _ = rsa_pem_pair("alipay-other")
    wrong_key = AlipayClient(dataclasses.replace(env.config, app_private_key_pem=other_private))
    with pytest.raises(ChannelError) as err:
        wrong_key.query("SB1_x")
    assert err.value.code == "isv.invalid-signature"
    assert "unsigned" in str(err.value)
    wrong_app = AlipayClient(dataclasses.replace(env.config, appid="2021000000009999"))
    with pytest.raises(ChannelError) as err2:
        wrong_app.query("SB1_x")
    assert err2.value.code == "isv.invalid-app-id"


def test_simulator_rejects_a_non_beijing_timestamp(env: Env) -> None:
    # What the SDK does by default on a UTC server: a naive local (UTC) timestamp.
    sdk = AliPay(appid=APPID, app_private_key_string=env.config.app_private_key_pem,
                 alipay_public_key_string=env.config.alipay_public_key_pem)
    utc_wall = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    data = sdk.build_body("alipay.trade.query", {"out_trade_no": "SB1_ts"}, timestamp=utc_wall)
    resp = httpx.get(f"{env.config.gateway}?{sdk.sign_data(data)}", timeout=5)
    assert resp.json() == {"alipay_trade_query_response": {
        "code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-timestamp",
        "sub_msg": "非法的时间戳参数"}}


def test_real_sdk_server_api_against_the_simulator(env: Env) -> None:
    env.create("SB1_sdk")
    env.scan("SB1_sdk")
    sdk = AliPay(appid=APPID, app_private_key_string=env.config.app_private_key_pem,
                 alipay_public_key_string=env.config.alipay_public_key_pem)
    sdk._gateway = env.config.gateway
    beijing = datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
    result = sdk.server_api("alipay.trade.query", {"out_trade_no": "SB1_sdk"}, timestamp=beijing)
    assert result["code"] == "10000"
    assert result["trade_status"] == "WAIT_BUYER_PAY"
    assert result["total_amount"] == "380.00"
    # …and over POST (form body), which the real gateway also takes.
    data = sdk.build_body("alipay.trade.query", {"out_trade_no": "SB1_sdk"}, timestamp=beijing)
    resp = httpx.post(env.config.gateway, content=sdk.sign_data(data),
                      headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    assert '"trade_status":"WAIT_BUYER_PAY"' in resp.text


def test_unreachable_gateway_is_a_retryable_channel_error() -> None:
    client = AlipayClient(make_config("http://127.0.0.1:9/gateway.do", timeout_s=2))
    with pytest.raises(ChannelError) as err:
        client.query("SB1")
    assert err.value.code == "channel_unreachable" and err.value.retryable


# --------------------------------------------------------------------------- verifier
def notification_of(env: Env, no: str, **pay: Any) -> tuple[dict[str, str], bytes]:
    env.create(no)
    out = env.pay(no, **pay)
    note = out["notifications"][0]
    return note["headers"], note["body"].encode()


def form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


def test_simulated_notification_verifies_here_and_with_the_sdk(env: Env) -> None:
    headers, body = notification_of(env, "SB1_note")
    trade = env.state.get(Channel.ALIPAY, "SB1_note")
    assert trade is not None
    note = env.verifier.verify(headers, body, datetime.now(UTC))
    assert note.channel is Channel.ALIPAY
    assert (note.kind, note.succeeded, note.trade_state) == ("payment", True, "TRADE_SUCCESS")
    assert (note.amount_fen, note.app_id, note.merchant_id) == (38000, APPID, SELLER)
    assert note.paid_at == trade.paid_at and note.paid_at is not None
    assert note.dedupe_key == f"{form(body)['notify_id']}:TRADE_SUCCESS"
    assert note.raw["subject"] == "2027年度城乡居民医保+养老保险"    # '+' survived
    # python-alipay-sdk, the real library, accepts the same bytes.
    fields = form(body)
    sign = fields.pop("sign")
    sdk = AliPay(appid=APPID, app_private_key_string=env.config.app_private_key_pem,
                 alipay_public_key_string=env.config.alipay_public_key_pem)
    assert sdk.verify({k: v for k, v in fields.items() if v != ""}, sign) is True


def test_resends_share_one_dedupe_key_and_statuses_do_not(env: Env) -> None:
    env.create("SB1_dup")
    first = env.pay("SB1_dup", times=2)["notifications"]
    keys = {env.verifier.verify(n["headers"], n["body"].encode(), NOW).dedupe_key for n in first}
    assert len(keys) == 1
    finished = env.pay("SB1_dup", event="TRADE_FINISHED")["notifications"][0]
    later = env.verifier.verify(finished["headers"], finished["body"].encode(), NOW)
    assert later.dedupe_key not in keys
    assert (later.trade_state, later.succeeded, later.kind) == ("TRADE_FINISHED", True, "payment")
    assert later.transaction_id == env.verifier.verify(
        first[0]["headers"], first[0]["body"].encode(), NOW).transaction_id
    assert env.client.query("SB1_dup").state == "paid"          # TRADE_FINISHED is paid


def test_trade_closed_notification_is_verified_but_not_a_payment(env: Env) -> None:
    headers, body = notification_of(env, "SB1_closed_note", event="TRADE_CLOSED")
    note = env.verifier.verify(headers, body, NOW)
    assert (note.trade_state, note.succeeded, note.kind) == ("TRADE_CLOSED", False, "payment")
    assert note.amount_fen == 38000


def test_tampered_body_is_rejected(env: Env) -> None:
    headers, body = notification_of(env, "SB1_tamper")
    fields = form(body)
    for name, value in (("total_amount", "0.01"), ("out_trade_no", "SB1_other"),
                        ("trade_status", "TRADE_FINISHED")):
        with pytest.raises(VerificationFailed):
            env.verifier.verify(headers, urlencode({**fields, name: value}).encode(), NOW)


def test_bad_signature_and_wrong_key_are_rejected(env: Env) -> None:
    headers, body = notification_of(env, "SB1_badsig", bad_signature=True)
    with pytest.raises(VerificationFailed, match="signature"):
        env.verifier.verify(headers, body, NOW)
    headers, body = notification_of(env, "SB1_wrongkey")
    _, other_public = rsa_pem_pair("alipay-other")
    verifier = AlipayNotificationVerifier(
        dataclasses.replace(env.config, alipay_public_key_pem=other_public))
    with pytest.raises(VerificationFailed, match="signature"):
        verifier.verify(headers, body, NOW)


def test_wrong_app_id_or_seller_is_rejected(env: Env) -> None:
    headers, body = notification_of(env, "SB1_owner")
    for config in (dataclasses.replace(env.config, appid="2021000000009999"),
                   dataclasses.replace(env.config, seller_id="2088000000009999")):
        verifier = AlipayNotificationVerifier(config)
        with pytest.raises(VerificationFailed, match="not ours"):
            verifier.verify(headers, body, NOW)


def test_signature_covers_every_received_field(env: Env) -> None:
    headers, body = notification_of(env, "SB1_allfields")
    fields = form(body)
    # A field Alipay did not sign, slipped in (e.g. a route parameter), breaks it…
    with pytest.raises(VerificationFailed):
        env.verifier.verify(headers, body + b"&merchant_app_id=2021000000000001", NOW)
    # …and an unknown field Alipay did sign is part of the check and passes.
    signed = {**fields, "merchant_app_id": APPID, "aI": "EZkv"}
    signed["sign"] = alipay_sign(signed)
    note = env.verifier.verify(headers, urlencode(signed).encode(), NOW)
    assert note.raw["aI"] == "EZkv"
    # An empty field is skipped by Alipay's signer, as by the Java SDK.
    with_empty = {**fields, "body": ""}
    with_empty["sign"] = alipay_sign(with_empty)
    assert env.verifier.verify(headers, urlencode(with_empty).encode(), NOW).succeeded


def test_plus_decoded_as_space_and_duplicate_fields_are_rejected(env: Env) -> None:
    headers, body = notification_of(env, "SB1_plus")
    fields = form(body)
    mangled = urlencode({**fields, "subject": fields["subject"].replace("+", " ")}).encode()
    with pytest.raises(VerificationFailed):
        env.verifier.verify(headers, mangled, NOW)
    with pytest.raises(VerificationFailed, match="twice"):
        env.verifier.verify(headers, body + b"&trade_status=TRADE_SUCCESS", NOW)
    with pytest.raises(VerificationFailed):
        env.verifier.verify(headers, b"", NOW)
    with pytest.raises(VerificationFailed):
        env.verifier.verify(headers, b"\xff\xfe", NOW)


@pytest.mark.parametrize("amount", ["380.0", "380", "-380.00", "0.00", "3.8e2"])
def test_signed_but_malformed_amount_is_rejected(env: Env, amount: str) -> None:
    headers, body = notification_of(env, f"SB1_amt{abs(hash(amount)) % 10000}")
    fields = {**form(body), "total_amount": amount}
    fields["sign"] = alipay_sign(fields)
    with pytest.raises(VerificationFailed, match="total_amount"):
        env.verifier.verify(headers, urlencode(fields).encode(), NOW)


def test_gbk_charset_field_is_honored(env: Env) -> None:
    headers, body = notification_of(env, "SB1_gbk")
    fields = {**form(body), "charset": "gbk"}
    fields["sign"] = alipay_sign(fields, charset="gbk")
    gbk_body = urlencode(fields, encoding="gbk").encode("ascii")
    note = env.verifier.verify({"content-type": "application/x-www-form-urlencoded"},
                               gbk_body, NOW)
    assert note.raw["subject"] == "2027年度城乡居民医保+养老保险"
    assert note.succeeded
    # The same GBK bytes read as UTF-8 would not even decode.
    wrong = gbk_body.replace(b"charset=gbk", b"charset=utf-8")
    with pytest.raises(VerificationFailed):
        env.verifier.verify(headers, wrong, NOW)


def test_paid_amount_differing_from_the_order_is_reported_as_paid(env: Env) -> None:
    headers, body = notification_of(env, "SB1_short", amount_fen=100)
    note = env.verifier.verify(headers, body, NOW)
    assert note.amount_fen == 100            # the service compares it with the order's 38000


def test_refund_notifications_are_kind_refund(env: Env) -> None:
    trade = paid_trade(env, "SB1_refnote", 38000)
    env.client.refund(RefundRequest(out_trade_no="SB1_refnote", out_refund_no="SB1_RN1",
                                    total_fen=38000, refund_fen=8000, reason="x"))
    partial = env.sim.refund_notification(trade, trade.refunds[0])
    assert partial is not None
    note = env.verifier.verify(partial.headers, partial.body, NOW)
    assert (note.kind, note.succeeded, note.trade_state) == ("refund", True, "TRADE_SUCCESS")
    assert (note.out_refund_no, note.refund_fen, note.amount_fen) == ("SB1_RN1", 8000, 38000)
    env.client.refund(RefundRequest(out_trade_no="SB1_refnote", out_refund_no="SB1_RN2",
                                    total_fen=38000, refund_fen=30000, reason="x"))
    full = env.sim.refund_notification(trade, trade.refunds[1])
    assert full is not None
    last = env.verifier.verify(full.headers, full.body, NOW)
    assert (last.kind, last.trade_state, last.refund_fen) == ("refund", "TRADE_CLOSED", 38000)
    assert last.dedupe_key != note.dedupe_key


def test_refund_fee_zero_on_a_payment_is_still_a_payment(env: Env) -> None:
    headers, body = notification_of(env, "SB1_zero_refund")
    fields = {**form(body), "refund_fee": "0.00"}
    fields["sign"] = alipay_sign(fields)
    note = env.verifier.verify(headers, urlencode(fields).encode(), NOW)
    assert (note.kind, note.succeeded, note.refund_fen) == ("payment", True, None)


def test_simulator_refuses_an_unknown_event() -> None:
    sim = AlipaySimulator(SandboxState(), make_config(), rsa_pem_pair("alipay-platform")[0])
    trade = SimTrade(channel=Channel.ALIPAY, out_trade_no="SB1", amount_fen=1, notify_url="u",
                     kind="qr", state="paid", transaction_id="1", paid_at=NOW, paid_fen=1)
    with pytest.raises(ValueError):
        sim.payment_notification(trade, PayOptions(event="TRADE_PENDING"))


def test_answers_are_alipays() -> None:
    verifier = AlipayNotificationVerifier(make_config())
    ok, bad = verifier.success_answer(), verifier.failure_answer("unknown order")
    assert (ok.status, ok.body) == (200, b"success")
    assert (bad.status, bad.body) == (200, b"fail")


# --------------------------------------------------------------------------- odd gateway answers
def signed_answer(method: str, inner_json: str) -> str:
    key = serialization.load_pem_private_key(rsa_pem_pair("alipay-platform")[0].encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    sign = base64.b64encode(key.sign(inner_json.encode(), padding.PKCS1v15(),
                                     hashes.SHA256())).decode()
    return f'{{"{method.replace(".", "_")}_response":{inner_json},"sign":"{sign}"}}'


QUERY = "alipay.trade.query"
PAID_OTHER = ('{"code":"10000","msg":"Success","out_trade_no":"SB1_other",'
              '"trade_status":"TRADE_SUCCESS","total_amount":"380.00"}')


@pytest.mark.parametrize(("status", "answer", "code", "retryable"), [
    (200, '{"alipay_trade_query_response":{"code":"10000","msg":"Success","out_trade_no":"SB1",'
          '"trade_status":"TRADE_SUCCESS","total_amount":"380.00"}}', "channel_garbage", True),
    (200, signed_answer(QUERY, PAID_OTHER), "channel_garbage", True),
    (200, signed_answer(QUERY, PAID_OTHER.replace("SB1_other", "SB1")
                        .replace("TRADE_SUCCESS", "TRADE_WHATEVER")), "channel_garbage", True),
    (200, signed_answer(QUERY, PAID_OTHER.replace("SB1_other", "SB1")
                        .replace("380.00", "380.0")), "channel_garbage", True),
    (200, signed_answer(QUERY, '{"code":"20000","msg":"Service Currently Unavailable",'
                               '"sub_code":"isp.unknow-error","sub_msg":"系统繁忙"}'),
     "isp.unknow-error", True),
    (200, signed_answer(QUERY, '{"code":"40004","msg":"Business Failed",'
                               '"sub_code":"ACQ.INVALID_PARAMETER","sub_msg":"参数无效"}'),
     "ACQ.INVALID_PARAMETER", False),
    (200, '{"error_response":{"code":"40002","msg":"Invalid Arguments",'
          '"sub_code":"isv.invalid-app-id","sub_msg":"无效的AppID参数"},"sign":"abc"}',
     "isv.invalid-app-id", False),
    (200, "[1, 2]", "channel_garbage", True),
    (502, "<html>Bad Gateway</html>", "channel_garbage", True),
])
def test_odd_gateway_answers(serve: Callable[[FastAPI], ServedApp], status: int, answer: str,
                             code: str, retryable: bool) -> None:
    app = FastAPI()

    @app.get("/gateway.do")
    def gateway() -> PlainTextResponse:
        return PlainTextResponse(answer, status_code=status)

    client = AlipayClient(make_config(serve(app).base_url + "/gateway.do"))
    with pytest.raises(ChannelError) as err:
        client.query("SB1")
    assert (err.value.code, err.value.retryable) == (code, retryable)
    # what may have reached Alipay without a final word is an unknown outcome, never a refusal
    assert isinstance(err.value, OutcomeUnknown) == retryable


def test_the_sdk_step_the_client_relies_on_is_there() -> None:
    """The client verifies Alipay's sync answers with python-alipay-sdk's own private step;
    pyproject pins the range it is tested with, and this fails first if that moves."""
    from importlib.metadata import version

    from alipay import AliPay

    assert version("python-alipay-sdk").startswith("3.4.")
    assert callable(getattr(AliPay, "_verify_and_return_sync_response", None))

