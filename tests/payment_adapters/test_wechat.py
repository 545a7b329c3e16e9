"""WeChat Pay APIv3: client ↔ simulator over HTTP on loopback, and the notification verifier."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import wechatpayv3.core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI, Request, Response
from wechatpayv3 import WeChatPay, WeChatPayType

from payment_adapters.base import (
    Channel,
    ChannelError,
    ChannelTimeout,
    CreateRequest,
    Notification,
    NotificationVerifier,
    PaymentClient,
    RefundRequest,
    VerificationFailed,
    WechatConfig,
)
from payment_adapters.sandbox.control import control_router
from payment_adapters.sandbox.core import (
    ChannelSimulator,
    OutgoingNotification,
    PayOptions,
    SandboxState,
    SimTrade,
)
from payment_adapters.sandbox.wechat import WechatSimulator
from payment_adapters.wechat import WechatNotificationVerifier, WechatPayClient
from tests.payment_adapters.conftest import rsa_pem_pair
from tests.servers import ServedApp, free_port

APPID = "wx8888888888888888"
MCHID = "1900000109"
APIV3_KEY = "a12d3924fd499edac8a5efc0b1c2d3e4"
MCH_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
PUB_KEY_ID = "PUB_KEY_ID_0119000001092025112800219000000001"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def make_config(**overrides: Any) -> WechatConfig:
    config = WechatConfig(
        appid=APPID, mchid=MCHID, apiv3_key=APIV3_KEY,
        mch_private_key_pem=rsa_pem_pair("wechat-merchant")[0], mch_serial=MCH_SERIAL,
        public_key_pem=rsa_pem_pair("wechat-platform")[1], public_key_id=PUB_KEY_ID)
    return replace(config, **overrides)


@dataclass
class Env:
    state: SandboxState
    sim: WechatSimulator
    config: WechatConfig
    base: str                   # the simulator's server
    notify_url: str             # our recording notify endpoint
    client: WechatPayClient
    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    def client_with(self, **overrides: Any) -> WechatPayClient:
        return WechatPayClient(replace(self.client.config, **overrides))

    def faults(self, **switches: Any) -> None:
        r = httpx.post(f"{self.base}/sandbox/faults", json={"channel": "wechat", **switches})
        assert r.status_code == 200

    def pay(self, out_trade_no: str, **extra: Any) -> dict[str, Any]:
        r = httpx.post(f"{self.base}/sandbox/pay",
                       json={"out_trade_no": out_trade_no, "times": 1, **extra}, timeout=10)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result


@pytest.fixture
def env(serve: Callable[[FastAPI], ServedApp]) -> Env:
    state = SandboxState()
    config = make_config()
    sim = WechatSimulator(state, config, rsa_pem_pair("wechat-platform")[0])
    channel_app = FastAPI()
    channel_app.include_router(control_router(state, [sim]))
    channel = serve(channel_app)

    verifier = WechatNotificationVerifier(config)
    received: list[tuple[dict[str, str], bytes, int]] = []
    ours = FastAPI()

    @ours.post("/api/v1/notify/wechat")
    async def notify(request: Request) -> Response:
        body = await request.body()
        try:
            verifier.verify(request.headers, body, datetime.now(UTC))
            answer = verifier.success_answer()
        except VerificationFailed as exc:
            answer = verifier.failure_answer(str(exc))
        received.append((dict(request.headers), body, answer.status))
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type)

    receiver = serve(ours)
    client = WechatPayClient(replace(config, base_url=channel.base_url + "/sandbox/wechat",
                                     timeout_s=5.0))
    return Env(state=state, sim=sim, config=config, base=channel.base_url,
               notify_url=receiver.base_url + "/api/v1/notify/wechat", client=client,
               received=received)


def order(env: Env, no: str, *, kind: str = "native", amount_fen: int = 38000,
          openid: str | None = None) -> CreateRequest:
    return CreateRequest(
        out_trade_no=no, amount_fen=amount_fen, description="城乡居民基本养老保险2021年度",
        expires_at=datetime(2031, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), notify_url=env.notify_url,
        kind=kind,  # type: ignore[arg-type]
        payer_openid=openid if openid is not None else (OPENID if kind == "jsapi" else None))


def merchant_public_key() -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(rsa_pem_pair("wechat-merchant")[1].encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


# ====================================================================== client ↔ simulator
def test_new_out_trade_no_is_a_valid_wechat_number(env: Env) -> None:
    assert env.client.new_out_trade_no("P2021000123A1") == "P2021000123A1"
    assert env.client.new_out_trade_no("A1") == "A1____"
    assert env.client.new_out_trade_no("x" * 24) == "x" * 24
    for bad in ("", "has-dash", "x" * 25, "中文"):
        with pytest.raises(ValueError):
            env.client.new_out_trade_no(bad)


def test_create_jsapi_answers_request_payment_whose_pay_sign_verifies(env: Env) -> None:
    result = env.client.create(order(env, "JS2021000001", kind="jsapi"))

    assert result.prepay_id is not None and result.prepay_id.startswith("wx")
    assert result.qr_content is None
    rp = result.request_payment
    assert rp is not None
    assert set(rp) == {"timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert rp["package"] == f"prepay_id={result.prepay_id}"
    assert rp["signType"] == "RSA"
    assert rp["timeStamp"].isdigit() and len(rp["nonceStr"]) == 32
    message = f"{APPID}\n{rp['timeStamp']}\n{rp['nonceStr']}\n{rp['package']}\n".encode()
    merchant_public_key().verify(base64.b64decode(rp["paySign"]), message,
                                 padding.PKCS1v15(), hashes.SHA256())

    trade = env.state.get(Channel.WECHAT, "JS2021000001")
    assert trade is not None
    assert (trade.amount_fen, trade.kind, trade.payer, trade.notify_url, trade.state) == (
        38000, "jsapi", OPENID, env.notify_url, "pending")
    # time_expire went out as RFC3339 in +08:00, whole seconds
    assert trade.expires_at is not None
    assert trade.expires_at.isoformat() == "2031-01-02T11:04:05+08:00"


def test_create_native_answers_code_url_as_qr_content(env: Env) -> None:
    result = env.client.create(order(env, "NA2021000001"))
    assert result.qr_content is not None
    assert result.qr_content.startswith("weixin://wxpay/bizpayurl/up?pr=")
    assert result.request_payment is None and result.prepay_id is None
    # re-ordering with the same parameters is allowed and gives the same QR
    assert env.client.create(order(env, "NA2021000001")).qr_content == result.qr_content


def test_create_rejects_bad_requests_before_calling(env: Env) -> None:
    with pytest.raises(ValueError):
        env.client.create(order(env, "JS2021000002", kind="jsapi", openid=""))
    with pytest.raises(ValueError):
        env.client.create(order(env, "short"))
    with pytest.raises(ValueError):
        env.client.create(order(env, "QR2021000002", kind="qr"))
    assert env.state.find("JS2021000002") is None


def test_same_out_trade_no_with_another_amount_is_refused(env: Env) -> None:
    env.client.create(order(env, "DU2021000001", amount_fen=38000))
    with pytest.raises(ChannelError) as caught:
        env.client.create(order(env, "DU2021000001", amount_fen=20000))
    assert caught.value.code == "OUT_TRADE_NO_USED"
    assert "403" in str(caught.value) and "商户订单号重复" in str(caught.value)
    trade = env.state.get(Channel.WECHAT, "DU2021000001")
    assert trade is not None and trade.amount_fen == 38000


def test_pay_flow_query_notify_refund(env: Env) -> None:
    no = "FL2021000001"
    env.client.create(order(env, no, kind="jsapi", amount_fen=38000))

    pending = env.client.query(no)
    assert (pending.state, pending.amount_fen, pending.transaction_id) == ("pending", 38000, None)
    assert (pending.app_id, pending.merchant_id) == (APPID, MCHID)

    paid_answer = env.pay(no)
    assert [d["status"] for d in paid_answer["deliveries"]] == [204]
    assert len(env.received) == 1
    headers, body, status = env.received[0]
    assert status == 204
    note = WechatNotificationVerifier(env.config).verify(headers, body, datetime.now(UTC))
    trade = env.state.get(Channel.WECHAT, no)
    assert trade is not None and trade.paid_at is not None
    assert (note.kind, note.succeeded, note.out_trade_no, note.amount_fen) == (
        "payment", True, no, 38000)
    assert note.transaction_id == trade.transaction_id
    assert note.paid_at == trade.paid_at

    paid = env.client.query(no)
    assert (paid.state, paid.amount_fen, paid.transaction_id) == (
        "paid", 38000, trade.transaction_id)
    assert paid.paid_at == trade.paid_at and paid.paid_at.utcoffset() == timedelta(hours=8)

    refund = env.client.refund(RefundRequest(
        out_trade_no=no, out_refund_no="RF" + no, total_fen=38000, refund_fen=38000,
        reason="重复缴费退款", notify_url=env.notify_url))
    assert refund.state == "success" and refund.refund_id is not None
    assert refund.refund_id.startswith("5030") and len(refund.refund_id) == 29
    assert env.client.query(no).state == "refunded"
    # the same out_refund_no is answered, not refunded twice
    again = env.client.refund(RefundRequest(
        out_trade_no=no, out_refund_no="RF" + no, total_fen=38000, refund_fen=38000, reason=""))
    assert again.refund_id == refund.refund_id
    assert trade.refunded_fen == 38000 and len(trade.refunds) == 1

    refund_note = env.sim.refund_notification(trade, trade.refunds[0])
    assert refund_note is not None and refund_note.url == env.notify_url
    parsed = WechatNotificationVerifier(env.config).verify(
        refund_note.headers, refund_note.body, datetime.now(UTC))
    assert (parsed.kind, parsed.succeeded, parsed.trade_state) == ("refund", True, "SUCCESS")
    assert (parsed.out_refund_no, parsed.refund_fen, parsed.amount_fen) == ("RF" + no, 38000, 38000)
    assert parsed.out_trade_no == no and parsed.merchant_id == MCHID


def test_refund_beyond_the_paid_amount_is_refused(env: Env) -> None:
    no = "RB2021000001"
    env.client.create(order(env, no, amount_fen=10000))
    env.pay(no)
    env.client.refund(RefundRequest(out_trade_no=no, out_refund_no="RB1", total_fen=10000,
                                    refund_fen=6000, reason="部分退款"))
    with pytest.raises(ChannelError) as caught:
        env.client.refund(RefundRequest(out_trade_no=no, out_refund_no="RB2", total_fen=10000,
                                        refund_fen=6000, reason="部分退款"))
    assert caught.value.code == "INVALID_REQUEST"
    trade = env.state.get(Channel.WECHAT, no)
    assert trade is not None and trade.refunded_fen == 6000


def test_close_pending_then_again_then_paid(env: Env) -> None:
    env.client.create(order(env, "CL2021000001"))
    env.client.close("CL2021000001")
    trade = env.state.get(Channel.WECHAT, "CL2021000001")
    assert trade is not None and trade.state == "closed"
    assert env.client.query("CL2021000001").state == "closed"
    env.client.close("CL2021000001")            # ORDER_CLOSED: already what we want

    env.client.create(order(env, "CL2021000002"))
    env.pay("CL2021000002")
    with pytest.raises(ChannelError) as caught:
        env.client.close("CL2021000002")
    assert caught.value.code == "ORDERPAID"
    assert env.client.query("CL2021000002").state == "paid"


def test_query_of_an_unknown_trade_is_not_found(env: Env) -> None:
    status = env.client.query("NF2021000404")
    assert status.state == "not_found" and status.amount_fen is None


def test_query_not_found_switch(env: Env) -> None:
    env.client.create(order(env, "NF2021000001"))
    env.pay("NF2021000001")
    env.faults(query_not_found=True)
    assert env.client.query("NF2021000001").state == "not_found"
    env.faults(query_not_found=False)
    assert env.client.query("NF2021000001").state == "paid"


def test_timeout_switch_raises_channel_timeout(env: Env) -> None:
    env.client.create(order(env, "TO2021000001"))
    env.faults(timeout=True, hang_s=1.5)
    slow = env.client_with(timeout_s=0.5)
    with pytest.raises(ChannelTimeout) as caught:
        slow.query("TO2021000001")
    assert caught.value.retryable and caught.value.code == "channel_timeout"
    with pytest.raises(ChannelTimeout):
        slow.create(order(env, "TO2021000002"))


def test_garbage_switch_raises_channel_garbage(env: Env) -> None:
    env.client.create(order(env, "GB2021000001"))
    env.faults(garbage=True)
    for call in (lambda: env.client.create(order(env, "GB2021000002")),
                 lambda: env.client.query("GB2021000001"),
                 lambda: env.client.close("GB2021000001")):
        with pytest.raises(ChannelError) as caught:
            call()
        assert caught.value.code == "channel_garbage"


def test_answer_signed_by_another_key_is_garbage(env: Env) -> None:
    env.client.create(order(env, "BS2021000001"))
    wrong = env.client_with(public_key_pem=rsa_pem_pair("wechat-stranger")[1])
    with pytest.raises(ChannelError) as caught:
        wrong.query("BS2021000001")
    assert caught.value.code == "channel_garbage"
    assert "signature" in str(caught.value)


def test_answer_under_another_serial_fails_without_fetching_certificates(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.client.create(order(env, "BS2021000002"))
    fetched: list[str] = []
    real_get = wechatpayv3.core.requests.get

    def spy_get(url: str, **kwargs: Any) -> Any:
        fetched.append(url)
        return real_get(url, **kwargs)

    monkeypatch.setattr(wechatpayv3.core.requests, "get", spy_get)
    other = env.client_with(public_key_id="PUB_KEY_ID_0000000000000000000000000000000000")
    with pytest.raises(ChannelError) as caught:
        other.query("BS2021000002")
    assert caught.value.code == "channel_garbage"
    assert [u for u in fetched if "/v3/certificates" in u] == []


@pytest.mark.parametrize("change", [
    {"trade_state": "WHATEVER"},
    {"transaction_id": None},
    {"success_time": "2021-01-01 10:00:00"},
    {"amount": {"total": "38000"}},
    {"out_trade_no": "OTHER0000001"},
    {"mchid": "1900000999"},
])
def test_signed_answer_with_bad_fields_is_garbage(
        env: Env, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]) -> None:
    env.client.create(order(env, "BF2021000001"))
    env.pay("BF2021000001")
    real = env.sim.transaction
    monkeypatch.setattr(env.sim, "transaction",
                        lambda trade, as_paid=False: real(trade, as_paid=as_paid) | change)
    with pytest.raises(ChannelError) as caught:
        env.client.query("BF2021000001")
    assert caught.value.code == "channel_garbage"


def test_unreachable_channel_is_an_unknown_outcome(env: Env) -> None:
    nowhere = env.client_with(base_url=f"http://127.0.0.1:{free_port()}/sandbox/wechat")
    with pytest.raises(ChannelTimeout, match="connection failed"):
        nowhere.refund(RefundRequest(out_trade_no="UR2021000001", out_refund_no="UR1",
                                     total_fen=100, refund_fen=100, reason=""))


def test_simulator_rejects_a_request_signed_by_another_merchant_key(env: Env) -> None:
    forged = env.client_with(mch_private_key_pem=rsa_pem_pair("wechat-stranger")[0])
    with pytest.raises(ChannelError) as caught:
        forged.create(order(env, "SG2021000001"))
    assert caught.value.code == "SIGN_ERROR"
    assert env.state.find("SG2021000001") is None


def test_simulator_rejects_another_appid(env: Env) -> None:
    with pytest.raises(ChannelError) as caught:
        env.client_with(appid="wx0000000000000000").create(order(env, "AP2021000001"))
    assert caught.value.code == "APPID_MCHID_NOT_MATCH"


# ====================================================================== verifier
@pytest.fixture
def paid_trade(env: Env) -> SimTrade:
    env.client.create(order(env, "NT2021000001", kind="jsapi", amount_fen=38000))
    env.pay("NT2021000001")
    trade = env.state.get(Channel.WECHAT, "NT2021000001")
    assert trade is not None
    return trade


def verify(config: WechatConfig, note: OutgoingNotification, *, body: bytes | None = None,
           headers: dict[str, str] | None = None, now: datetime | None = None) -> Notification:
    return WechatNotificationVerifier(config).verify(
        headers if headers is not None else dict(note.headers),
        note.body if body is None else body, now or datetime.now(UTC))


def real_library(config: WechatConfig) -> WeChatPay:
    return WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=config.mchid,
                     private_key=config.mch_private_key_pem, cert_serial_no=config.mch_serial,
                     appid=config.appid, apiv3_key=config.apiv3_key,
                     public_key=config.public_key_pem, public_key_id=config.public_key_id)


def test_simulator_notification_verifies_here_and_in_wechatpayv3(
        env: Env, paid_trade: SimTrade, monkeypatch: pytest.MonkeyPatch) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions())
    parsed = verify(env.config, note)
    assert (parsed.channel, parsed.kind, parsed.trade_state, parsed.succeeded) == (
        Channel.WECHAT, "payment", "SUCCESS", True)
    assert (parsed.out_trade_no, parsed.amount_fen, parsed.app_id, parsed.merchant_id) == (
        "NT2021000001", 38000, APPID, MCHID)
    assert parsed.transaction_id == paid_trade.transaction_id
    assert parsed.paid_at == paid_trade.paid_at and parsed.paid_at is not None
    assert parsed.paid_at.utcoffset() == timedelta(hours=8)
    event = json.loads(note.body)
    assert parsed.dedupe_key == event["id"] and len(event["id"]) == 36
    assert event["resource"]["associated_data"] == "transaction"
    assert len(event["resource"]["nonce"]) == 12
    assert note.headers["Wechatpay-Serial"] == PUB_KEY_ID

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("wechatpayv3 went to the network")

    monkeypatch.setattr(wechatpayv3.core.requests, "get", no_network)
    decoded = real_library(env.config).callback(dict(note.headers), note.body)
    assert decoded is not None and decoded["event_type"] == "TRANSACTION.SUCCESS"
    assert decoded["resource"]["out_trade_no"] == "NT2021000001"
    assert decoded["resource"]["amount"]["total"] == 38000
    assert decoded["resource"] == parsed.raw["resource"]
    # and the real library rejects what we reject on the signature
    tampered = note.body.replace(b'"summary":"', b'"summary":"x')
    assert real_library(env.config).callback(dict(note.headers), tampered) is None


def test_redelivery_shares_the_dedupe_key(env: Env, paid_trade: SimTrade) -> None:
    first = verify(env.config, env.sim.payment_notification(paid_trade, PayOptions()))
    second = verify(env.config, env.sim.payment_notification(paid_trade, PayOptions()))
    assert first.dedupe_key == second.dedupe_key


def test_amount_fault_shows_in_notification_and_query(env: Env) -> None:
    env.client.create(order(env, "AM2021000001", amount_fen=38000))
    env.pay("AM2021000001", amount_fen=100)
    headers, body, _ = env.received[-1]
    assert verify(env.config, OutgoingNotification("", headers, body)).amount_fen == 100
    assert env.client.query("AM2021000001").amount_fen == 100


def test_tampered_body_fails(env: Env, paid_trade: SimTrade) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions())
    with pytest.raises(VerificationFailed, match="signature"):
        verify(env.config, note, body=note.body.replace(b'"summary":"', b'"summary":"x'))


def test_bad_signature_option_fails(env: Env, paid_trade: SimTrade) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions(bad_signature=True))
    with pytest.raises(VerificationFailed, match="signature"):
        verify(env.config, note)
    assert real_library(env.config).callback(dict(note.headers), note.body) is None


def test_bad_signature_delivery_gets_the_failure_answer(env: Env) -> None:
    env.client.create(order(env, "BD2021000001"))
    answer = env.pay("BD2021000001", bad_signature=True)
    assert answer["deliveries"][0]["status"] == 400
    assert json.loads(answer["deliveries"][0]["body"])["code"] == "FAIL"


def test_wrong_public_key_fails(env: Env, paid_trade: SimTrade) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions())
    with pytest.raises(VerificationFailed, match="signature"):
        verify(make_config(public_key_pem=rsa_pem_pair("wechat-stranger")[1]), note)


def test_wrong_apiv3_key_fails(env: Env, paid_trade: SimTrade) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions())
    with pytest.raises(VerificationFailed, match="decrypt"):
        verify(make_config(apiv3_key="B" * 32), note)


def test_other_app_or_merchant_fails(env: Env, paid_trade: SimTrade) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions())
    with pytest.raises(VerificationFailed, match="appid"):
        verify(make_config(appid="wx0000000000000000"), note)
    with pytest.raises(VerificationFailed, match="mchid"):
        verify(make_config(mchid="1900000999"), note)
    # a correctly signed notification whose resource names another merchant
    resource = env.sim.transaction(paid_trade, as_paid=True) | {"mchid": "1900000999"}
    forged = env.sim.build_event(env.notify_url, "TRANSACTION.SUCCESS", "支付成功",
                                 "transaction", resource)
    with pytest.raises(VerificationFailed, match="mchid"):
        verify(env.config, forged)


def test_unknown_serial_fails_before_any_library_call(
        env: Env, paid_trade: SimTrade, monkeypatch: pytest.MonkeyPatch) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions())
    monkeypatch.setattr(wechatpayv3.core.requests, "get", None)   # any use would blow up
    headers = dict(note.headers, **{"Wechatpay-Serial": "5157F09EFDC096DE15EBE81A47057A72"})
    with pytest.raises(VerificationFailed, match="Serial"):
        verify(env.config, note, headers=headers)


def test_signtest_probe_fails(env: Env, paid_trade: SimTrade) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions(event="SIGNTEST"))
    assert note.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    with pytest.raises(VerificationFailed, match="probe"):
        verify(env.config, note)
    assert real_library(env.config).callback(dict(note.headers), note.body) is None


def test_timestamp_window(env: Env, paid_trade: SimTrade) -> None:
    now = int(datetime.now(UTC).timestamp())
    at = datetime.fromtimestamp(now, UTC)
    for offset in (-300, 300, -3600):
        stale = env.sim.build_notification(paid_trade, PayOptions(), timestamp=now + offset)
        with pytest.raises(VerificationFailed, match="5 minutes"):
            verify(env.config, stale, now=at)
    # wechatpayv3 would have accepted the hour-old one: the window is ours
    old = env.sim.build_notification(paid_trade, PayOptions(), timestamp=now - 3600)
    assert real_library(env.config).callback(dict(old.headers), old.body) is not None
    for offset in (-299, 299):
        fresh = env.sim.build_notification(paid_trade, PayOptions(), timestamp=now + offset)
        assert verify(env.config, fresh, now=at).succeeded


def test_missing_or_odd_headers_fail(env: Env, paid_trade: SimTrade) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions())
    for name in ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce",
                 "Wechatpay-Serial"):
        headers = {k: v for k, v in note.headers.items() if k != name}
        with pytest.raises(VerificationFailed):
            verify(env.config, note, headers=headers)
    with pytest.raises(VerificationFailed, match="Signature-Type"):
        sm2 = {"Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"}
        verify(env.config, note, headers=dict(note.headers, **sm2))
    with pytest.raises(VerificationFailed, match="Unix seconds"):
        verify(env.config, note, headers=dict(note.headers, **{"Wechatpay-Timestamp": "1e9"}))
    # lower-case names, as Starlette gives them, are fine
    lower = {k.lower(): v for k, v in note.headers.items()}
    assert verify(env.config, note, headers=lower).succeeded


def refund_resource(trade: SimTrade, status: str, refund_fen: int = 38000) -> dict[str, Any]:
    return {"mchid": MCHID, "transaction_id": trade.transaction_id,
            "out_trade_no": trade.out_trade_no, "refund_id": "50300000000000000000000000001",
            "out_refund_no": "RF1", "refund_status": status,
            "user_received_account": "支付用户零钱",
            "amount": {"total": 38000, "refund": refund_fen, "payer_total": 38000,
                       "payer_refund": refund_fen}}


def test_refund_closed_and_abnormal_are_not_successes(env: Env, paid_trade: SimTrade) -> None:
    for event_type, status in (("REFUND.CLOSED", "CLOSED"), ("REFUND.CLOSED", "CLOSE"),
                               ("REFUND.ABNORMAL", "ABNORMAL")):
        note = env.sim.build_event(env.notify_url, event_type, "退款关闭", "refund",
                                   refund_resource(paid_trade, status))
        parsed = verify(env.config, note)
        assert (parsed.kind, parsed.succeeded, parsed.trade_state) == ("refund", False, status)
        assert parsed.refund_fen == 38000 and parsed.out_refund_no == "RF1"
    inconsistent = env.sim.build_event(env.notify_url, "REFUND.SUCCESS", "退款成功", "refund",
                                       refund_resource(paid_trade, "CLOSED"))
    with pytest.raises(VerificationFailed):
        verify(env.config, inconsistent)


def test_other_event_types_change_nothing(env: Env, paid_trade: SimTrade) -> None:
    note = env.sim.build_event(env.notify_url, "TRANSACTION.SOMETHING", "其他", "transaction",
                               env.sim.transaction(paid_trade, as_paid=True))
    parsed = verify(env.config, note)
    assert (parsed.kind, parsed.succeeded, parsed.amount_fen) == ("other", False, 0)


def test_capabilities_match_the_protocols(env: Env) -> None:
    client: PaymentClient = env.client
    verifier: NotificationVerifier = WechatNotificationVerifier(env.config)
    sim: ChannelSimulator = env.sim
    assert client.channel is verifier.channel is sim.channel is Channel.WECHAT


def test_answers() -> None:
    verifier = WechatNotificationVerifier(make_config())
    ok = verifier.success_answer()
    assert (ok.status, ok.body) == (204, b"")
    bad = verifier.failure_answer("验签失败")
    assert bad.status == 400
    assert json.loads(bad.body) == {"code": "FAIL", "message": "验签失败"}


def test_simulator_refuses_a_platform_key_that_does_not_match_the_config() -> None:
    with pytest.raises(ValueError):
        WechatSimulator(SandboxState(), make_config(), rsa_pem_pair("wechat-stranger")[0])
