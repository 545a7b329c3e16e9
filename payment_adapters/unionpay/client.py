"""ChinaUMS (银联商务) bills QR code client: the "银商二维码" on the legacy netpay gateway.

One JSON POST endpoint (``config.base_url``, really ``…/netpay-route-server/api/``) that
dispatches on ``msgType``: ``bills.getQRCode``, ``bills.query``, ``bills.closeQRCode``,
``bills.refund``. Requests and answers carry ``sign`` = UPPER(HEX(SHA256 or MD5 of the sorted
non-empty ``k=v&…`` fields with the 通讯密钥 appended)). Amounts are integer fen on the wire.

ChinaUMS wants every billNo and refundOrderId to start with the merchant's 4-character
``msgSrcId`` and to be "总长度需大于6位，小于28位": 7–27 characters. ``bills.query`` and
``bills.refund`` need the ``billDate`` the bill was created with, but the client is only given
the ``billNo``; so the billNo carries its own bill date:
``msgSrcId(4) + base36(days since 2000-01-01, 3 chars) + the base's last 20 characters``.
The service's bases are the order number (``YYYYMMDDHHMMSS`` + 7 random) and a 2-digit
attempt number, 23 characters: the 3 dropped are the order's century and decade, so two
billNos can only meet for attempts made on the same day for orders ten years apart.

Error codes follow ChinaUMS's published list for the bills QR product. ``NO_BILL`` and
``NO_ORDER`` (signed) mean "no such bill"; ``TIMEOUT``, ``SYSTEM_BUSY``, ``ORDER_PROCESSING``,
``NET_ERROR`` and ``INTERNAL_ERROR`` mean the gateway stopped before it could say what happened:
they raise :class:`~payment_adapters.base.OutcomeUnknown`, never a final refusal. A refund's
state is read with ``bills.query`` and its ``refundOrderId`` (the answer's
``refundBillPayment``), never by sending ``bills.refund`` again, which may answer ``DUP_ORDER``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx

from payment_adapters.base import (
    Channel,
    ChannelError,
    ChannelTimeout,
    Clock,
    CreateRequest,
    CreateResult,
    OutcomeUnknown,
    RefundRequest,
    RefundResult,
    RefundState,
    TradeState,
    TradeStatus,
    UnionpayConfig,
    real_clock,
)

BEIJING = ZoneInfo("Asia/Shanghai")
INST_MID = "QRPAYDEFAULT"
SUCCESS = "SUCCESS"
# 找不到请求的原始订单 / 无法找到指定的账单: only a signed one is "not found".
NOT_FOUND_ERR_CODES = frozenset({"NO_ORDER", "NO_BILL"})
# 处理超时, 系统繁忙, 订单正在处理中 (locked by an operation still running), 通讯问题, 内部错误:
# the call may or may not have taken effect.
UNKNOWN_OUTCOME_ERR_CODES = frozenset({
    "TIMEOUT", "SYSTEM_BUSY", "ORDER_PROCESSING", "NET_ERROR", "INTERNAL_ERROR"})
BILL_NO_MIN, BILL_NO_MAX = 7, 27     # "总长度需大于6位，小于28位", refundOrderId alike
GARBAGE = "channel_garbage"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

_BASE_RE = re.compile(r"[0-9A-Za-z]{1,24}")
_ID_RE = re.compile(rf"[0-9A-Za-z]{{{BILL_NO_MIN},{BILL_NO_MAX}}}")
_DATE_CODE_LEN = 3
_DATE_EPOCH = date(2000, 1, 1)
_DIGITS36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BILL_STATES: dict[str, TradeState] = {
    "PAID": "paid", "UNPAID": "pending", "CLOSED": "closed", "REFUND": "refunded",
}
_REFUND_STATES: dict[str, RefundState] = {"SUCCESS": "success", "FAIL": "failed"}
# refundBillPayment.status of a refund record: the refund trade's own status
_REFUND_RECORD_STATES: dict[str, RefundState] = {
    "TRADE_SUCCESS": "success", "TRADE_CLOSED": "failed"}


# --------------------------------------------------------------------------- signing
def sign_text(value: Any) -> str | None:
    """A field's text in the signed string; None for a field that is left out (empty)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        # nested objects (billPayment in answers) are signed as compact JSON in received order
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    text = str(value)
    return text or None


def sign_string(fields: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for name in sorted(fields):
        if name == "sign":
            continue
        text = sign_text(fields[name])
        if text is not None:
            parts.append(f"{name}={text}")
    return "&".join(parts)


def make_sign(fields: Mapping[str, Any], key: str, sign_type: str) -> str:
    data = (sign_string(fields) + key).encode("utf-8")
    if sign_type == "SHA256":
        return hashlib.sha256(data).hexdigest().upper()
    if sign_type == "MD5":
        return hashlib.md5(data).hexdigest().upper()
    raise ValueError(f"unknown signType {sign_type!r}")


def sign_matches(fields: Mapping[str, Any], key: str, *, default_sign_type: str) -> bool:
    """Check ``sign`` against all other fields; ``signType`` says the hash (MD5 when absent)."""
    given = fields.get("sign")
    if not isinstance(given, str) or not given:
        return False
    declared = fields.get("signType")
    sign_type = declared if isinstance(declared, str) and declared else default_sign_type
    if sign_type not in ("SHA256", "MD5"):
        return False
    expected = make_sign(fields, key, sign_type)
    return hmac.compare_digest(expected.encode(), given.upper().encode("utf-8", "replace"))


# --------------------------------------------------------------------------- bill numbers
def _base36(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = _DIGITS36[r] + out
    return out.rjust(width, "0")


def make_bill_no(msg_src_id: str, base: str, bill_date: date) -> str:
    """``msgSrcId + date code + the base's last characters``: the billNo (≤ 27) for an
    attempt created on ``bill_date``."""
    if not _BASE_RE.fullmatch(base):
        raise ValueError(f"base must be 1-24 of [0-9A-Za-z], got {base!r}")
    days = (bill_date - _DATE_EPOCH).days
    if not 0 <= days < 36**_DATE_CODE_LEN:
        raise ValueError(f"bill date {bill_date} out of range")
    room = BILL_NO_MAX - len(msg_src_id) - _DATE_CODE_LEN
    return msg_src_id + _base36(days, _DATE_CODE_LEN) + base[-room:]


def bill_date_of(bill_no: str, msg_src_id: str) -> date:
    """The billDate a billNo made by :func:`make_bill_no` was created for."""
    start = len(msg_src_id)
    code = bill_no[start:start + _DATE_CODE_LEN]
    if (not bill_no.startswith(msg_src_id) or len(bill_no) <= start + _DATE_CODE_LEN
            or not _ID_RE.fullmatch(bill_no) or not all(c in _DIGITS36 for c in code)):
        raise ValueError(f"{bill_no!r} is not a billNo of source {msg_src_id}")
    return _DATE_EPOCH + timedelta(days=int(code, 36))


def refund_order_id(msg_src_id: str, out_refund_no: str) -> str:
    """The refundOrderId of a refund: like a billNo, 7–27 characters after the source id."""
    rid = out_refund_no if out_refund_no.startswith(msg_src_id) else msg_src_id + out_refund_no
    if not _ID_RE.fullmatch(rid):
        raise ValueError(f"refundOrderId {rid!r} (from out_refund_no {out_refund_no!r}) must be "
                         f"{BILL_NO_MIN}-{BILL_NO_MAX} of [0-9A-Za-z]")
    return rid


# --------------------------------------------------------------------------- field parsing
def parse_fen(value: Any) -> int:
    """An amount in fen: a JSON integer or a string of ASCII digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"not an amount in fen: {value!r}")


def parse_beijing(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=BEIJING)


def bill_payment(value: Any) -> dict[str, Any]:
    """``billPayment``: an object in API answers, a JSON string in notifications."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = json.loads(value, parse_float=Decimal)
    if not isinstance(value, dict):
        raise ValueError("billPayment is not an object")
    return value


def bill_amount(fields: Mapping[str, Any], payment: Mapping[str, Any]) -> int:
    """The bill's ``totalAmount``, which the payment's own ``totalAmount`` must agree with."""
    amount = parse_fen(fields.get("totalAmount"))
    if "totalAmount" in payment and parse_fen(payment["totalAmount"]) != amount:
        raise ValueError(f"totalAmount {amount} disagrees with billPayment.totalAmount "
                         f"{payment['totalAmount']}")
    return amount


def now_beijing() -> datetime:
    return datetime.now(BEIJING)


# --------------------------------------------------------------------------- the client
class UnionpayClient:
    """:class:`~payment_adapters.base.PaymentClient` for the ChinaUMS bills QR code."""

    channel = Channel.UNIONPAY

    def __init__(self, config: UnionpayConfig, *, http: httpx.Client | None = None,
                 clock: Clock = real_clock) -> None:
        if len(config.msg_src_id) != 4:
            raise ValueError("msg_src_id must be the 4-character 来源编号")
        self._config = config
        self._http = http
        self._clock = clock          # bill dates; requestTimestamp stays real time

    def new_out_trade_no(self, base: str) -> str:
        return make_bill_no(self._config.msg_src_id, base,
                            self._clock().astimezone(BEIJING).date())

    def create(self, req: CreateRequest) -> CreateResult:
        if req.kind not in ("qr", "native"):
            raise ValueError(f"ChinaUMS bills QR cannot create a {req.kind!r} payment")
        if req.amount_fen <= 0:
            raise ValueError("amount_fen must be positive")
        if req.expires_at.tzinfo is None:
            raise ValueError("expires_at must be aware")
        bill_date = self._bill_date(req.out_trade_no)
        data = self._call("bills.getQRCode", {
            "billNo": req.out_trade_no,
            "billDate": bill_date.isoformat(),
            "billDesc": req.description[:255],
            "totalAmount": str(req.amount_fen),
            "expireTime": req.expires_at.astimezone(BEIJING).strftime(TIME_FORMAT),
            "notifyUrl": req.notify_url,
        })
        self._expect_echo(data, "billNo", req.out_trade_no)
        qr = data.get("billQRCode")
        if not isinstance(qr, str) or not qr.startswith(("https://", "http://")):
            raise ChannelError(f"ChinaUMS bills.getQRCode answered no billQRCode: {qr!r}",
                               code=GARBAGE)
        return CreateResult(out_trade_no=req.out_trade_no, qr_content=qr, raw=data)

    def query(self, out_trade_no: str) -> TradeStatus:
        bill_date = self._bill_date(out_trade_no)
        data = self._call("bills.query",
                          {"billNo": out_trade_no, "billDate": bill_date.isoformat()},
                          not_found_ok=True)
        if data["errCode"] in NOT_FOUND_ERR_CODES:
            return TradeStatus(out_trade_no=out_trade_no, state="not_found", raw=data)
        self._expect_echo(data, "billNo", out_trade_no)
        status = data.get("billStatus")
        state = _BILL_STATES.get(status) if isinstance(status, str) else None
        if state is None:
            raise ChannelError(f"ChinaUMS bills.query: billStatus {status!r} of {out_trade_no} "
                               "is not one we know; query again later",
                               code="unknown_state", retryable=True)
        try:
            payment = bill_payment(data.get("billPayment"))
            amount = bill_amount(data, payment)
            paid_at = parse_beijing(payment["payTime"]) if payment.get("payTime") else None
        except ValueError as exc:
            raise ChannelError(f"ChinaUMS bills.query: {exc}", code=GARBAGE) from exc
        txn = payment.get("targetOrderId")
        mid = data.get("mid")
        return TradeStatus(
            out_trade_no=out_trade_no, state=state, amount_fen=amount,
            transaction_id=txn if isinstance(txn, str) and txn else None,
            paid_at=paid_at, merchant_id=mid if isinstance(mid, str) else None, raw=data)

    def close(self, out_trade_no: str) -> None:
        # closeQRCode wants the qrCodeId ChinaUMS assigned; ask for it rather than keep it.
        status = self.query(out_trade_no)
        if status.state == "not_found":
            raise ChannelError(f"ChinaUMS has no bill {out_trade_no} to close", code="not_found")
        if status.state in ("paid", "refunded"):
            raise ChannelError(f"ChinaUMS bill {out_trade_no} is {status.state}; not closed",
                               code="trade_paid")
        if status.state == "closed":
            return
        qr_code_id = _qr_code_id(status.raw)
        if qr_code_id is None:
            raise ChannelError(f"ChinaUMS bills.query gave no qrCodeId for {out_trade_no}",
                               code=GARBAGE)
        self._call("bills.closeQRCode", {"qrCodeId": qr_code_id})

    def refund(self, req: RefundRequest) -> RefundResult:
        if not 0 < req.refund_fen <= req.total_fen:
            raise ValueError("refund_fen must be positive and at most total_fen")
        bill_date = self._bill_date(req.out_trade_no)
        refund_id = refund_order_id(self._config.msg_src_id, req.out_refund_no)
        try:
            data = self._call("bills.refund", {
                "billNo": req.out_trade_no,
                "billDate": bill_date.isoformat(),
                "refundOrderId": refund_id,
                "refundAmount": str(req.refund_fen),
                "refundDesc": req.reason[:255],
            })
        except ChannelError as exc:
            if exc.code != "DUP_ORDER":
                raise
            # This refundOrderId was sent before: where it stands is the query's to say.
            known = self.query_refund(req)
            if known.state == "not_found":
                raise ChannelError(f"ChinaUMS bills.refund answered DUP_ORDER for {refund_id}, "
                                   "yet bills.query knows no such refund", code="DUP_ORDER",
                                   retryable=True) from exc
            return known
        self._expect_echo(data, "billNo", req.out_trade_no)
        self._expect_echo(data, "refundOrderId", refund_id)
        status = data.get("refundStatus")
        # PROCESSING and UNKNOWN (异常) are no final word: bills.query will tell
        state: RefundState = (_REFUND_STATES.get(status, "processing")
                              if isinstance(status, str) else "processing")
        if state == "success" and "refundAmount" in data:
            self._expect_amount("bills.refund", data["refundAmount"], req)
        target = data.get("refundTargetOrderId")
        return RefundResult(out_refund_no=req.out_refund_no, state=state,
                            refund_id=target if isinstance(target, str) and target else None,
                            raw=data)

    def query_refund(self, req: RefundRequest) -> RefundResult:
        """``bills.query`` with the ``refundOrderId``: its ``refundBillPayment`` is the refund
        record, present only once ChinaUMS has the refund."""
        bill_date = self._bill_date(req.out_trade_no)
        refund_id = refund_order_id(self._config.msg_src_id, req.out_refund_no)
        data = self._call("bills.query", {"billNo": req.out_trade_no,
                                          "billDate": bill_date.isoformat(),
                                          "refundOrderId": refund_id}, not_found_ok=True)
        if data["errCode"] in NOT_FOUND_ERR_CODES:
            return RefundResult(out_refund_no=req.out_refund_no, state="not_found", raw=data)
        self._expect_echo(data, "billNo", req.out_trade_no)
        try:
            record = bill_payment(data.get("refundBillPayment"))
        except ValueError as exc:
            raise ChannelError(f"ChinaUMS bills.query: refundBillPayment: {exc}",
                               code=GARBAGE) from exc
        if not record:
            return RefundResult(out_refund_no=req.out_refund_no, state="not_found", raw=data)
        if record.get("merOrderId") != refund_id:
            # Another refund's record (the bill's latest?) says nothing of ours: ask again.
            raise OutcomeUnknown(f"ChinaUMS bills.query answered the refund record of "
                                 f"{record.get('merOrderId')!r}, not of {refund_id}",
                                 code=GARBAGE)
        status = record.get("status")
        state = (_REFUND_RECORD_STATES.get(status, "processing") if isinstance(status, str)
                 else "processing")
        if state == "success":
            self._expect_amount("bills.query", record.get("totalAmount"), req)
        target = record.get("targetOrderId")
        return RefundResult(out_refund_no=req.out_refund_no, state=state,
                            refund_id=target if isinstance(target, str) and target else None,
                            raw=data)

    # ----------------------------------------------------------------------- the wire
    def _bill_date(self, bill_no: str) -> date:
        return bill_date_of(bill_no, self._config.msg_src_id)

    def _call(self, msg_type: str, fields: Mapping[str, str], *,
              not_found_ok: bool = False) -> dict[str, Any]:
        cfg = self._config
        body: dict[str, Any] = {
            "msgId": uuid.uuid4().hex,
            "msgSrc": cfg.msg_src,
            "msgType": msg_type,
            "requestTimestamp": now_beijing().strftime(TIME_FORMAT),
            "mid": cfg.mid,
            "tid": cfg.tid,
            "instMid": INST_MID,
            **fields,
            "signType": "SHA256",
        }
        body["sign"] = make_sign(body, cfg.key, "SHA256")
        content = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=UTF-8"}
        try:
            if self._http is not None:
                resp = self._http.post(cfg.base_url, content=content, headers=headers,
                                       timeout=cfg.timeout_s)
            else:
                resp = httpx.post(cfg.base_url, content=content, headers=headers,
                                  timeout=cfg.timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError,
                httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            # No connection, or no request on it: nothing reached ChinaUMS.
            raise ChannelError(f"ChinaUMS {msg_type}: not sent ({type(exc).__name__}: {exc})",
                               code="channel_unreachable", retryable=True) from exc
        except httpx.TimeoutException as exc:
            raise ChannelTimeout(
                f"ChinaUMS {msg_type}: no answer within {cfg.timeout_s}s") from exc
        except httpx.HTTPError as exc:
            # Sent, or partly sent, and then the connection failed: it may have arrived.
            raise OutcomeUnknown(f"ChinaUMS {msg_type}: {type(exc).__name__}: {exc}; the "
                                 "outcome is unknown", code="channel_connection_lost") from exc
        return self._answer(msg_type, resp, not_found_ok=not_found_ok)

    def _answer(self, msg_type: str, resp: httpx.Response, *,
                not_found_ok: bool) -> dict[str, Any]:
        def garbage(why: str) -> ChannelError:
            return ChannelError(f"ChinaUMS {msg_type}: {why}", code=GARBAGE,
                                retryable=resp.status_code >= 500)

        if resp.status_code >= 500:
            # Something in front of ChinaUMS answered: the request may have been processed.
            raise OutcomeUnknown(f"ChinaUMS {msg_type}: HTTP {resp.status_code}: "
                                 f"{resp.text[:200]!r}; the outcome is unknown",
                                 code="channel_http_error")
        if resp.status_code != 200:
            raise garbage(f"HTTP {resp.status_code}: {resp.text[:200]!r}")
        try:
            data = json.loads(resp.content, parse_float=Decimal)
        except ValueError:
            raise garbage(f"not JSON: {resp.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise garbage("the answer is not a JSON object")
        err = data.get("errCode")
        if not isinstance(err, str) or not err:
            raise garbage("the answer has no errCode")
        signed = "sign" in data
        if signed and not sign_matches(data, self._config.key, default_sign_type="SHA256"):
            raise garbage("bad response signature")
        if not signed and err == SUCCESS:
            raise garbage("a success answer without a signature")
        for name in ("msgType", "mid", "tid"):
            expected = msg_type if name == "msgType" else getattr(self._config, name)
            if name in data and data[name] != expected:
                raise garbage(f"answer {name} {data[name]!r} is not ours ({expected!r})")
        if err == SUCCESS:
            return data
        if not_found_ok and signed and err in NOT_FOUND_ERR_CODES:
            return data
        message = data.get("errMsg") or data.get("errInfo") or ""
        note = "" if signed else " (unsigned answer)"
        if err in UNKNOWN_OUTCOME_ERR_CODES:
            raise OutcomeUnknown(f"ChinaUMS {msg_type}: {err} {message}{note}; the outcome "
                                 "is unknown: query before assuming anything", code=err)
        raise ChannelError(f"ChinaUMS {msg_type} refused: {err} {message}{note}".rstrip(),
                           code=err)

    @staticmethod
    def _expect_amount(msg_type: str, value: Any, req: RefundRequest) -> None:
        try:
            amount = parse_fen(value)
        except ValueError as exc:
            raise ChannelError(f"ChinaUMS {msg_type}: {exc}", code=GARBAGE) from exc
        if amount != req.refund_fen:
            raise ChannelError(f"ChinaUMS {msg_type}: refund {req.out_refund_no} is for {amount} "
                               f"fen there, not {req.refund_fen}",
                               code="refund_amount_mismatch")

    def _expect_echo(self, data: Mapping[str, Any], name: str, expected: str) -> None:
        if name in data and data[name] != expected:
            raise ChannelError(f"ChinaUMS answered {name} {data[name]!r} for {expected!r}",
                               code=GARBAGE)


def _qr_code_id(data: Mapping[str, Any]) -> str | None:
    qr_code_id = data.get("qrCodeId")
    if isinstance(qr_code_id, str) and qr_code_id:
        return qr_code_id
    url = data.get("billQRCode")
    if isinstance(url, str):
        ids = parse_qs(urlsplit(url).query).get("id")
        if ids and ids[0]:
            return ids[0]
    return None
