"""WeChat Pay APIv3 client (微信支付 APIv3): mini-program JSAPI and Native orders, refunds.

The HTTP is httpx; every request is signed (``Authorization: WECHATPAY2-SHA256-RSA2048 …``,
SHA256withRSA by the merchant key over the exact bytes sent) and every 2xx answer is verified
by :class:`~payment_adapters.wechat.keys.WechatPayKeys` — the WeChat Pay public key or a
platform certificate, chosen by the answer's ``Wechatpay-Serial``. Signing and verifying are
``cryptography``'s RSA PKCS#1 v1.5 with SHA-256.

What a failure means for the trade:

* nothing was sent (connection refused, no connection in time): ``ChannelError``, a definite
  failure;
* the request may have reached WeChat (no answer in time, the connection broke after sending,
  a 2xx answer whose signature does not verify — WeChat sends a few on purpose):
  ``OutcomeUnknown``, to be settled by a query;
* WeChat answered and refused: ``ChannelError`` with WeChat's code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import zlib
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as dtime
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

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
    StatementNotReady,
    TradeState,
    TradeStatus,
    VerificationFailed,
    WechatConfig,
    real_clock,
)
from payment_adapters.pem import rsa_private_key
from payment_adapters.wechat.keys import SIGNATURE_TYPE, WechatPayKeys

CST = timezone(timedelta(hours=8))     # WeChat writes every time as RFC3339 in +08:00

_BASE_RE = re.compile(r"[0-9A-Za-z]{1,24}")
OUT_TRADE_NO_RE = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
OUT_REFUND_NO_RE = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
REFUND_REASON_MAX_BYTES = 80           # 退款原因: "不可超过80个字节"
USER_AGENT = "resident-insurance-collection (httpx)"

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

# The trade bill (交易账单) of a day: WeChat starts making it at 09:00 the next day (Beijing)
# and tells merchants to ask after 10:00; its API serves the days of the last three months.
BILL_PUBLISHED_AT = dtime(10, 0)
BILL_MONTHS_BACK = 3
_SHA1_HEX = re.compile(r"[0-9A-Fa-f]{40}")
STATEMENT_MAX_EXPANDED_BYTES = 2 * 1024 * 1024 * 1024   # what that bill may inflate to
STATEMENT_MAX_BYTES = 256 * 1024 * 1024        # a downloaded (gzip) bill larger than this
                                               # is refused, not held in memory


def bill_published_at(day: date) -> datetime:
    """When WeChat's trade bill of ``day`` can be asked for: 10:00 Beijing the next day."""
    return datetime.combine(day + timedelta(days=1), BILL_PUBLISHED_AT, tzinfo=CST)


def months_before(day: date, months: int) -> date:
    """``day`` moved back ``months`` calendar months (the 31st → the month's last day)."""
    month_index = day.year * 12 + (day.month - 1) - months
    year, month = divmod(month_index, 12)
    month += 1
    for last in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def oldest_bill_day(today: date) -> date:
    """The oldest day whose trade bill WeChat's API still serves on ``today`` (三个月内)."""
    return months_before(today, BILL_MONTHS_BACK)


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
    """``PaymentClient`` for WeChat Pay APIv3 (public-key or platform-certificate mode)."""

    channel = Channel.WECHAT

    def __init__(self, config: WechatConfig, *,
                 transport: httpx.BaseTransport | None = None,
                 clock: Clock = real_clock) -> None:
        self.config = config
        self._clock = clock          # the business clock: which bills are published
                                     # (signature timestamps stay real time)
        self._merchant_key = rsa_private_key(config.mch_private_key_pem,
                                             "the merchant API key (apiclient_key.pem)")
        self.keys = WechatPayKeys.from_config(config)
        self._base = httpx.URL(config.base_url.rstrip("/"))
        # The gateway's own path (the simulator's /sandbox/wechat) is not part of what WeChat
        # sees as the request path, so it is not signed.
        self._base_path = self._base.raw_path.rstrip(b"/")
        self._http = httpx.Client(timeout=config.timeout_s, transport=transport,
                                  follow_redirects=False)

    # ------------------------------------------------------------------ order numbers
    def new_out_trade_no(self, base: str) -> str:
        """WeChat's 商户订单号: 6–32 of [0-9A-Za-z_-|*]; a short base is padded with "_"
        (never in a base, so distinct bases stay distinct)."""
        if not _BASE_RE.fullmatch(base):
            raise ValueError(f"order number base must be 1-24 of [0-9A-Za-z], got {base!r}")
        return base.ljust(6, "_")

    # ------------------------------------------------------------------ HTTP
    def _sign(self, message: bytes) -> str:
        return base64.b64encode(
            self._merchant_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()

    def _request(self, op: str, method: str, path: str, *,
                 query: Mapping[str, str] | None = None,
                 body: Mapping[str, Any] | None = None,
                 url: httpx.URL | None = None,
                 verify_answer: bool = True) -> httpx.Response:
        """``url`` (a download link WeChat gave, on our gateway) instead of ``path``; the
        answer's signature is checked unless ``verify_answer`` is off (a bill download:
        WeChat does not sign the file, its SHA1 is checked instead)."""
        if url is None:
            url = self._base.copy_with(raw_path=self._base_path + path.encode("ascii"))
        if query:
            url = url.copy_merge_params(dict(query))
        content = (b"" if body is None
                   else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
        # Signed: METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n over exactly what is sent.
        signed_path = url.raw_path[len(self._base_path):].decode("ascii")
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16).upper()
        signature = self._sign(f"{method}\n{signed_path}\n{timestamp}\n{nonce}\n".encode()
                               + content + b"\n")
        headers = {
            "Authorization": (f'{SIGNATURE_TYPE} mchid="{self.config.mchid}",'
                              f'nonce_str="{nonce}",signature="{signature}",'
                              f'timestamp="{timestamp}",serial_no="{self.config.mch_serial}"'),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        accept = self.keys.accept_serial(datetime.now(UTC))
        if accept:
            headers["Wechatpay-Serial"] = accept
        try:
            response = self._http.request(method, url, content=content or None,
                                          headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            # No connection was made (refused, unreachable, TLS failed, none in time): nothing
            # reached WeChat, so nothing happened there.
            raise ChannelError(
                f"wechat {op}: could not reach WeChat Pay at {self._base} "
                f"({type(exc).__name__}: {exc}); nothing was sent",
                code="channel_error", retryable=True) from exc
        except httpx.TimeoutException as exc:
            raise ChannelTimeout(
                f"wechat {op}: no answer within {self.config.timeout_s}s "
                f"({type(exc).__name__}); the outcome is unknown") from exc
        except httpx.TransportError as exc:
            raise OutcomeUnknown(
                f"wechat {op}: the connection failed after the request was sent "
                f"({type(exc).__name__}: {exc}); the outcome is unknown",
                code="connection_lost") from exc
        if 200 <= response.status_code < 300 and verify_answer:
            # As the official SDKs: 2xx answers are verified, error answers are not.
            try:
                self.keys.verify(response.headers, response.content, datetime.now(UTC))
            except VerificationFailed as exc:
                raise OutcomeUnknown(
                    f"wechat {op}: the HTTP {response.status_code} answer is not verifiably "
                    f"WeChat Pay's ({exc}; Request-ID {_request_id(response)}); the call may "
                    "have taken effect: query before assuming anything",
                    code="unverified_answer") from exc
        return response

    def _refusal(self, op: str, response: httpx.Response) -> ChannelError:
        status, text = response.status_code, response.content
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
            f"wechat {op} refused: HTTP {status} {code}: {message}{text_detail} "
            f"(Request-ID {_request_id(response)})",
            code=code, retryable=status >= 500 or code in _RETRYABLE_CODES)

    def _answer(self, op: str, response: httpx.Response) -> dict[str, Any]:
        data = _json_object(response.content)
        if data is None:
            raise _garbage(op, f"not a JSON object: {_snippet(response.content)}")
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
        body: dict[str, Any] = {
            "appid": self.config.appid, "mchid": self.config.mchid,
            "description": req.description, "out_trade_no": req.out_trade_no,
            "time_expire": rfc3339_cst(req.expires_at), "notify_url": req.notify_url,
            "amount": {"total": req.amount_fen, "currency": "CNY"},
        }
        if req.kind == "jsapi":
            if not req.payer_openid:
                raise ValueError("a JSAPI order needs payer_openid")
            body["payer"] = {"openid": req.payer_openid}
        elif req.kind != "native":
            raise ValueError(f"WeChat has no {req.kind!r} orders; use 'jsapi' or 'native'")

        # The mini-program's orders and JSAPI share one endpoint.
        response = self._request("create", "POST", f"/v3/pay/transactions/{req.kind}",
                                 body=body)
        if response.status_code != 200:
            raise self._refusal("create", response)
        data = self._answer("create", response)
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
        pay_sign = self._sign(f"{self.config.appid}\n{timestamp}\n{nonce}\n{package}\n".encode())
        return {"timeStamp": timestamp, "nonceStr": nonce, "package": package,
                "signType": "RSA", "paySign": pay_sign}

    # ------------------------------------------------------------------ query
    def query(self, out_trade_no: str) -> TradeStatus:
        _check_out_trade_no(out_trade_no)
        response = self._request(
            "query", "GET", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}",
            query={"mchid": self.config.mchid})
        if response.status_code != 200:
            # Only WeChat's explicit "no such order" is not_found; any other failure raises.
            if (400 <= response.status_code < 500
                    and _error_code(response.content) == "ORDER_NOT_EXIST"):
                return TradeStatus(out_trade_no=out_trade_no, state="not_found",
                                   raw=_json_object(response.content) or {})
            raise self._refusal("query", response)
        data = self._answer("query", response)
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
        response = self._request(
            "close", "POST",
            f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/close",
            body={"mchid": self.config.mchid})
        if response.status_code == 204:
            return
        # Closing is idempotent for us: an order WeChat already closed cannot be paid either.
        if (400 <= response.status_code < 500
                and _error_code(response.content) == "ORDER_CLOSED"):
            return
        raise self._refusal("close", response)

    # ------------------------------------------------------------------ refund
    def refund(self, req: RefundRequest) -> RefundResult:
        _check_refund_request(req)
        body: dict[str, Any] = {
            "out_trade_no": req.out_trade_no, "out_refund_no": req.out_refund_no,
            "amount": {"refund": req.refund_fen, "total": req.total_fen, "currency": "CNY"},
        }
        if req.reason:
            # Shown to the payer; WeChat takes at most 80 bytes.
            body["reason"] = _clip_utf8(req.reason, REFUND_REASON_MAX_BYTES)
        if req.notify_url:
            body["notify_url"] = req.notify_url
        response = self._request("refund", "POST", "/v3/refund/domestic/refunds", body=body)
        if response.status_code != 200:
            raise self._refusal("refund", response)
        return self._refund_result("refund", req, self._answer("refund", response))

    def query_refund(self, req: RefundRequest) -> RefundResult:
        """查询单笔退款: where the refund ``req.out_refund_no`` stands. WeChat's "no such
        refund" (RESOURCE_NOT_EXISTS) is ``not_found``: the refund was never accepted, and
        asking for it again with the same out_refund_no is safe (WeChat refunds one
        out_refund_no once)."""
        _check_refund_request(req)
        response = self._request(
            "query_refund", "GET",
            f"/v3/refund/domestic/refunds/{quote(req.out_refund_no, safe='')}")
        if response.status_code != 200:
            refusal = self._refusal("query_refund", response)
            if response.status_code == 404 and refusal.code == "RESOURCE_NOT_EXISTS":
                return RefundResult(out_refund_no=req.out_refund_no, state="not_found",
                                    raw=_json_object(response.content) or {})
            raise refusal
        return self._refund_result("query_refund", req, self._answer("query_refund", response))

    def _refund_result(self, op: str, req: RefundRequest,
                       data: dict[str, Any]) -> RefundResult:
        if data.get("out_refund_no") != req.out_refund_no:
            raise _garbage(op, f"answer is about out_refund_no {data.get('out_refund_no')!r}")
        if data.get("out_trade_no", req.out_trade_no) != req.out_trade_no:
            raise _garbage(op, f"answer is about out_trade_no {data.get('out_trade_no')!r}")
        word = data.get("status")
        state = REFUND_STATES.get(word) if isinstance(word, str) else None
        if state is None:
            raise _garbage(op, f"unknown refund status {word!r}")
        amount = data.get("amount")
        refunded = amount.get("refund") if isinstance(amount, Mapping) else None
        if refunded != req.refund_fen:
            raise _garbage(op, f"WeChat refunds {refunded!r} fen, we asked {req.refund_fen}")
        refund_id = data.get("refund_id")
        if not isinstance(refund_id, str) or not refund_id:
            raise _garbage(op, "no refund_id")
        return RefundResult(out_refund_no=req.out_refund_no, state=state, refund_id=refund_id,
                            raw=data)


    # ------------------------------------------------------------------ statements
    def fetch_statement(self, day: date) -> bytes:
        """The trade bill (交易账单, bill_type ALL) of the Beijing day ``day``, gzip, as
        WeChat delivers it, after checking its SHA1 ``hash_value`` (over the decompressed
        bill). ``StatementNotReady`` before 10:00 Beijing the next day (business clock) or
        while WeChat says STATEMENT_CREATING; ``ChannelError`` ``no_statement`` when WeChat
        has no bill of that day (no payment and no refund), ``statement_out_of_range`` for a
        day older than the API serves (three months: upload that statement instead)."""
        info = self.statement_link(day)
        return self.download_statement(info["download_url"], info["hash_value"])

    def statement_link(self, day: date) -> dict[str, str]:
        """申请交易账单: ``{"download_url", "hash_type", "hash_value"}`` for ``day``, the
        answer verified. The link is valid briefly (30 s): download it at once."""
        if not isinstance(day, date) or isinstance(day, datetime):
            raise ValueError(f"a statement day must be a date, got {day!r}")
        now = self._clock()
        today = now.astimezone(CST).date()
        published = bill_published_at(day)
        if now < published:
            raise StatementNotReady(
                f"wechat statement {day}: WeChat Pay publishes a day's trade bill after "
                f"{published:%Y-%m-%d %H:%M} Beijing time; it is now "
                f"{now.astimezone(CST):%Y-%m-%d %H:%M}")
        if day < oldest_bill_day(today):
            raise ChannelError(
                f"wechat statement {day}: WeChat Pay's API serves the trade bills of the last "
                f"three months only (from {oldest_bill_day(today)}); download it from the "
                "merchant platform (商户平台) and upload it instead",
                code="statement_out_of_range")
        op = "statement"
        response = self._request(op, "GET", "/v3/bill/tradebill", query={
            "bill_date": day.isoformat(), "bill_type": "ALL", "tar_type": "GZIP"})
        if response.status_code != 200:
            refusal = self._refusal(op, response)
            if refusal.code == "STATEMENT_CREATING":
                raise StatementNotReady(f"wechat statement {day}: WeChat Pay is still making "
                                        f"the bill ({refusal}); try again in half an hour")
            if refusal.code == "NO_STATEMENT_EXIST":
                raise ChannelError(
                    f"wechat statement {day}: WeChat Pay has no trade bill of that day, as it "
                    f"makes none for a day without any payment or refund ({refusal})",
                    code="no_statement")
            raise refusal
        data = self._answer(op, response)
        hash_type, hash_value = data.get("hash_type"), data.get("hash_value")
        link = data.get("download_url")
        if hash_type != "SHA1" or not isinstance(hash_value, str) or not _SHA1_HEX.fullmatch(
                hash_value):
            raise _garbage(op, f"hash_type {hash_type!r} / hash_value {hash_value!r} is not "
                               "a SHA1")
        if not isinstance(link, str) or not link:
            raise _garbage(op, "no download_url")
        return {"download_url": link, "hash_type": hash_type, "hash_value": hash_value}

    def download_statement(self, download_url: str, hash_value: str) -> bytes:
        """下载账单: a GET of ``download_url`` signed like any call (over its path and
        query), answered by the file, unsigned; its decompressed content must have the SHA1
        ``hash_value``. The gzip bytes as delivered."""
        op = "statement download"
        url = self._download_url(download_url)
        response = self._request(op, "GET", "", url=url, verify_answer=False)
        if response.status_code != 200:
            raise self._refusal(op, response)
        body = response.content
        if len(body) > STATEMENT_MAX_BYTES:
            raise ChannelError(f"wechat {op}: the bill is larger than "
                               f"{STATEMENT_MAX_BYTES} bytes", code="statement_too_large")
        digest = hashlib.sha1()           # noqa: S324 - WeChat's own integrity check
        expanded = 0
        try:
            inflate = zlib.decompressobj(wbits=31)           # gzip
            for at in range(0, len(body), 1 << 20):
                chunk = body[at:at + (1 << 20)]
                # never more than 1 MiB out at a time, and never more than the cap in all:
                # a hostile (or broken) download cannot expand without bound
                while chunk and not inflate.eof:
                    out = inflate.decompress(chunk, 1 << 20)
                    expanded += len(out)
                    if expanded > STATEMENT_MAX_EXPANDED_BYTES:
                        raise ChannelError(
                            f"wechat {op}: the bill expands to more than "
                            f"{STATEMENT_MAX_EXPANDED_BYTES} bytes", code="statement_too_large")
                    digest.update(out)
                    chunk = inflate.unconsumed_tail
                if inflate.eof:
                    break
            digest.update(inflate.flush())
            complete = inflate.eof and not inflate.unused_data
        except zlib.error as exc:
            raise ChannelError(f"wechat {op}: the bill is not a gzip file ({exc}); download "
                               "it again", code="statement_corrupt", retryable=True) from None
        if not complete:
            raise ChannelError(f"wechat {op}: the gzip bill is truncated or followed by other "
                               "data; download it again", code="statement_corrupt",
                               retryable=True)
        if digest.hexdigest() != hash_value.lower():
            raise ChannelError(
                f"wechat {op}: the bill's SHA1 {digest.hexdigest()} is not the hash_value "
                f"{hash_value.lower()} WeChat Pay gave: the file was damaged or changed on the "
                "way; it is not used (fetch it again)",
                code="statement_hash_mismatch", retryable=True)
        return body

    def _download_url(self, link: str) -> httpx.URL:
        """The download link as an URL we may send our Authorization to: on our gateway, or
        HTTPS on WeChat Pay's own API hosts."""
        try:
            url = httpx.URL(link)
        except (httpx.InvalidURL, TypeError) as exc:
            raise _garbage("statement", f"download_url {link[:200]!r}: {exc}") from None
        same_origin = (url.scheme, url.host, url.port) == (
            self._base.scheme, self._base.host, self._base.port)
        on_wechat = url.scheme == "https" and (url.host == "api.mch.weixin.qq.com"
                                              or url.host.endswith(".mch.weixin.qq.com"))
        if not (same_origin and url.raw_path.startswith(self._base_path + b"/")) and not (
                on_wechat and not self._base_path):
            raise _garbage("statement", f"download_url {link[:200]!r} is not on WeChat Pay's "
                                        f"API ({self._base})")
        return url


def _request_id(response: httpx.Response) -> str:
    return response.headers.get("Request-ID", "-")[:64]


def _clip_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _check_refund_request(req: RefundRequest) -> None:
    _check_out_trade_no(req.out_trade_no)
    if not OUT_REFUND_NO_RE.fullmatch(req.out_refund_no):
        raise ValueError(f"not a WeChat out_refund_no (1-64 of [0-9A-Za-z_-|*@]): "
                         f"{req.out_refund_no!r}")
    if _fen(req.total_fen) is None or _fen(req.refund_fen) is None:
        raise ValueError("total_fen and refund_fen must be non-negative ints")
    if not 0 < req.refund_fen <= req.total_fen:
        raise ValueError(f"refund_fen {req.refund_fen} not in 1..{req.total_fen}")


def _check_out_trade_no(out_trade_no: str) -> None:
    if not OUT_TRADE_NO_RE.fullmatch(out_trade_no):
        raise ValueError(f"not a WeChat out_trade_no (6-32 of [0-9A-Za-z_-|*]): {out_trade_no!r}")
