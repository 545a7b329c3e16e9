"""WeChat Pay APIv3: client ↔ simulator over HTTP on loopback, and the notification verifier."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import wechatpayv3.core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI, Request, Response
from wechatpayv3 import WeChatPay, WeChatPayType

from payment_adapters.base import (
    Channel,
    ChannelError,
    ChannelTimeout,
    Clock,
    CreateRequest,
    Notification,
    NotificationVerifier,
    OutcomeUnknown,
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
from payment_adapters.sandbox.wechat import (
    WechatSimulator,
    certificate_serial,
    make_platform_certificate,
)
from payment_adapters.wechat import WechatNotificationVerifier, WechatPayClient
from payment_adapters.wechat.client import rfc3339_cst
from payment_adapters.wechat.keys import WechatPayKeys
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


def platform_certificate(folder: Path, *, key_name: str = "wechat-cert",
                         valid_from: timedelta = timedelta(days=-1),
                         valid_to: timedelta = timedelta(days=365),
                         serial: int | None = None) -> tuple[str, str]:
    """A platform certificate (valid in real time from now+valid_from to now+valid_to) over
    the named key, written into ``folder`` as <serial>.pem; returns (cert PEM, serial)."""
    now = datetime.now(UTC)
    pem = make_platform_certificate(rsa_pem_pair(key_name)[0], not_before=now + valid_from,
                                    not_after=now + valid_to, serial=serial)
    number = certificate_serial(x509.load_pem_x509_certificate(pem.encode()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{number}.pem").write_text(pem)
    return pem, number


@dataclass
class Env:
    state: SandboxState
    sim: WechatSimulator
    config: WechatConfig
    base: str                   # the simulator's server
    notify_url: str             # our recording notify endpoint
    client: WechatPayClient
    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)    # paths the simulator was asked

    def client_with(self, **overrides: Any) -> WechatPayClient:
        return WechatPayClient(replace(self.client.config, **overrides))

    def faults(self, **switches: Any) -> None:
        r = httpx.post(f"{self.base}/sandbox/faults", json={"channel": "wechat", **switches})
        assert r.status_code == 200

    def switches(self, **switches: Any) -> dict[str, Any]:
        r = httpx.post(f"{self.base}/sandbox/wechat/switches", json=switches)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def pay(self, out_trade_no: str, **extra: Any) -> dict[str, Any]:
        r = httpx.post(f"{self.base}/sandbox/pay",
                       json={"out_trade_no": out_trade_no, "times": 1, **extra}, timeout=10)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result


Mode = str   # "public_key" | "certificate" | "both": what the merchant's side holds


@pytest.fixture
def make_env(serve: Callable[[FastAPI], ServedApp],
             tmp_path: Path) -> Callable[..., Env]:
    """An Env whose merchant verifies WeChat Pay in ``mode``. The simulator (WeChat) holds
    both the WeChat Pay public key and a platform certificate for the merchant and signs with
    the one the merchant has (the public key when both)."""
    def _make(mode: Mode = "public_key", clock: Clock | None = None) -> Env:
        state = SandboxState(clock) if clock is not None else SandboxState()
        certs = tmp_path / f"certs-{mode}"
        cert_pem, _ = platform_certificate(certs)
        config = make_config()
        if mode == "certificate":
            config = replace(config, public_key_pem="", public_key_id="",
                             platform_certs_dir=str(certs))
        elif mode == "both":
            config = replace(config, platform_certs_dir=str(certs))
        sim = WechatSimulator(state, config, rsa_pem_pair("wechat-platform")[0],
                              certificate=(cert_pem, rsa_pem_pair("wechat-cert")[0]),
                              public_key_id=PUB_KEY_ID,
                              signing="certificate" if mode == "certificate" else "public_key")
        channel_app = FastAPI()
        channel_app.include_router(control_router(state, [sim]))
        asked: list[str] = []

        @channel_app.middleware("http")
        async def count(request: Request, call_next: Any) -> Any:
            asked.append(request.url.path)
            return await call_next(request)

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
            return Response(answer.body, status_code=answer.status,
                            media_type=answer.media_type)

        receiver = serve(ours)
        client = WechatPayClient(replace(config, base_url=channel.base_url + "/sandbox/wechat",
                                         timeout_s=5.0))
        return Env(state=state, sim=sim, config=config, base=channel.base_url,
                   notify_url=receiver.base_url + "/api/v1/notify/wechat", client=client,
                   received=received, requests=asked)

    return _make


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env("public_key")


# Two hours ahead (real time: the simulator of these tests runs on the real clock), with a
# fraction of a second that must not reach WeChat.
def expiry() -> datetime:
    return datetime.now(UTC).replace(microsecond=678000) + timedelta(hours=2)


def order(env: Env, no: str, *, kind: str = "native", amount_fen: int = 38000,
          openid: str | None = None, expires_at: datetime | None = None) -> CreateRequest:
    return CreateRequest(
        out_trade_no=no, amount_fen=amount_fen, description="城乡居民基本养老保险2021年度",
        expires_at=expires_at or expiry(), notify_url=env.notify_url,
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
    sent = trade.extra["time_expire"]
    assert sent is not None and sent.utcoffset() == timedelta(hours=8)
    assert sent.microsecond == 0 and trade.expires_at == sent


def test_create_native_answers_code_url_as_qr_content(env: Env) -> None:
    request = order(env, "NA2021000001")
    result = env.client.create(request)
    assert result.qr_content is not None
    assert result.qr_content.startswith("weixin://wxpay/bizpayurl/up?pr=")
    assert result.request_payment is None and result.prepay_id is None
    # re-ordering with the same parameters (time_expire included: WeChat refuses a changed
    # one) is allowed and gives the same QR
    assert env.client.create(request).qr_content == result.qr_content


def test_create_rejects_bad_requests_before_calling(env: Env) -> None:
    with pytest.raises(ValueError):
        env.client.create(order(env, "JS2021000002", kind="jsapi", openid=""))
    with pytest.raises(ValueError):
        env.client.create(order(env, "short"))
    with pytest.raises(ValueError):
        env.client.create(order(env, "QR2021000002", kind="qr"))
    assert env.state.find("JS2021000002") is None


def test_same_out_trade_no_with_another_amount_is_refused(env: Env) -> None:
    until = expiry()     # the same time_expire: only the amount differs
    env.client.create(order(env, "DU2021000001", amount_fen=38000, expires_at=until))
    with pytest.raises(ChannelError) as caught:
        env.client.create(order(env, "DU2021000001", amount_fen=20000, expires_at=until))
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


def test_answer_signed_by_another_key_is_an_unknown_outcome(env: Env) -> None:
    env.client.create(order(env, "BS2021000001"))
    wrong = env.client_with(public_key_pem=rsa_pem_pair("wechat-stranger")[1])
    with pytest.raises(OutcomeUnknown) as caught:
        wrong.query("BS2021000001")
    assert caught.value.code == "unverified_answer" and caught.value.retryable
    assert "signature does not verify" in str(caught.value)


def test_answer_under_another_serial_fails_without_fetching_certificates(env: Env) -> None:
    env.client.create(order(env, "BS2021000002"))
    other = env.client_with(public_key_id="PUB_KEY_ID_0000000000000000000000000000000000")
    env.requests.clear()
    with pytest.raises(OutcomeUnknown) as caught:
        other.query("BS2021000002")
    assert caught.value.code == "unverified_answer"
    assert "Wechatpay-Serial" in str(caught.value)
    # one request, the query: nothing went to fetch certificates
    assert env.requests == ["/sandbox/wechat/v3/pay/transactions/out-trade-no/BS2021000002"]


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


def test_refused_connection_is_a_definite_failure(env: Env) -> None:
    # Nothing listens on the port: the request never left, so nothing happened at WeChat.
    nowhere = env.client_with(base_url=f"http://127.0.0.1:{free_port()}/sandbox/wechat")
    for call in (lambda: nowhere.create(order(env, "UR2021000001")),
                 lambda: nowhere.refund(RefundRequest(out_trade_no="UR2021000001",
                                                      out_refund_no="UR1", total_fen=100,
                                                      refund_fen=100, reason=""))):
        with pytest.raises(ChannelError) as caught:
            call()
        assert not isinstance(caught.value, OutcomeUnknown)
        assert caught.value.code == "channel_error" and "nothing was sent" in str(caught.value)


def test_connection_lost_after_sending_is_an_unknown_outcome(env: Env) -> None:
    # A server that reads the request and hangs up without answering: it may have acted.
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        rude = env.client_with(base_url=f"http://127.0.0.1:{port}/sandbox/wechat")
        with pytest.raises(OutcomeUnknown) as caught:
            rude.create(order(env, "CL2021000009"))
        assert caught.value.code == "connection_lost"
    finally:
        listener.close()


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
    """wechatpayv3 as the merchant of ``config``: public-key mode, else certificate mode with
    the same folder (its cert_dir)."""
    keys: dict[str, Any] = (
        {"public_key": config.public_key_pem, "public_key_id": config.public_key_id}
        if config.public_key_pem else {"cert_dir": config.platform_certs_dir})
    return WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=config.mchid,
                     private_key=config.mch_private_key_pem, cert_serial_no=config.mch_serial,
                     appid=config.appid, apiv3_key=config.apiv3_key,
                     notify_url="https://pay.example.com/notify", timeout=5, **keys)


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


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(httpx.Client, "send", refuse)


def test_unknown_serial_fails_offline(
        env: Env, paid_trade: SimTrade, monkeypatch: pytest.MonkeyPatch) -> None:
    note = env.sim.payment_notification(paid_trade, PayOptions())
    no_network(monkeypatch)
    for serial in ("5157F09EFDC096DE15EBE81A47057A72", "PUB_KEY_ID_0000000000000000000000",
                   "not hex at all", "F" * 41):
        headers = dict(note.headers, **{"Wechatpay-Serial": serial})
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


# ====================================================================== which key verifies
def serial_of(env: Env, signing: str) -> str:
    if signing == "public_key":
        return PUB_KEY_ID
    return certificate_serial(x509.load_pem_x509_certificate(
        next(Path(env.config.platform_certs_dir).glob("*.pem")).read_bytes()))


@pytest.mark.parametrize("mode", ["public_key", "certificate", "both"])
def test_answers_and_notifications_verify_in_each_mode(make_env: Callable[..., Env],
                                                       mode: str) -> None:
    env = make_env(mode)
    signings = ["public_key", "certificate"] if mode == "both" else [mode]
    for n, signing in enumerate(signings):
        env.switches(signing=signing)
        no = f"MD{n}2021000001"
        assert env.client.create(order(env, no, kind="jsapi")).prepay_id
        assert env.client.query(no).state == "pending"
        paid = env.pay(no)
        assert paid["notifications"][0]["headers"]["Wechatpay-Serial"] == serial_of(env, signing)
        assert [d["status"] for d in paid["deliveries"]] == [204]
        assert env.client.query(no).state == "paid"
        refund = env.client.refund(RefundRequest(out_trade_no=no, out_refund_no=f"RF{no}",
                                                 total_fen=38000, refund_fen=38000, reason=""))
        assert refund.state == "success"
        trade = env.state.get(Channel.WECHAT, no)
        assert trade is not None
        note = env.sim.refund_notification(
            trade, dict(trade.refunds[0], notify_url=env.notify_url))
        assert note is not None and note.headers["Wechatpay-Serial"] == serial_of(env, signing)
        assert verify(env.config, note).refund_id == refund.refund_id
        # the real library, as the same merchant, accepts them too (it holds one kind of key
        # at a time: with a public key it would download certificates for another serial)
        holder = (replace(env.config, public_key_pem="", public_key_id="")
                  if signing == "certificate" else env.config)
        assert real_library(holder).callback(dict(note.headers), note.body) is not None


@pytest.mark.parametrize("mode, foreign", [("public_key", "certificate"),
                                           ("certificate", "public_key")])
def test_a_key_the_merchant_does_not_hold_fails(make_env: Callable[..., Env], mode: str,
                                                foreign: str) -> None:
    env = make_env(mode)
    env.client.create(order(env, "FK2021000001"))
    env.switches(signing=foreign)
    with pytest.raises(OutcomeUnknown, match="Wechatpay-Serial"):
        env.client.query("FK2021000001")
    answer = env.pay("FK2021000001")
    assert answer["deliveries"][0]["status"] == 400
    assert "Wechatpay-Serial" in json.loads(answer["deliveries"][0]["body"])["message"]


@pytest.mark.parametrize("window", [(timedelta(days=-400), timedelta(days=-1)),
                                    (timedelta(days=1), timedelta(days=400))],
                         ids=["expired", "not-yet-valid"])
def test_a_certificate_outside_its_validity_is_refused_offline(
        make_env: Callable[..., Env], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        window: tuple[timedelta, timedelta]) -> None:
    env = make_env("certificate")
    folder = Path(env.config.platform_certs_dir)
    old_pem, old_serial = platform_certificate(folder, key_name="wechat-cert-old",
                                               valid_from=window[0], valid_to=window[1])
    sim = WechatSimulator(env.state, env.config,
                          certificate=(old_pem, rsa_pem_pair("wechat-cert-old")[0]))
    env.client.create(order(env, "EX2021000001"))
    env.pay("EX2021000001")
    trade = env.state.get(Channel.WECHAT, "EX2021000001")
    assert trade is not None
    note = sim.payment_notification(trade, PayOptions())
    assert note.headers["Wechatpay-Serial"] == old_serial
    verifier = WechatNotificationVerifier(env.config)
    no_network(monkeypatch)
    with pytest.raises(VerificationFailed, match="not valid now"):
        verifier.verify(dict(note.headers), note.body, datetime.now(UTC))


def test_a_rotated_certificate_put_in_the_folder_is_used_without_a_restart(
        make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env("certificate")
    verifier = WechatNotificationVerifier(env.config)     # built before the new certificate
    env.client.create(order(env, "RO2021000001"))
    env.pay("RO2021000001")
    trade = env.state.get(Channel.WECHAT, "RO2021000001")
    assert trade is not None
    new_pem, new_serial = platform_certificate(Path(env.config.platform_certs_dir),
                                               key_name="wechat-cert-new")
    sim = WechatSimulator(env.state, env.config,
                          certificate=(new_pem, rsa_pem_pair("wechat-cert-new")[0]))
    note = sim.payment_notification(trade, PayOptions())
    no_network(monkeypatch)
    assert note.headers["Wechatpay-Serial"] == new_serial
    assert verifier.verify(dict(note.headers), note.body, datetime.now(UTC)).succeeded


def test_the_keys_refuse_configurations_that_cannot_verify(tmp_path: Path) -> None:
    public = rsa_pem_pair("wechat-platform")[1]
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "no key to verify"),
        ({"public_key_pem": public}, "go together"),
        ({"public_key_id": PUB_KEY_ID}, "go together"),
        ({"public_key_pem": public, "public_key_id": "0123ABCD"}, "PUB_KEY_ID_"),
        ({"platform_certs_dir": str(tmp_path / "missing")}, "not a folder"),
        ({"platform_certs_dir": str(tmp_path)}, "no platform certificate"),
    ]
    for fields, words in cases:
        with pytest.raises(ValueError, match=words):
            WechatPayKeys(**fields)


def test_requests_name_the_key_we_verify_with(make_env: Callable[..., Env]) -> None:
    now = datetime.now(UTC)
    assert make_env("both").client.keys.accept_serial(now) == PUB_KEY_ID
    cert_only = make_env("certificate")
    assert cert_only.client.keys.accept_serial(now) == serial_of(cert_only, "certificate")


def test_live_mode_refuses_to_start_without_a_way_to_verify_wechat_pay() -> None:
    from backend.config import ConfigError, Settings

    live: dict[str, Any] = {"wechat_mchid": "1900000109", "alipay_appid": "2021000117600001",
                            "unionpay_mid": "898340149000005", "unionpay_tid": "88880001",
                            "unionpay_msg_src": "WWW.DISTRICT.GOV.CN",
                            "unionpay_msg_src_id": "3194", "unionpay_key": "k" * 32,
                            "public_base_url": "https://collection.example.org",
                            "receipt_signing_key": "/run/secrets/receipts.pem",
                            "app_secret": "s" * 40, "pii_key": "a2tra2tra2tra2tra2tra2tra2tra2"
                                                              "tra2tra2tra2s="}
    with pytest.raises(ConfigError, match="WECHAT_PLATFORM_CERTS_DIR"):
        Settings(**live).check_live_mode()
    with pytest.raises(ConfigError, match="go together"):
        Settings(**live, wechat_public_key_id=PUB_KEY_ID).check_live_mode()
    for works in (Settings(**live, wechat_platform_certs_dir="/etc/wechatpay"),
                  Settings(**live, wechat_public_key="/etc/wechatpay/pub_key.pem",
                           wechat_public_key_id=PUB_KEY_ID)):
        assert works.sandbox is False and works.live_mode_problems() == []


# ====================================================================== answers signed badly
def test_an_answer_signed_badly_is_an_unknown_outcome_not_a_failure(env: Env) -> None:
    env.switches(bad_answer_signature=True)
    with pytest.raises(OutcomeUnknown) as caught:
        env.client.create(order(env, "PR2021000001"))
    assert caught.value.code == "unverified_answer" and "probe" in str(caught.value)
    # WeChat did take the order
    assert env.state.get(Channel.WECHAT, "PR2021000001") is not None
    with pytest.raises(OutcomeUnknown):
        env.client.query("PR2021000001")
    env.switches(bad_answer_signature=False)
    assert env.client.query("PR2021000001").state == "pending"


# ====================================================================== no wechatpayv3 internals
def test_the_adapters_do_not_use_wechatpayv3() -> None:
    import subprocess
    import sys

    code = ("import sys, payment_adapters.wechat, payment_adapters.sandbox.wechat, "
            "backend.channels, backend.auth.service; "
            "sys.exit('wechatpayv3' in sys.modules or 'wechatpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
def test_the_real_wechatpayv3_library_works_against_the_simulator(
        make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """wechatpayv3 signs its requests, and checks the signature of every 2xx answer (raising
    if it does not verify): driving the simulator with it checks both sides."""
    import requests

    env = make_env(mode)
    gateway = env.base + "/sandbox/wechat"
    real = {name: getattr(requests, name) for name in ("get", "post")}

    def redirect(name: str) -> Callable[..., Any]:
        def call(url: str, **kwargs: Any) -> Any:
            assert "/v3/certificates" not in url
            return real[name](url.replace("https://api.mch.weixin.qq.com", gateway), **kwargs)
        return call

    for name in real:
        monkeypatch.setattr(wechatpayv3.core.requests, name, redirect(name))
    wx = real_library(env.config)
    code, text = wx.pay(description="城乡居民基本医疗保险2021年度", out_trade_no="WX2021000001",
                        amount={"total": 28000}, time_expire=rfc3339_cst(expiry()),
                        notify_url=env.notify_url, pay_type=WeChatPayType.NATIVE)
    assert code == 200 and json.loads(text)["code_url"].startswith("weixin://")
    code, text = wx.query(out_trade_no="WX2021000001")
    assert code == 200 and json.loads(text)["trade_state"] == "NOTPAY"
    env.pay("WX2021000001")
    code, text = wx.refund(out_refund_no="WXRF1", amount={"refund": 28000, "total": 28000,
                                                          "currency": "CNY"},
                           out_trade_no="WX2021000001", reason="重复缴费退款")
    assert code == 200 and json.loads(text)["status"] == "SUCCESS"
    code, text = wx.query_refund(out_refund_no="WXRF1")
    assert code == 200 and json.loads(text)["refund_id"].startswith("5030")
    assert wx.close(out_trade_no="WX2021000001")[0] == 400      # paid: ORDERPAID


# ====================================================================== refunds: query, notify
def test_query_refund_follows_a_processing_refund_to_its_end(env: Env) -> None:
    no = "QR2021000001"
    env.client.create(order(env, no))
    env.pay(no)
    env.switches(refunds_processing=True)
    req = RefundRequest(out_trade_no=no, out_refund_no="QRRF1", total_fen=38000,
                        refund_fen=28000, reason="重复缴费退款", notify_url=env.notify_url)
    asked = env.client.refund(req)
    assert asked.state == "processing" and asked.refund_id is not None
    assert env.client.query_refund(req).state == "processing"
    settled = httpx.post(f"{env.base}/sandbox/wechat/refunds/QRRF1/settle",
                         json={"status": "SUCCESS"})
    assert settled.status_code == 200, settled.text
    assert [d["status"] for d in settled.json()["deliveries"]] == [204]
    headers, body, _ = env.received[-1]
    note = verify(env.config, OutgoingNotification("", headers, body))
    assert (note.kind, note.succeeded, note.out_refund_no) == ("refund", True, "QRRF1")
    assert note.refund_id == asked.refund_id          # WeChat's refund id, not a payment's
    assert note.refund_id != note.transaction_id
    done = env.client.query_refund(req)
    assert (done.state, done.refund_id) == ("success", asked.refund_id)
    # a refund WeChat closes is a failure
    env.client.refund(replace(req, out_refund_no="QRRF2", refund_fen=1))
    httpx.post(f"{env.base}/sandbox/wechat/refunds/QRRF2/settle",
               json={"status": "CLOSED", "deliver": False})
    assert env.client.query_refund(replace(req, out_refund_no="QRRF2",
                                           refund_fen=1)).state == "failed"


def test_query_of_an_unknown_refund_says_so(env: Env) -> None:
    env.client.create(order(env, "QR2021000002"))
    result = env.client.query_refund(RefundRequest(out_trade_no="QR2021000002",
                                                   out_refund_no="NOSUCH", total_fen=38000,
                                                   refund_fen=38000, reason=""))
    assert result.state == "not_found"   # the refund service then sends it again


def test_held_refund_calls_and_what_the_channel_saw(env: Env) -> None:
    """The hold_refunds switch (tests/faults kill the caller while a call waits on it):
    held before the refund, a released call is dropped undone; held after it, the refund is
    done and the answer comes on release. GET /sandbox/refunds/{no} counts what WeChat saw."""
    import threading

    no = "HD2021000001"
    env.client.create(order(env, no))
    env.pay(no)

    def seen(refund_no: str) -> dict[str, Any]:
        r = httpx.get(f"{env.base}/sandbox/refunds/{refund_no}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def held_call(req: RefundRequest, outcome: list[Any]) -> threading.Thread:
        def call() -> None:
            try:
                outcome.append(env.client.refund(req))
            except Exception as exc:   # noqa: BLE001  (the outcome is what is looked at)
                outcome.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        for _ in range(200):
            if httpx.get(f"{env.base}/sandbox/refunds/{req.out_refund_no}").json().get("held"):
                return thread
            thread.join(0.02)
        raise AssertionError("the refund call was never held")

    assert httpx.get(f"{env.base}/sandbox/refunds/HDRF1").status_code == 404
    req = RefundRequest(out_trade_no=no, out_refund_no="HDRF1", total_fen=38000,
                        refund_fen=10000, reason="误缴")
    env.faults(hold_refunds="before_effect")
    outcome: list[Any] = []
    thread = held_call(req, outcome)
    assert seen("HDRF1") == {"out_refund_no": "HDRF1", "calls": 1, "effects": 0,
                             "queries": 0, "held": 1}
    env.faults(hold_refunds="")
    thread.join(10)
    assert isinstance(outcome[0], ChannelError)            # dropped: not done
    assert env.client.query_refund(req).state == "not_found"
    assert seen("HDRF1") == {"out_refund_no": "HDRF1", "calls": 1, "effects": 0,
                             "queries": 1, "held": 0}

    env.faults(hold_refunds="after_effect")
    outcome = []
    thread = held_call(req, outcome)
    trade = env.state.get(Channel.WECHAT, no)
    assert trade is not None and trade.refunded_fen == 10000      # done while held
    assert env.client.query_refund(req).state == "success"
    env.faults(hold_refunds="")
    thread.join(10)
    assert outcome[0].state == "success"
    env.client.refund(req)                                      # a repeat: no second refund
    assert seen("HDRF1") == {"out_refund_no": "HDRF1", "calls": 3, "effects": 1,
                             "queries": 2, "held": 0}
    assert trade.refunded_fen == 10000


# ====================================================================== what WeChat refuses
def signed_request(env: Env, method: str, path: str,
                   body: dict[str, Any] | None = None) -> httpx.Response:
    """A request signed here, independently of the client, so that anything can be sent."""
    import secrets
    import time

    content = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
    ts, nonce = str(int(time.time())), secrets.token_hex(16)
    key = serialization.load_pem_private_key(rsa_pem_pair("wechat-merchant")[0].encode(),
                                             password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = base64.b64encode(key.sign(
        f"{method}\n{path}\n{ts}\n{nonce}\n".encode() + content + b"\n",
        padding.PKCS1v15(), hashes.SHA256())).decode()
    auth = (f'WECHATPAY2-SHA256-RSA2048 mchid="{MCHID}",nonce_str="{nonce}",'
            f'signature="{signature}",timestamp="{ts}",serial_no="{MCH_SERIAL}"')
    return httpx.request(method, f"{env.base}/sandbox/wechat{path}", content=content or None,
                         headers={"Authorization": auth, "Content-Type": "application/json"})


BUSINESS_NOW = datetime.fromisoformat("2020-11-02T09:00:00+08:00")


def order_body(no: str, **changes: Any) -> dict[str, Any]:
    body = {"appid": APPID, "mchid": MCHID, "description": "城乡居民基本医疗保险2021年度",
            "out_trade_no": no, "time_expire": "2020-11-02T09:15:00+08:00",
            "notify_url": "https://pay.example.com/api/v1/notify/wechat",
            "amount": {"total": 28000, "currency": "CNY"}, "payer": {"openid": OPENID}}
    return body | changes


def test_the_simulator_refuses_what_wechat_refuses(make_env: Callable[..., Env]) -> None:
    # The business clock is the simulator's now: 2020-11-02 09:00 Beijing time.
    env = make_env("public_key", clock=lambda: BUSINESS_NOW)
    refused = {
        "out_trade_no": ["A1234", "A" * 33, "AB CD12"],
        "description": ["", "养" * 128],
        "attach": ["x" * 129],
        "notify_url": ["http://pay.example.com/notify", "https://pay.example.com/n?x=1",
                       "https://pay.example.com/n#x", "pay.example.com/notify",
                       "ftp://pay.example.com/notify",
                       "https://pay.example.com/" + "n" * 232],
        "time_expire": ["2020-11-02T08:59:59+08:00", "2020-11-02T00:59:59Z",
                        "2020-11-02 10:00:00+08:00", "2020-11-02T10:00:00", "20201102100000"],
        "payer": [{"openid": "o" * 129}, {}],
    }
    n = 0
    for field_name, values in refused.items():
        for value in values:
            n += 1
            no = value if field_name == "out_trade_no" else f"RS2020{n:06d}"
            r = signed_request(env, "POST", "/v3/pay/transactions/jsapi",
                               order_body(no, **{field_name: value}))
            assert r.status_code == 400, (field_name, value, r.text)
            assert r.json()["code"] == "PARAM_ERROR", (field_name, value)
            assert env.state.get(Channel.WECHAT, no) is None
    accepted: dict[str, Any] = {
        "description": "养" * 127, "attach": "x" * 128,
        "notify_url": ["https://pay.example.com/" + "n" * 231, "http://127.0.0.1:8000/notify",
                       "http://localhost/notify", "http://[::1]:8000/notify"],
        # in the real past, in the business future: the business clock decides
        "time_expire": "2020-11-02T01:00:01Z",
    }
    for field_name, value in accepted.items():
        ones: list[Any] = value if isinstance(value, list) else [value]
        for one in ones:
            n += 1
            r = signed_request(env, "POST", "/v3/pay/transactions/jsapi",
                               order_body(f"RS2020{n:06d}", **{field_name: one}))
            assert r.status_code == 200, (field_name, one, r.text)


def test_a_time_expire_already_past_by_the_business_clock_is_refused(
        make_env: Callable[..., Env]) -> None:
    env = make_env("public_key", clock=lambda: BUSINESS_NOW)
    for no, past in (("TP2020000001", "2020-11-02T08:59:59+08:00"),
                     ("TP2020000002", "2020-11-02T09:00:00+08:00")):
        r = signed_request(env, "POST", "/v3/pay/transactions/native",
                           order_body(no, time_expire=past))
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "PARAM_ERROR" and "time_expire" in r.json()["message"]
        assert env.state.get(Channel.WECHAT, no) is None
    # through the client, the same
    with pytest.raises(ChannelError) as caught:
        env.client.create(order(env, "TP2020000003",
                                expires_at=BUSINESS_NOW - timedelta(minutes=5)))
    assert caught.value.code == "PARAM_ERROR"


def test_time_expire_is_bounded_and_fixed_at_the_first_order(
        make_env: Callable[..., Env]) -> None:
    env = make_env("public_key", clock=lambda: BUSINESS_NOW)
    soon = signed_request(env, "POST", "/v3/pay/transactions/native",
                          order_body("TE2020000001", time_expire="2020-11-02T09:00:30+08:00"))
    assert soon.status_code == 200, soon.text
    trade = env.state.get(Channel.WECHAT, "TE2020000001")
    assert trade is not None and trade.expires_at == BUSINESS_NOW + timedelta(minutes=1)
    far = signed_request(env, "POST", "/v3/pay/transactions/native",
                         order_body("TE2020000002", time_expire="2021-11-02T09:00:00+08:00"))
    assert far.status_code == 200
    trade = env.state.get(Channel.WECHAT, "TE2020000002")
    assert trade is not None and trade.expires_at == BUSINESS_NOW + timedelta(days=90)
    # the same order again is fine; another time_expire for it is not
    again = signed_request(env, "POST", "/v3/pay/transactions/native",
                           order_body("TE2020000002", time_expire="2021-11-02T09:00:00+08:00"))
    assert again.status_code == 200
    moved = signed_request(env, "POST", "/v3/pay/transactions/native",
                           order_body("TE2020000002", time_expire="2020-11-02T10:00:00+08:00"))
    assert moved.status_code == 400 and "time_expire" in moved.json()["message"]


def test_the_simulator_refuses_refunds_wechat_refuses(env: Env) -> None:
    no = "RR2021000001"
    env.client.create(order(env, no))
    env.pay(no)
    refund = {"out_trade_no": no, "out_refund_no": "RR1",
              "amount": {"refund": 100, "total": 38000, "currency": "CNY"}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"reason": "退" * 27}, "PARAM_ERROR"),                  # 81 bytes
        ({"notify_url": "http://pay.example.com/notify"}, "PARAM_ERROR"),
        ({"notify_url": "https://pay.example.com/" + "n" * 233}, "PARAM_ERROR"),
        ({"out_refund_no": "R" * 65}, "PARAM_ERROR"),
    ]
    for change, code in cases:
        r = signed_request(env, "POST", "/v3/refund/domestic/refunds", refund | change)
        assert r.status_code == 400 and r.json()["code"] == code, (change, r.text)
    ok = signed_request(env, "POST", "/v3/refund/domestic/refunds",
                        refund | {"reason": "退款" + "x" * 74})               # 80 bytes
    assert ok.status_code == 200, ok.text
    # an out_refund_no is the merchant's, once: not again for another trade
    env.client.create(order(env, "RR2021000002"))
    env.pay("RR2021000002")
    other = signed_request(env, "POST", "/v3/refund/domestic/refunds",
                           refund | {"out_trade_no": "RR2021000002"})
    assert other.status_code == 400 and other.json()["code"] == "INVALID_REQUEST"
    # a year after the payment, no more refunds
    trade = env.state.get(Channel.WECHAT, "RR2021000002")
    assert trade is not None and trade.paid_at is not None
    paid_at = trade.paid_at
    env.state.update(trade, lambda t: setattr(t, "paid_at", paid_at - timedelta(days=366)))
    late = signed_request(env, "POST", "/v3/refund/domestic/refunds",
                          refund | {"out_trade_no": "RR2021000002", "out_refund_no": "RR3"})
    assert late.status_code == 400 and "一年" in late.json()["message"]


def test_the_client_clips_a_long_refund_reason_to_what_wechat_takes(env: Env) -> None:
    no = "RC2021000001"
    env.client.create(order(env, no))
    env.pay(no)
    env.client.refund(RefundRequest(out_trade_no=no, out_refund_no="RC1", total_fen=38000,
                                    refund_fen=100, reason="重复缴费" * 10))
    trade = env.state.get(Channel.WECHAT, no)
    assert trade is not None
    # 80 bytes at most, in whole characters: 26 of 3 bytes each
    assert trade.refunds[0]["reason"] == "重复缴费" * 6 + "重复"


def test_odd_characters_of_an_out_trade_no_are_signed_as_sent(env: Env) -> None:
    no = "AB|*12-_x"
    env.client.create(order(env, no))
    assert env.client.query(no).state == "pending"
    env.client.close(no)
    assert env.client.query(no).state == "closed"
