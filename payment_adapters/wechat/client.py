"""WeChat Pay APIv3 client (微信支付 APIv3, 微信支付公钥模式): mini-program JSAPI and Native orders.

Built on ``wechatpayv3.WeChatPay``, which signs every request (``Authorization``) and verifies
the signature of every 2xx answer with the WeChat Pay public key. It returns ``(status, text)``
and raises nothing on 4xx/5xx, so every answer is classified here.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import requests
from wechatpayv3 import WeChatPay, WeChatPayType

from payment_adapters.base import (
    Channel,
    ChannelError,
    ChannelTimeout,
    CreateRequest,
    CreateResult,
    RefundRequest,
    RefundResult,
    RefundState,
    TradeState,
    TradeStatus,
    WechatConfig,
)

CST = timezone(timedelta(hours=8))     # WeChat writes every time as RFC3339 in +08:00

_BASE_RE = re.compile(r"[0-9A-Za-z]{1,24}")
OUT_TRADE_NO_RE = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
OUT_REFUND_NO_RE = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")

TRADE_STATES: dict[str, TradeState] = {
    "SUCCESS": "paid",
    "NOTPAY": "pending",
    "USERPAYING": "pending",
    "CLOSED": "closed",
    "REVOKED": "closed",
    "PAYERROR": "closed",
    "REFUND": "refunded",
}
# The refund-closed status is spelled CLOSED (official Go SDK) and CLOSE (openapi enum).
REFUND_STATES: dict[str, RefundState] = {
    "SUCCESS": "success",
    "PROCESSING": "processing",
    "ABNORMAL": "failed",
    "CLOSED": "failed",
    "CLOSE": "failed",
}
# Refusals that say "try again later" rather than "no".
_RETRYABLE_CODES = frozenset({"SYSTEM_ERROR", "SYSTEMERROR", "FREQUENCY_LIMITED", "BANK_ERROR"})


def rfc3339_cst(moment: datetime) -> str:
    """``2026-12-31T23:59:59+08:00``: whole seconds, Beijing offset, as WeChat expects."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a WeChat time needs an aware datetime")
    return moment.astimezone(CST).replace(microsecond=0).isoformat()


def parse_rfc3339(text: Any) -> datetime | None:
    """An aware datetime from WeChat's RFC3339 text, or None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else None


def _fen(value: Any) -> int | None:
    # bool is an int in Python; WeChat amounts are plain non-negative integers of fen.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _garbage(op: str, why: str) -> ChannelError:
    return ChannelError(f"wechat {op}: answer is not WeChat's format: {why}",
                        code="channel_garbage")


def _decode(text: str | bytes) -> str | None:
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return text


def _json_object(text: str | bytes) -> dict[str, Any] | None:
    decoded = _decode(text)
    if decoded is None:
        return None
    try:
        data = json.loads(decoded)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _snippet(text: str | bytes) -> str:
    decoded = _decode(text)
    return repr(decoded[:120] if decoded is not None else text[:120])


def _error_code(text: str | bytes) -> str | None:
    data = _json_object(text)
    code = data.get("code") if data else None
    return code if isinstance(code, str) else None


class WechatPayClient:
    """``PaymentClient`` for WeChat Pay APIv3 in public-key mode."""

    channel = Channel.WECHAT

    def __init__(self, config: WechatConfig) -> None:
        self.config = config
        self._wx = WeChatPay(
            wechatpay_type=WeChatPayType.MINIPROG,
            mchid=config.mchid,
            private_key=config.mch_private_key_pem,
            cert_serial_no=config.mch_serial,
            appid=config.appid,
            apiv3_key=config.apiv3_key,
            timeout=config.timeout_s,       # wechatpayv3's default is no timeout at all
            public_key=config.public_key_pem,
            public_key_id=config.public_key_id,
        )
        core = self._wx._core
        # wechatpayv3 hardcodes https://api.mch.weixin.qq.com in Core._gate_way and offers no
        # parameter for it: setting the attribute is the only way to honour config.base_url
        # (the sandbox, or the backup host api2.mch.weixin.qq.com).
        core._gate_way = config.base_url.rstrip("/")
        # In public-key mode an answer signed under any other Wechatpay-Serial is not WeChat's.
        # Unpatched, wechatpayv3 would then GET /v3/certificates (a network call the answer's
        # sender can trigger) and parse the serial as hex; with this the answer simply fails
        # verification ("failed to verify the signature").
        core._update_certificates = lambda: None

    # ------------------------------------------------------------------ order numbers
    def new_out_trade_no(self, base: str) -> str:
        """WeChat's 商户订单号: 6–32 of [0-9A-Za-z_-|*]; a short base is padded with "_"
        (never in a base, so distinct bases stay distinct)."""
        if not _BASE_RE.fullmatch(base):
            raise ValueError(f"order number base must be 1-24 of [0-9A-Za-z], got {base!r}")
        return base.ljust(6, "_")

    # ------------------------------------------------------------------ calls
    def _call(self, op: str, fn: Callable[..., tuple[int, str | bytes]],
              **kwargs: Any) -> tuple[int, str | bytes]:
        try:
            return fn(**kwargs)
        except requests.Timeout as exc:
            raise ChannelTimeout(
                f"wechat {op}: no answer within {self.config.timeout_s}s "
                f"({type(exc).__name__}); the outcome is unknown") from exc
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            # The request may have reached WeChat before the connection broke.
            raise ChannelTimeout(
                f"wechat {op}: connection failed ({type(exc).__name__}: {exc}); "
                "the outcome is unknown") from exc
        except requests.RequestException as exc:
            raise ChannelError(f"wechat {op}: HTTP request failed: {exc}",
                               code="channel_error") from exc
        except Exception as exc:
            # wechatpayv3 raises a bare Exception when a 2xx answer's signature does not verify
            # ("failed to verify the signature") or its Wechatpay-* headers are missing.
            raise ChannelError(
                f"wechat {op}: the answer's WeChat Pay signature does not verify ({exc})",
                code="channel_garbage") from exc

    def _refusal(self, op: str, status: int, text: str | bytes) -> ChannelError:
        if 200 <= status < 300:
            return _garbage(op, f"unexpected HTTP {status}, body {_snippet(text)}")
        data = _json_object(text)
        code = data.get("code") if data else None
        if data is None or not isinstance(code, str) or not code:
            return ChannelError(
                f"wechat {op}: HTTP {status} with a body that is not WeChat's error format: "
                f"{_snippet(text)}", code="channel_garbage", retryable=status >= 500)
        message = data.get("message")
        detail = data.get("detail")
        text_detail = f" {json.dumps(detail, ensure_ascii=False)}" if detail else ""
        return ChannelError(
            f"wechat {op} refused: HTTP {status} {code}: {message}{text_detail}",
            code=code, retryable=status >= 500 or code in _RETRYABLE_CODES)

    def _answer(self, op: str, text: str | bytes) -> dict[str, Any]:
        data = _json_object(text)
        if data is None:
            raise _garbage(op, f"not a JSON object: {_snippet(text)}")
        return data

    # ------------------------------------------------------------------ create
    def create(self, req: CreateRequest) -> CreateResult:
        _check_out_trade_no(req.out_trade_no)
        if _fen(req.amount_fen) is None or req.amount_fen <= 0:
            raise ValueError(f"amount_fen must be a positive int, got {req.amount_fen!r}")
        if not req.description:
            raise ValueError("description is required")
        if not req.notify_url:
            raise ValueError("notify_url is required")
        if req.kind == "jsapi":
            if not req.payer_openid:
                raise ValueError("a JSAPI order needs payer_openid")
            pay_type, payer = WeChatPayType.MINIPROG, {"openid": req.payer_openid}
        elif req.kind == "native":
            pay_type, payer = WeChatPayType.NATIVE, None
        else:
            raise ValueError(f"WeChat has no {req.kind!r} orders; use 'jsapi' or 'native'")

        status, text = self._call(
            "create", self._wx.pay,
            description=req.description,
            out_trade_no=req.out_trade_no,
            amount={"total": req.amount_fen, "currency": "CNY"},
            payer=payer,
            time_expire=rfc3339_cst(req.expires_at),
            notify_url=req.notify_url,
            pay_type=pay_type,
        )
        if status != 200:
            raise self._refusal("create", status, text)
        data = self._answer("create", text)
        if req.kind == "jsapi":
            prepay_id = data.get("prepay_id")
            if not isinstance(prepay_id, str) or not prepay_id:
                raise _garbage("create", "no prepay_id")
            return CreateResult(out_trade_no=req.out_trade_no, prepay_id=prepay_id,
                                request_payment=self.request_payment(prepay_id), raw=data)
        code_url = data.get("code_url")
        if not isinstance(code_url, str) or not code_url:
            raise _garbage("create", "no code_url")
        return CreateResult(out_trade_no=req.out_trade_no, qr_content=code_url, raw=data)

    def request_payment(self, prepay_id: str) -> dict[str, str]:
        """``wx.requestPayment`` parameters. paySign is SHA256withRSA by the merchant key over
        ``appId\\ntimeStamp\\nnonceStr\\nprepay_id=…\\n`` (appId is signed, not passed)."""
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        package = f"prepay_id={prepay_id}"
        pay_sign = self._wx.sign([self.config.appid, timestamp, nonce, package])
        return {"timeStamp": timestamp, "nonceStr": nonce, "package": package,
                "signType": "RSA", "paySign": pay_sign}

    # ------------------------------------------------------------------ query
    def query(self, out_trade_no: str) -> TradeStatus:
        _check_out_trade_no(out_trade_no)
        status, text = self._call("query", self._wx.query, out_trade_no=out_trade_no)
        if status != 200:
            # Only WeChat's explicit "no such order" is not_found; any other failure raises.
            if 400 <= status < 500 and _error_code(text) == "ORDER_NOT_EXIST":
                return TradeStatus(out_trade_no=out_trade_no, state="not_found",
                                   raw=_json_object(text) or {})
            raise self._refusal("query", status, text)
        data = self._answer("query", text)
        if data.get("out_trade_no") != out_trade_no:
            raise _garbage("query", f"answer is about out_trade_no {data.get('out_trade_no')!r}")
        self._check_owner("query", data)
        word = data.get("trade_state")
        state = TRADE_STATES.get(word) if isinstance(word, str) else None
        if state is None:
            raise _garbage("query", f"unknown trade_state {word!r}")
        amount = data.get("amount")
        total = _fen(amount.get("total")) if isinstance(amount, Mapping) else None
        if amount is not None and total is None:
            raise _garbage("query", f"bad amount {amount!r}")
        transaction_id = data.get("transaction_id")
        paid_at = parse_rfc3339(data.get("success_time"))
        if state == "paid" and (total is None or not isinstance(transaction_id, str)
                                or not transaction_id or paid_at is None):
            raise _garbage("query", "a SUCCESS trade without amount.total, transaction_id "
                                    "or an RFC3339 success_time")
        return TradeStatus(
            out_trade_no=out_trade_no, state=state, amount_fen=total,
            transaction_id=transaction_id if isinstance(transaction_id, str) else None,
            paid_at=paid_at, app_id=data.get("appid"), merchant_id=data.get("mchid"), raw=data)

    def _check_owner(self, op: str, data: Mapping[str, Any]) -> None:
        for field, mine in (("mchid", self.config.mchid), ("appid", self.config.appid)):
            if field in data and data[field] != mine:
                raise _garbage(op, f"{field} {data[field]!r} is not ours ({mine!r})")

    # ------------------------------------------------------------------ close
    def close(self, out_trade_no: str) -> None:
        _check_out_trade_no(out_trade_no)
        status, text = self._call("close", self._wx.close, out_trade_no=out_trade_no)
        if status == 204:
            return
        # Closing is idempotent for us: an order WeChat already closed cannot be paid either.
        if 400 <= status < 500 and _error_code(text) == "ORDER_CLOSED":
            return
        raise self._refusal("close", status, text)

    # ------------------------------------------------------------------ refund
    def refund(self, req: RefundRequest) -> RefundResult:
        _check_out_trade_no(req.out_trade_no)
        if not OUT_REFUND_NO_RE.fullmatch(req.out_refund_no):
            raise ValueError(f"bad out_refund_no {req.out_refund_no!r}")
        if _fen(req.total_fen) is None or _fen(req.refund_fen) is None:
            raise ValueError("total_fen and refund_fen must be non-negative ints")
        if not 0 < req.refund_fen <= req.total_fen:
            raise ValueError(f"refund_fen {req.refund_fen} not in 1..{req.total_fen}")
        status, text = self._call(
            "refund", self._wx.refund,
            out_refund_no=req.out_refund_no,
            amount={"refund": req.refund_fen, "total": req.total_fen, "currency": "CNY"},
            out_trade_no=req.out_trade_no,
            reason=req.reason or None,
            notify_url=req.notify_url or None,
        )
        if status != 200:
            raise self._refusal("refund", status, text)
        data = self._answer("refund", text)
        if data.get("out_refund_no") != req.out_refund_no:
            raise _garbage("refund", f"answer is about out_refund_no "
                                     f"{data.get('out_refund_no')!r}")
        word = data.get("status")
        state = REFUND_STATES.get(word) if isinstance(word, str) else None
        if state is None:
            raise _garbage("refund", f"unknown refund status {word!r}")
        amount = data.get("amount")
        refunded = amount.get("refund", req.refund_fen) if isinstance(amount, Mapping) else None
        if refunded != req.refund_fen:
            raise _garbage("refund", f"WeChat refunds {refunded!r} fen, we asked {req.refund_fen}")
        refund_id = data.get("refund_id")
        return RefundResult(out_refund_no=req.out_refund_no, state=state,
                            refund_id=refund_id if isinstance(refund_id, str) else None, raw=data)

    def query_refund(self, req: RefundRequest) -> RefundResult:
        raise NotImplementedError("query_refund: being built")  # TODO(channel helpers)


def _check_out_trade_no(out_trade_no: str) -> None:
    if not OUT_TRADE_NO_RE.fullmatch(out_trade_no):
        raise ValueError(f"not a WeChat out_trade_no (6-32 of [0-9A-Za-z_-|*]): {out_trade_no!r}")
