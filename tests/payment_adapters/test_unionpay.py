"""ChinaUMS (银联商务) bills QR: client ↔ simulator over loopback HTTP, and the verifier."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from payment_adapters.base import (
    Channel,
    ChannelError,
    ChannelTimeout,
    CreateRequest,
    OutcomeUnknown,
    RefundRequest,
    UnionpayConfig,
    VerificationFailed,
)
from payment_adapters.sandbox.control import control_router
from payment_adapters.sandbox.core import PayOptions, SandboxState, SimTrade
from payment_adapters.sandbox.unionpay import UnionpaySimulator
from payment_adapters.unionpay import (
    UnionpayClient,
    UnionpayNotificationVerifier,
    bill_date_of,
    make_bill_no,
    refund_order_id,
)
from payment_adapters.unionpay.client import BEIJING
from tests.payment_adapters.conftest import ServedApp

KEY = "fakeCommKey0123456789abcdefFAKEfakeFAKEfake012345"
CONFIG = UnionpayConfig(mid="898340149000005", tid="88880001", msg_src_id="3194", key=KEY,
                        msg_src="WWW.TEST.COM")
API_PATH = "/sandbox/unionpay/netpay-route-server/api/"
QR_PREFIX = "https://qr.chinaums.com/bills/qrCode.do?id="


def recipe_sign(fields: dict[str, str], key: str, sign_type: str | None = None) -> str:
    """The notes' rule, written out once more: sorted non-empty k=v&… + key, SHA256/MD5."""
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields)
                    if k != "sign" and fields[k] != "")
    sign_type = sign_type or fields.get("signType", "MD5")
    algo = hashlib.sha256 if sign_type == "SHA256" else hashlib.md5
    return algo((text + key).encode("utf-8")).hexdigest().upper()


@dataclass
class Env:
    base_url: str
    notify_url: str
    state: SandboxState
    sim: UnionpaySimulator
    received: list[bytes] = field(default_factory=list)

    def client(self, *, timeout_s: float = 5.0, **changes: str) -> UnionpayClient:
        values = {"mid": CONFIG.mid, "tid": CONFIG.tid, "msg_src_id": CONFIG.msg_src_id,
                  "key": KEY, "msg_src": CONFIG.msg_src} | changes
        return UnionpayClient(UnionpayConfig(**values, base_url=self.base_url + API_PATH,
                                             timeout_s=timeout_s))

    def create(self, client: UnionpayClient, base: str, amount_fen: int = 38000,
               description: str = "2027年度城乡居民医保+养老 保险") -> str:
        bill_no = client.new_out_trade_no(base)
        client.create(CreateRequest(
            out_trade_no=bill_no, amount_fen=amount_fen, description=description,
            expires_at=datetime.now(UTC) + timedelta(minutes=30),
            notify_url=self.notify_url, kind="qr"))
        return bill_no

    def pay(self, bill_no: str, **extra: Any) -> dict[str, Any]:
        resp = httpx.post(self.base_url + "/sandbox/pay",
                          json={"out_trade_no": bill_no, "times": 1} | extra, timeout=10)
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    def faults(self, **switches: Any) -> None:
        resp = httpx.post(self.base_url + "/sandbox/faults",
                          json={"channel": "unionpay"} | switches, timeout=10)
        assert resp.status_code == 200, resp.text


@pytest.fixture
def env(serve: Callable[[FastAPI], ServedApp]) -> Iterator[Env]:
    state = SandboxState()
    sim = UnionpaySimulator(state, CONFIG)
    app = FastAPI()
    app.include_router(control_router(state, [sim]))
    received: list[bytes] = []
    verifier = UnionpayNotificationVerifier(CONFIG)
    receiver = FastAPI()

    @receiver.post("/api/v1/notify/unionpay")
    async def notify(request: Request) -> Response:
        body = await request.body()
        received.append(body)
        try:
            verifier.verify(dict(request.headers), body, datetime.now(UTC))
            answer = verifier.success_answer()
        except VerificationFailed as exc:
            answer = verifier.failure_answer(str(exc))
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type)

    channel = serve(app)
    ours = serve(receiver)
    yield Env(base_url=channel.base_url, notify_url=ours.base_url + "/api/v1/notify/unionpay",
              state=state, sim=sim, received=received)


# --------------------------------------------------------------------------- bill numbers
def test_bill_no_starts_with_source_id_and_carries_its_bill_date() -> None:
    bill_no = make_bill_no("3194", "A" * 24, date(2026, 9, 1))
    assert bill_no.startswith("3194")
    assert len(bill_no) == 27
    assert bill_date_of(bill_no, "3194") == date(2026, 9, 1)
    assert bill_date_of(make_bill_no("3194", "x1", date(2000, 1, 1)), "3194") == date(2000, 1, 1)
    client = UnionpayClient(CONFIG)
    assert bill_date_of(client.new_out_trade_no("SB1"), "3194") == datetime.now(BEIJING).date()
    with pytest.raises(ValueError):
        make_bill_no("3194", "A" * 25, date(2026, 9, 1))
    with pytest.raises(ValueError):
        make_bill_no("3194", "has-dash", date(2026, 9, 1))
    with pytest.raises(ValueError):
        bill_date_of("9999ABCDEF", "3194")
    with pytest.raises(ValueError):
        bill_date_of(bill_no + "0", "3194")          # 28: longer than ChinaUMS takes


def test_bill_and_refund_numbers_fit_chinaums_27_characters_and_stay_unique() -> None:
    from backend.orders.payment_flow import new_refund_no
    from backend.orders.service import new_order_no

    now = datetime(2020, 11, 2, 9, 0, tzinfo=BEIJING)
    # the service's bases: the order number (21) and a 2-digit attempt number
    bases = {new_order_no(now) + f"{n:02d}" for _ in range(200) for n in (1, 2)}
    bills = {make_bill_no("3194", base, now.date()) for base in bases}
    assert len(bills) == len(bases) == 400
    for bill_no in bills:
        assert 7 <= len(bill_no) <= 27 and bill_no.startswith("3194")
        assert bill_date_of(bill_no, "3194") == now.date()
    # the same base on another day is another bill
    base = next(iter(bases))
    assert make_bill_no("3194", base, now.date()) != make_bill_no("3194", base, date(2020, 11, 3))
    refund_nos = {new_refund_no() for _ in range(1000)}
    assert len(refund_nos) == 1000
    for no in refund_nos:
        rid = refund_order_id("3194", no)
        assert rid == "3194" + no and len(rid) <= 27
    assert refund_order_id("3194", "3194RF0123") == "3194RF0123"
    with pytest.raises(ValueError, match="7-27"):
        refund_order_id("3194", "RF" + "0" * 24)       # 30 with the source id
    with pytest.raises(ValueError):
        refund_order_id("3194", "RF")                  # 6: too short


# --------------------------------------------------------------------------- client ↔ simulator
def test_create_gives_a_chinaums_qr_url_and_a_pending_bill(env: Env) -> None:
    client = env.client()
    bill_no = client.new_out_trade_no("SB2027000123")
    result = client.create(CreateRequest(
        out_trade_no=bill_no, amount_fen=38000, description="2027年度城乡居民医保",
        expires_at=datetime.now(UTC) + timedelta(minutes=30), notify_url=env.notify_url,
        kind="qr"))
    assert result.out_trade_no == bill_no
    assert result.qr_content is not None and result.qr_content.startswith(QR_PREFIX)
    assert result.raw["errCode"] == "SUCCESS"
    # the answer is signed by the rule of the notes, with the hash the request asked for
    assert result.raw["sign"] == recipe_sign(dict(result.raw), KEY, "SHA256")
    trade = env.state.get(Channel.UNIONPAY, bill_no)
    assert trade is not None
    assert (trade.amount_fen, trade.notify_url, trade.state) == (38000, env.notify_url, "pending")
    assert trade.extra["billDate"] == bill_date_of(bill_no, "3194").isoformat()

    status = client.query(bill_no)
    assert (status.state, status.amount_fen, status.transaction_id) == ("pending", 38000, None)
    assert status.merchant_id == CONFIG.mid


def test_create_again_with_the_same_bill_returns_the_same_qr(env: Env) -> None:
    client = env.client()
    bill_no = client.new_out_trade_no("SBAGAIN")
    req = CreateRequest(out_trade_no=bill_no, amount_fen=100, description="x",
                        expires_at=datetime.now(UTC) + timedelta(minutes=5),
                        notify_url=env.notify_url, kind="qr")
    assert client.create(req).qr_content == client.create(req).qr_content


def test_pay_sends_a_notification_we_accept_then_query_says_paid(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBPAY1", 38000)
    result = env.pay(bill_no)
    assert result["deliveries"] == [{"status": 200, "body": "SUCCESS"}]
    assert len(env.received) == 1
    trade = env.state.get(Channel.UNIONPAY, bill_no)
    assert trade is not None and trade.paid_at is not None

    note = UnionpayNotificationVerifier(CONFIG).verify(
        {"content-type": "application/x-www-form-urlencoded"}, env.received[0],
        datetime.now(UTC))
    assert note.kind == "payment" and note.succeeded is True
    assert (note.out_trade_no, note.amount_fen, note.trade_state) == (bill_no, 38000, "PAID")
    assert note.transaction_id == trade.transaction_id
    assert note.paid_at == trade.paid_at and note.paid_at.utcoffset() == timedelta(hours=8)
    assert note.merchant_id == CONFIG.mid
    assert note.raw["billDesc"] == "2027年度城乡居民医保+养老 保险"

    status = client.query(bill_no)
    assert status.state == "paid"
    assert (status.amount_fen, status.transaction_id) == (38000, trade.transaction_id)
    assert status.paid_at == trade.paid_at


def test_the_notification_verifies_by_the_notes_rule_written_independently(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBRECIPE")
    env.pay(bill_no)
    fields = dict(parse_qsl(env.received[0].decode(), keep_blank_values=True))
    assert fields["signType"] == "SHA256" and len(fields["sign"]) == 64
    assert fields["sign"] == recipe_sign(fields, KEY)
    assert recipe_sign(fields, KEY + "x") != fields["sign"]
    payment = json.loads(fields["billPayment"])
    assert payment["status"] == "TRADE_SUCCESS" and payment["totalAmount"] == 38000
    assert fields["totalAmount"] == "38000"
    # the random two-letter field real notifications carry
    assert any(len(k) == 2 for k in fields)


def test_close_then_query_says_closed_and_the_bill_cannot_be_paid(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBCLOSE")
    client.close(bill_no)
    assert client.query(bill_no).state == "closed"
    client.close(bill_no)            # closing a closed bill again is quiet
    resp = httpx.post(env.base_url + "/sandbox/pay", json={"out_trade_no": bill_no}, timeout=10)
    assert resp.status_code == 409


def test_a_bill_past_its_expire_time_can_not_be_paid(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBEXPIRED")
    trade = env.state.get(Channel.UNIONPAY, bill_no)
    assert trade is not None and trade.expires_at is not None
    trade.expires_at = env.state.now() - timedelta(seconds=1)     # its expireTime passed
    resp = httpx.post(env.base_url + "/sandbox/pay", json={"out_trade_no": bill_no}, timeout=10)
    assert resp.status_code == 409 and "expired" in resp.text
    assert client.query(bill_no).state == "pending"


def test_close_of_a_paid_bill_is_refused(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBCLOSEPAID")
    env.pay(bill_no)
    with pytest.raises(ChannelError) as err:
        client.close(bill_no)
    assert err.value.code == "trade_paid"
    assert client.query(bill_no).state == "paid"


def _refund_req(bill_no: str, no: str, fen: int, total: int = 38000) -> RefundRequest:
    return RefundRequest(out_trade_no=bill_no, out_refund_no=no, total_fen=total,
                         refund_fen=fen, reason="重复缴费")


def test_refund_part_then_the_rest(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBREFUND", 38000)
    env.pay(bill_no)
    first = client.refund(_refund_req(bill_no, "RF0000001", 10000))
    assert first.state == "success" and first.out_refund_no == "RF0000001"
    assert first.refund_id and first.raw["refundOrderId"] == "3194RF0000001"
    assert first.raw["refundAmount"] == 10000
    assert client.query(bill_no).state == "paid"

    # Sent again, the refundOrderId answers DUP_ORDER; the client asks bills.query instead.
    again = client.refund(_refund_req(bill_no, "RF0000001", 10000))
    assert (again.state, again.refund_id) == ("success", first.refund_id)
    assert env.sim.calls["bills.refund"] == 2
    trade = env.state.get(Channel.UNIONPAY, bill_no)
    assert trade is not None and trade.refunded_fen == 10000     # no second money movement

    with pytest.raises(ChannelError) as err:
        client.refund(_refund_req(bill_no, "RF0000002", 28001))
    assert err.value.code == "OPERATION_NOT_ALLOWED"

    rest = client.refund(_refund_req(bill_no, "RF0000003", 28000))
    assert rest.state == "success"
    status = client.query(bill_no)
    assert status.state == "refunded" and status.amount_fen == 38000
    assert trade.refunded_fen == 38000


def test_query_refund_reads_the_refund_record_of_bills_query(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBRFQUERY", 38000)
    env.pay(bill_no)
    req = _refund_req(bill_no, "RF0000011", 8000)
    assert client.query_refund(req).state == "not_found"         # not sent yet
    done = client.refund(req)
    calls = env.sim.calls["bills.refund"]
    found = client.query_refund(req)
    assert (found.state, found.refund_id) == ("success", done.refund_id)
    record = found.raw["refundBillPayment"]
    assert record["status"] == "TRADE_SUCCESS" and record["totalAmount"] == 8000
    assert found.raw["sign"] == recipe_sign(
        {k: (json.dumps(v, ensure_ascii=False, separators=(",", ":")) if isinstance(v, dict)
             else str(v)) for k, v in found.raw.items()}, KEY, "SHA256")
    assert env.sim.calls["bills.refund"] == calls                # asked, never sent again
    # another refund number of the same bill is not this one
    assert client.query_refund(_refund_req(bill_no, "RF0000012", 8000)).state == "not_found"
    # a record for another amount than ours is not taken for ours
    with pytest.raises(ChannelError) as err:
        client.query_refund(_refund_req(bill_no, "RF0000011", 7000))
    assert err.value.code == "refund_amount_mismatch"


def test_another_refunds_record_is_never_taken_for_ours(env: Env) -> None:
    """Should ChinaUMS answer the bill's latest refund record whatever refund was asked
    about, a refund never sent must not be recorded as done."""
    client = env.client()
    bill_no = env.create(client, "SBRFOTHER", 38000)
    env.pay(bill_no)
    client.refund(_refund_req(bill_no, "RF0000031", 8000))
    env.state.faults[Channel.UNIONPAY].other_refund_record = True
    with pytest.raises(OutcomeUnknown):
        client.query_refund(_refund_req(bill_no, "RF0000032", 8000))
    # ours still reads as ours
    assert client.query_refund(_refund_req(bill_no, "RF0000031", 8000)).state == "success"


def test_refund_record_states_and_a_missing_bill() -> None:
    bill_no = make_bill_no("3194", "MOCK", date(2026, 9, 1))
    req = _refund_req(bill_no, "RF0000021", 100, total=100)
    base = {"msgType": "bills.query", "billNo": bill_no, "billStatus": "PAID",
            "totalAmount": "100"}

    def record(status: str) -> dict[str, Any]:
        return _signed_answer(**base, refundBillPayment=json.dumps(
            {"merOrderId": "3194RF0000021", "status": status, "totalAmount": 100,
             "targetOrderId": "T1"}, separators=(",", ":")))

    assert _mock_client(record("TRADE_SUCCESS")).query_refund(req).state == "success"
    assert _mock_client(record("TRADE_CLOSED")).query_refund(req).state == "failed"
    assert _mock_client(record("UNKNOWN")).query_refund(req).state == "processing"
    assert _mock_client(record("NEW_ORDER")).query_refund(req).state == "processing"
    # a success that does not say how much is not taken for ours
    no_amount = _signed_answer(**base, refundBillPayment=json.dumps(
        {"merOrderId": "3194RF0000021", "status": "TRADE_SUCCESS", "targetOrderId": "T1"},
        separators=(",", ":")))
    with pytest.raises(ChannelError):
        _mock_client(no_amount).query_refund(req)
    assert _mock_client(_signed_answer(**base)).query_refund(req).state == "not_found"
    for code in ("NO_BILL", "NO_ORDER"):
        missing = _signed_answer(errCode=code, errMsg="无法找到指定的账单")
        assert _mock_client(missing).query_refund(req).state == "not_found"


def test_refund_of_an_unpaid_bill_is_refused(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBREFUNPAID")
    with pytest.raises(ChannelError) as err:
        client.refund(_refund_req(bill_no, "RF0000031", 100))
    assert err.value.code == "OPERATION_NOT_ALLOWED"
    assert "账单未支付" in str(err.value)


def test_timeout_switch_raises_channel_timeout(env: Env) -> None:
    client = env.client(timeout_s=0.5)
    bill_no = env.create(client, "SBTIMEOUT")
    env.faults(timeout=True, hang_s=1.5)
    with pytest.raises(ChannelTimeout) as err:
        client.query(bill_no)
    assert err.value.retryable is True
    env.faults(timeout=False)
    assert client.query(bill_no).state == "pending"


def test_garbage_switch_raises_channel_garbage(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBGARBAGE")
    env.faults(garbage=True)
    with pytest.raises(ChannelError) as err:
        client.query(bill_no)
    assert err.value.code == "channel_garbage"


def test_query_not_found_switch_and_an_unknown_bill_say_not_found(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBNOTFOUND")
    env.faults(query_not_found=True)
    status = client.query(bill_no)
    assert status.state == "not_found" and status.raw["errCode"] == "NO_ORDER"
    env.faults(query_not_found=False)
    assert client.query(bill_no).state == "pending"
    never = client.query(client.new_out_trade_no("NEVERMADE"))
    assert never.state == "not_found" and never.raw["errCode"] == "NO_BILL"


@pytest.mark.parametrize("code", ["NO_BILL", "NO_ORDER"])
def test_both_no_such_bill_codes_are_not_found(code: str) -> None:
    bill_no = make_bill_no("3194", "MOCK", date(2026, 9, 1))
    answer = _signed_answer(errCode=code, errMsg="无法找到指定的账单")
    assert _mock_client(answer).query(bill_no).state == "not_found"


@pytest.mark.parametrize("code", ["TIMEOUT", "SYSTEM_BUSY", "ORDER_PROCESSING", "NET_ERROR",
                                  "INTERNAL_ERROR"])
def test_unknown_outcome_codes_raise_outcome_unknown(env: Env, code: str) -> None:
    client = env.client()
    bill_no = env.create(client, "SBBUSY")
    env.pay(bill_no)
    env.faults(answer_error=code)
    for call in (lambda: client.query(bill_no),
                 lambda: client.refund(_refund_req(bill_no, "RF0000041", 100)),
                 lambda: env.create(client, "SBBUSY2")):
        with pytest.raises(OutcomeUnknown) as err:
            call()
        assert err.value.code == code and err.value.retryable
    trade = env.state.get(Channel.UNIONPAY, bill_no)
    assert trade is not None and trade.refunded_fen == 0          # the fault did nothing
    # a refusal is still a refusal, not "unknown"
    env.faults(answer_error="OPERATION_NOT_ALLOWED")
    with pytest.raises(ChannelError) as refused:
        client.query(bill_no)
    assert not isinstance(refused.value, OutcomeUnknown)


def test_an_answer_lost_after_the_refund_was_done(env: Env) -> None:
    client = env.client()
    bill_no = env.create(client, "SBLOST")
    env.pay(bill_no)
    req = _refund_req(bill_no, "RF0000051", 500)
    env.faults(answer_error="TIMEOUT", error_after_effect=True)
    with pytest.raises(OutcomeUnknown):
        client.refund(req)
    env.faults(answer_error="")
    assert client.query_refund(req).state == "success"
    trade = env.state.get(Channel.UNIONPAY, bill_no)
    assert trade is not None and trade.refunded_fen == 500


class _Dropper:
    """A server that reads the request and closes the connection without an answer."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/api/"
        self.requests = 0

        def serve() -> None:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                conn.recv(65536)
                self.requests += 1
                conn.close()

        threading.Thread(target=serve, daemon=True).start()


def test_a_refused_connection_is_definite_a_dropped_one_unknown() -> None:
    from tests.servers import free_port

    bill_no = make_bill_no("3194", "MOCK", date(2026, 9, 1))
    nobody = UnionpayClient(dataclasses.replace(
        CONFIG, base_url=f"http://127.0.0.1:{free_port()}/api/", timeout_s=2))
    with pytest.raises(ChannelError) as refused:
        nobody.query(bill_no)
    assert not isinstance(refused.value, OutcomeUnknown)
    assert refused.value.code == "channel_unreachable" and "not sent" in str(refused.value)

    dropper = _Dropper()
    try:
        dropped = UnionpayClient(dataclasses.replace(CONFIG, base_url=dropper.url, timeout_s=2))
        with pytest.raises(OutcomeUnknown) as lost:
            dropped.refund(_refund_req(bill_no, "RF0000061", 100))
        assert lost.value.code == "channel_connection_lost" and dropper.requests >= 1
    finally:
        dropper.sock.close()


@pytest.mark.parametrize("exc,unknown", [
    (httpx.ConnectError("refused"), False),
    (httpx.ConnectTimeout("no connection"), False),
    (httpx.PoolTimeout("no free connection"), False),
    (httpx.ReadTimeout("no answer"), True),
    (httpx.WriteTimeout("half sent"), True),
    (httpx.ReadError("reset"), True),
    (httpx.RemoteProtocolError("disconnected"), True),
])
def test_transport_errors_before_and_after_sending(exc: Exception, unknown: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client = UnionpayClient(CONFIG, http=httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(ChannelError) as err:
        client.query(make_bill_no("3194", "MOCK", date(2026, 9, 1)))
    assert isinstance(err.value, OutcomeUnknown) is unknown


@pytest.mark.parametrize("status,unknown", [(502, True), (504, True), (500, True), (404, False)])
def test_http_errors_in_front_of_the_gateway(status: int, unknown: bool) -> None:
    client = UnionpayClient(CONFIG, http=httpx.Client(transport=httpx.MockTransport(
        lambda request: httpx.Response(status, text="<html>gateway</html>"))))
    with pytest.raises(ChannelError) as err:
        client.query(make_bill_no("3194", "MOCK", date(2026, 9, 1)))
    assert isinstance(err.value, OutcomeUnknown) is unknown


def test_a_wrong_key_or_merchant_is_refused(env: Env) -> None:
    with pytest.raises(ChannelError) as err:
        env.create(env.client(key="not-the-key"), "SBWRONGKEY")
    # the refusal is signed with the real key, which our wrong key cannot verify
    assert err.value.code == "channel_garbage"
    with pytest.raises(ChannelError) as err:
        env.create(env.client(mid="898000000000999"), "SBWRONGMID")
    assert err.value.code == "NO_MERCHANT" and "mid" in str(err.value)
    # msgSrc is the merchant's own: the test set's value is no fallback
    with pytest.raises(ChannelError) as err:
        env.create(env.client(msg_src="WWW.OTHER.COM"), "SBWRONGSRC")
    assert err.value.code == "INVALID_MSGSRC"


def _signed_request(**fields: str) -> dict[str, str]:
    body = {"msgId": "m1", "msgSrc": CONFIG.msg_src, "msgType": "bills.getQRCode",
            "requestTimestamp": "2026-09-01 10:15:00", "mid": CONFIG.mid, "tid": CONFIG.tid,
            "instMid": "QRPAYDEFAULT", "billDate": "2026-09-01", "totalAmount": "100",
            "notifyUrl": "http://127.0.0.1:9/n", "signType": "SHA256"} | fields
    body["sign"] = recipe_sign(body, KEY)
    return body


def test_the_simulator_checks_sign_and_bill_no_prefix_like_chinaums(env: Env) -> None:
    url = env.base_url + API_PATH
    good = httpx.post(url, json=_signed_request(billNo="3194ABCDEF1"), timeout=10).json()
    assert good["errCode"] == "SUCCESS" and good["billQRCode"].startswith(QR_PREFIX)
    bad_sign = _signed_request(billNo="3194ABCDEF2")
    bad_sign["totalAmount"] = "1"
    answer = httpx.post(url, json=bad_sign, timeout=10).json()
    assert answer["errCode"] == "BAD_SIGN" and answer["errMsg"] == "签名错误"
    assert answer["sign"] == recipe_sign(answer, KEY, "SHA256")
    foreign = httpx.post(url, json=_signed_request(billNo="9999ABCDEF3"), timeout=10).json()
    assert foreign["errCode"] == "BAD_REQUEST"
    assert env.state.get(Channel.UNIONPAY, "9999ABCDEF3") is None
    # the short path answers too
    short = httpx.post(env.base_url + "/sandbox/unionpay/",
                       json=_signed_request(billNo="3194ABCDEF4"), timeout=10).json()
    assert short["errCode"] == "SUCCESS"
    # "总长度需大于6位，小于28位": 27 is taken, 28 and 6 are not
    for bill_no, err in (("3194" + "A" * 23, "SUCCESS"), ("3194" + "B" * 24, "BAD_REQUEST"),
                         ("3194AB", "BAD_REQUEST")):
        got = httpx.post(url, json=_signed_request(billNo=bill_no), timeout=10).json()
        assert got["errCode"] == err, bill_no
    paid = "3194" + "A" * 23
    trade = env.state.get(Channel.UNIONPAY, paid)
    assert trade is not None
    env.pay(paid)
    refund = _signed_request(msgType="bills.refund", billNo=paid, refundAmount="1",
                             refundOrderId="3194" + "R" * 24)
    refund.pop("notifyUrl")
    refund["sign"] = recipe_sign(refund, KEY)
    got = httpx.post(url, json=refund, timeout=10).json()
    assert got["errCode"] == "BAD_REQUEST" and "refundOrderId" in got["errMsg"]
    assert trade.refunded_fen == 0


# --------------------------------------------------------------------------- answers not trusted
def _mock_client(answer: dict[str, Any] | bytes) -> UnionpayClient:
    def handler(request: httpx.Request) -> httpx.Response:
        content = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        return httpx.Response(200, content=content)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return UnionpayClient(CONFIG, http=http)


def _signed_answer(**fields: Any) -> dict[str, Any]:
    answer = {"errCode": "SUCCESS", "msgType": "bills.query", "mid": CONFIG.mid,
              "tid": CONFIG.tid} | fields
    answer["sign"] = recipe_sign({k: str(v) for k, v in answer.items()}, KEY, "SHA256")
    return answer


def test_a_tampered_or_unsigned_answer_is_garbage() -> None:
    bill_no = make_bill_no("3194", "MOCK", date(2026, 9, 1))
    base = {"billNo": bill_no, "billStatus": "UNPAID", "totalAmount": "100"}
    assert _mock_client(_signed_answer(**base)).query(bill_no).state == "pending"
    tampered = _signed_answer(**base) | {"billStatus": "PAID"}
    with pytest.raises(ChannelError) as err:
        _mock_client(tampered).query(bill_no)
    assert err.value.code == "channel_garbage" and "signature" in str(err.value)
    unsigned = {k: v for k, v in _signed_answer(**base).items() if k != "sign"}
    with pytest.raises(ChannelError) as err:
        _mock_client(unsigned).query(bill_no)
    assert err.value.code == "channel_garbage"
    # an unsigned "no such bill" is a refusal, never not_found
    with pytest.raises(ChannelError) as err:
        _mock_client({"errCode": "NO_ORDER", "errMsg": "账单不存在"}).query(bill_no)
    assert err.value.code == "NO_ORDER"
    with pytest.raises(ChannelError) as err:
        _mock_client(_signed_answer(**base | {"billStatus": "UNKNOWN"})).query(bill_no)
    assert err.value.code == "unknown_state"
    with pytest.raises(ChannelError) as err:
        _mock_client(_signed_answer(**base | {"mid": "898000000000999"})).query(bill_no)
    assert err.value.code == "channel_garbage"
    with pytest.raises(ChannelError) as err:
        _mock_client(b"[1, 2]").query(bill_no)
    assert err.value.code == "channel_garbage"


# --------------------------------------------------------------------------- the verifier
def _paid_trade(amount_fen: int = 38000, paid_fen: int | None = None,
                description: str = "2027年度城乡居民医保+养老 保险") -> SimTrade:
    bill_no = make_bill_no("3194", "SBNOTE", date(2026, 9, 1))
    return SimTrade(
        channel=Channel.UNIONPAY, out_trade_no=bill_no, amount_fen=amount_fen,
        notify_url="http://127.0.0.1:9/api/v1/notify/unionpay", kind="qr",
        description=description, state="paid", transaction_id="202011020000000000000042",
        paid_at=datetime(2026, 9, 1, 2, 15, 9, tzinfo=UTC),
        paid_fen=amount_fen if paid_fen is None else paid_fen,
        extra={"billDate": "2026-09-01", "qrCodeId": "3194260901000001",
               "billQRCode": QR_PREFIX + "3194260901000001",
               "createTime": "2026-09-01 10:15:02"})


def _note(trade: SimTrade, config: UnionpayConfig = CONFIG, **opts: Any) -> bytes:
    sim = UnionpaySimulator(SandboxState(), config)
    return sim.payment_notification(trade, PayOptions(**opts)).body


def _resign(fields: dict[str, str], key: str = KEY) -> bytes:
    fields = dict(fields)
    fields["sign"] = recipe_sign(fields, key)
    return urlencode(fields).encode()


NOW = datetime(2026, 9, 1, 2, 16, tzinfo=UTC)


def test_verifier_parses_the_simulated_notification() -> None:
    trade = _paid_trade()
    verifier = UnionpayNotificationVerifier(CONFIG)
    note = verifier.verify({}, _note(trade), NOW)
    assert (note.channel, note.kind, note.succeeded) == (Channel.UNIONPAY, "payment", True)
    assert (note.amount_fen, note.transaction_id) == (38000, "202011020000000000000042")
    assert note.paid_at == datetime(2026, 9, 1, 10, 15, 9, tzinfo=BEIJING)
    assert note.dedupe_key == f"{trade.out_trade_no}:PAID:00000000042N"
    # a resend has another notifyId and random field, yet the same event key
    assert verifier.verify({}, _note(trade), NOW).dedupe_key == note.dedupe_key
    assert verifier.success_answer().status == 200
    assert verifier.success_answer().body == b"SUCCESS"
    assert verifier.failure_answer("bad").body == b"FAILED"
    assert verifier.failure_answer("bad").status == 200


def test_verifier_honours_the_amount_actually_paid() -> None:
    note = UnionpayNotificationVerifier(CONFIG).verify({}, _note(_paid_trade(38000, 1)), NOW)
    assert note.amount_fen == 1


def test_verifier_accepts_md5_and_lower_case_sign() -> None:
    verifier = UnionpayNotificationVerifier(CONFIG)
    md5 = dict(parse_qsl(_note(_paid_trade(), event="MD5").decode()))
    assert md5["signType"] == "MD5" and len(md5["sign"]) == 32
    assert verifier.verify({}, urlencode(md5).encode(), NOW).succeeded is True
    lower = dict(parse_qsl(_note(_paid_trade()).decode()))
    lower["sign"] = lower["sign"].lower()
    assert verifier.verify({}, urlencode(lower).encode(), NOW).amount_fen == 38000


@pytest.mark.parametrize("change", ["totalAmount", "drop_random_field", "billPayment"])
def test_verifier_rejects_a_tampered_body(change: str) -> None:
    fields = dict(parse_qsl(_note(_paid_trade()).decode()))
    if change == "totalAmount":
        fields["totalAmount"] = "1"
    elif change == "billPayment":
        fields["billPayment"] = fields["billPayment"].replace('"totalAmount":38000',
                                                              '"totalAmount":1')
    else:
        del fields[next(k for k in fields if len(k) == 2)]
    with pytest.raises(VerificationFailed, match="signature"):
        UnionpayNotificationVerifier(CONFIG).verify({}, urlencode(fields).encode(), NOW)


def test_verifier_rejects_a_wrong_key_and_the_bad_signature_option() -> None:
    other = dataclasses.replace(CONFIG, key=KEY + "x")
    with pytest.raises(VerificationFailed, match="signature"):
        UnionpayNotificationVerifier(other).verify({}, _note(_paid_trade()), NOW)
    with pytest.raises(VerificationFailed, match="signature"):
        UnionpayNotificationVerifier(CONFIG).verify(
            {}, _note(_paid_trade(), bad_signature=True), NOW)


@pytest.mark.parametrize("name,value", [("mid", "898000000000999"), ("tid", "99990001")])
def test_verifier_rejects_another_merchant_or_terminal(name: str, value: str) -> None:
    theirs = (dataclasses.replace(CONFIG, mid=value) if name == "mid"
              else dataclasses.replace(CONFIG, tid=value))
    body = _note(_paid_trade(), theirs)       # signed with the right key, for their mid/tid
    with pytest.raises(VerificationFailed, match=f"{name} .* not ours"):
        UnionpayNotificationVerifier(CONFIG).verify({}, body, NOW)


def test_verifier_rejects_a_bill_of_another_source_and_disagreeing_amounts() -> None:
    verifier = UnionpayNotificationVerifier(CONFIG)
    fields = dict(parse_qsl(_note(_paid_trade()).decode()))
    with pytest.raises(VerificationFailed, match="billNo"):
        verifier.verify({}, _resign(fields | {"billNo": "9999ABCDEFG"}), NOW)
    with pytest.raises(VerificationFailed, match="disagrees"):
        verifier.verify({}, _resign(fields | {"totalAmount": "37999"}), NOW)
    with pytest.raises(VerificationFailed, match="malformed"):
        verifier.verify({}, _resign(fields | {"totalAmount": "380.00"}), NOW)


def test_verifier_rejects_malformed_forms() -> None:
    verifier = UnionpayNotificationVerifier(CONFIG)
    body = _note(_paid_trade())
    with pytest.raises(VerificationFailed, match="twice"):
        verifier.verify({}, body + b"&mid=" + CONFIG.mid.encode(), NOW)
    with pytest.raises(VerificationFailed, match="UTF-8"):
        verifier.verify({}, body + b"&x=%FF", NOW)
    with pytest.raises(VerificationFailed, match="sign"):
        verifier.verify({}, b"mid=" + CONFIG.mid.encode(), NOW)
    with pytest.raises(VerificationFailed):
        verifier.verify({}, json.dumps({"mid": CONFIG.mid}).encode(), NOW)


def test_only_a_paid_trade_success_counts_as_money_received() -> None:
    verifier = UnionpayNotificationVerifier(CONFIG)
    refund = verifier.verify({}, _note(_paid_trade(), event="REFUND"), NOW)
    assert (refund.kind, refund.succeeded, refund.trade_state) == ("other", False, "REFUND")
    fields = dict(parse_qsl(_note(_paid_trade()).decode()))
    payment = json.loads(fields["billPayment"]) | {"status": "WAIT_BUYER_PAY"}
    fields["billPayment"] = json.dumps(payment, ensure_ascii=False, separators=(",", ":"))
    waiting = verifier.verify({}, _resign(fields), NOW)
    assert (waiting.kind, waiting.succeeded) == ("payment", False)
