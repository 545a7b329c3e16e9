"""Alipay open platform client (支付宝开放平台, RSA2): 当面付 precreate, query, close, refund.

Signing of requests and verification of Alipay's response signatures are done by
python-alipay-sdk (``alipay.AliPay``). The HTTP exchange itself is done here, the same way the
SDK does it (a signed ``GET gateway?…`` with ``urllib``), so that the timeout, transport
errors, unsigned error answers and garbage are mapped to this project's errors instead of
leaking ``urllib``/``json``/SDK exceptions. The SDK is also given the timeout
(``AliPayConfig(timeout=…)``) for any direct use of it.
"""

from __future__ import annotations

import binascii
import http.client
import io
import json
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError
from alipay.utils import AliPayConfig

from payment_adapters.base import (
    AlipayConfig,
    Channel,
    ChannelError,
    ChannelTimeout,
    Clock,
    CreateRequest,
    CreateResult,
    OutcomeUnknown,
    RefundRequest,
    RefundResult,
    StatementNotReady,
    TradeState,
    TradeStatus,
    real_clock,
)

BEIJING = ZoneInfo("Asia/Shanghai")
BEIJING_FORMAT = "%Y-%m-%d %H:%M:%S"

_OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_]{1,64}")
_BASE = re.compile(r"[0-9A-Za-z]{1,24}")
_YUAN = re.compile(r"(?:0|[1-9][0-9]{0,9})\.[0-9]{2}")
_MAX_FEN = 100_000_000 * 100           # precreate total_amount range is [0.01, 100000000]
_MAX_ANSWER_BYTES = 1_000_000
_SUBJECT_FORBIDDEN = re.compile(r"[/=&]")   # the precreate doc forbids these in subject
# Alipay says the outcome is unknown for these: query again / retry with the same numbers.
_UNKNOWN_OUTCOME = {"20000", "isp.unknow-error", "ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR"}

BILL_METHOD = "alipay.data.dataservice.bill.downloadurl.query"
# "No bill for that day": not made yet (a day's bill is made the next morning, usually before
# 09:00), or none at all. The gateway answers isp.bill_not_exist; the API reference spells
# the code BILL_NOT_EXIST.
_BILL_NOT_EXIST = {"isp.bill_not_exist", "BILL_NOT_EXIST"}
STATEMENT_MAX_EXPANDED_BYTES = 2 * 1024 * 1024 * 1024   # what the zip may inflate to
STATEMENT_MAX_BYTES = 256 * 1024 * 1024        # a bill zip larger than this is refused
# When a day's bill is surely made: 09:00 Beijing the next day (the simulator's hour too).
BILL_PUBLISHED_AT = dtime(9, 0)


def bill_published_at(day: date) -> datetime:
    """When Alipay's trade bill of ``day`` can be asked for: 09:00 Beijing the next day."""
    return datetime.combine(day + timedelta(days=1), BILL_PUBLISHED_AT, tzinfo=BEIJING)


# --------------------------------------------------------------------------- money and time
def fen_to_yuan(fen: int) -> str:
    """Integer fen → Alipay's yuan string with exactly two decimals (380 → "3.80")."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
        raise ValueError(f"amount in fen must be a non-negative int, got {fen!r}")
    return format((Decimal(fen) / 100).quantize(Decimal("0.01")), "f")


def yuan_to_fen(yuan: str) -> int:
    """Alipay's yuan string → integer fen; only ``digits.dd`` is accepted (no sign, no float)."""
    if not isinstance(yuan, str) or not _YUAN.fullmatch(yuan):
        raise ValueError(f"not a yuan amount with two decimals: {yuan!r}")
    return int(Decimal(yuan) * 100)


def to_beijing(moment: datetime) -> str:
    """An aware instant as Alipay writes times: ``yyyy-MM-dd HH:mm:ss`` in Beijing time."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Alipay times must come from an aware instant")
    return moment.astimezone(BEIJING).strftime(BEIJING_FORMAT)


def parse_beijing(text: str) -> datetime:
    """Alipay's offset-less Beijing time → an aware datetime (in Asia/Shanghai)."""
    return datetime.strptime(text, BEIJING_FORMAT).replace(tzinfo=BEIJING)


# --------------------------------------------------------------------------- the client
class AlipayClient:
    """``PaymentClient`` for Alipay 当面付 (扫码支付: precreate → QR)."""

    channel = Channel.ALIPAY

    def __init__(self, config: AlipayConfig, *, clock: Clock = real_clock) -> None:
        self._config = config
        self._clock = clock          # order numbers and expiry; request timestamps are real
        self._timeout = config.timeout_s
        self._sdk = AliPay(
            appid=config.appid,
            app_notify_url=None,
            app_private_key_string=config.app_private_key_pem,
            alipay_public_key_string=config.alipay_public_key_pem,
            sign_type="RSA2",
            config=AliPayConfig(timeout=config.timeout_s),
        )

    # ------------------------------------------------------------------ PaymentClient
    def new_out_trade_no(self, base: str) -> str:
        if not _BASE.fullmatch(base):
            raise ValueError(f"base must be 1–24 of [0-9A-Za-z], got {base!r}")
        # A fresh number per attempt: after a failed precreate Alipay wants a NEW out_trade_no.
        stamp = self._clock().astimezone(BEIJING).strftime("%y%m%d%H%M%S")
        return f"{base}_{stamp}{secrets.token_hex(3)}"

    def create(self, req: CreateRequest) -> CreateResult:
        if req.kind != "qr":
            raise ValueError(f"Alipay 当面付 only creates QR trades, not {req.kind!r}")
        _check_out_trade_no(req.out_trade_no)
        if not 1 <= req.amount_fen <= _MAX_FEN:
            raise ValueError(f"amount_fen out of Alipay's range: {req.amount_fen}")
        if req.expires_at.tzinfo is None:
            raise ValueError("expires_at must be aware")
        remaining = req.expires_at - self._clock()
        if remaining <= timedelta(0):
            raise ValueError(f"expires_at {req.expires_at.isoformat()} is already past")
        subject = _SUBJECT_FORBIDDEN.sub(" ", req.description).strip()[:256] or req.out_trade_no
        biz: dict[str, Any] = {
            "out_trade_no": req.out_trade_no,
            "total_amount": fen_to_yuan(req.amount_fen),
            "subject": subject,
            # time_expire (absolute, Beijing) wins where Alipay supports it; timeout_express
            # (documented for precreate) is the fallback. Rounded down: never later than ours.
            "time_expire": to_beijing(req.expires_at),
            "timeout_express": f"{max(1, int(remaining.total_seconds() // 60))}m",
        }
        resp = self._call("alipay.trade.precreate", biz, notify_url=req.notify_url)
        self._raise_unless_ok("alipay.trade.precreate", resp)
        self._check_echo("alipay.trade.precreate", resp, req.out_trade_no, required=True)
        qr = resp.get("qr_code")
        if not isinstance(qr, str) or not qr.startswith("https://") or len(qr) > 1024:
            raise _garbage("alipay.trade.precreate", f"no usable qr_code in {resp!r}")
        return CreateResult(out_trade_no=req.out_trade_no, qr_content=qr, raw=resp)

    def query(self, out_trade_no: str) -> TradeStatus:
        _check_out_trade_no(out_trade_no)
        method = "alipay.trade.query"
        resp = self._call(method, {"out_trade_no": out_trade_no})
        if resp.get("code") == "40004" and resp.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            # Only a signed, explicit "no such trade" is not_found (before the scan, too).
            return TradeStatus(out_trade_no=out_trade_no, state="not_found", raw=resp)
        self._raise_unless_ok(method, resp)
        self._check_echo(method, resp, out_trade_no, required=True)
        status = resp.get("trade_status")
        try:
            amount = yuan_to_fen(resp["total_amount"])
            refund_fee = resp.get("refund_fee")
            refunded = refund_fee is not None and yuan_to_fen(refund_fee) == amount
            pay_date = resp.get("send_pay_date")
            paid_at = parse_beijing(pay_date) if pay_date else None
        except (KeyError, ValueError, TypeError) as exc:
            raise _garbage(method, f"bad amount or time in {resp!r}: {exc}") from None
        state: TradeState
        if status == "WAIT_BUYER_PAY":
            state, paid_at = "pending", None
        elif status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            state = "paid"
        elif status == "TRADE_CLOSED":
            # Alipay closes a trade both when it expires unpaid and after a full refund. A
            # closed trade that shows a full refund amount or a payment date was paid, so it
            # is "refunded", never mistaken for "closed unpaid".
            state = "refunded" if refunded or paid_at is not None else "closed"
        else:
            raise _garbage(method, f"unknown trade_status {status!r}")
        trade_no = resp.get("trade_no")
        return TradeStatus(
            out_trade_no=out_trade_no, state=state, amount_fen=amount,
            transaction_id=trade_no if isinstance(trade_no, str) and trade_no else None,
            paid_at=paid_at, raw=resp,
        )

    def close(self, out_trade_no: str) -> None:
        """Close an unpaid trade. ``ACQ.TRADE_NOT_EXIST`` is raised, not swallowed: the
        trade may be created by a scan right after, so the caller must query."""
        _check_out_trade_no(out_trade_no)
        method = "alipay.trade.close"
        resp = self._call(method, {"out_trade_no": out_trade_no})
        self._raise_unless_ok(method, resp)
        self._check_echo(method, resp, out_trade_no, required=False)

    def refund(self, req: RefundRequest) -> RefundResult:
        _check_out_trade_no(req.out_trade_no)
        if not _OUT_TRADE_NO.fullmatch(req.out_refund_no):
            raise ValueError(f"out_refund_no must be ≤ 64 of [A-Za-z0-9_]: {req.out_refund_no!r}")
        if not 1 <= req.refund_fen <= req.total_fen:
            raise ValueError(f"refund {req.refund_fen} fen outside 1..{req.total_fen}")
        method = "alipay.trade.refund"
        biz = {
            "out_trade_no": req.out_trade_no,
            "refund_amount": fen_to_yuan(req.refund_fen),
            "out_request_no": req.out_refund_no,   # idempotency key of this refund
            "refund_reason": req.reason[:256],
        }
        resp = self._call(method, biz)
        self._raise_unless_ok(method, resp)
        self._check_echo(method, resp, req.out_trade_no, required=False)
        if resp.get("fund_change") == "Y":
            return RefundResult(out_refund_no=req.out_refund_no, state="success", raw=resp)
        # fund_change=N: no money moved by THIS call — a repeat of a refund done earlier, or
        # one Alipay has taken and not done yet. Only the refund query can tell.
        found = self.query_refund(req)
        raw = {"refund": dict(resp), "refund_query": dict(found.raw)}
        # Sent just now, so "no refund there" is a refund not done yet, not a lost request.
        state = "processing" if found.state == "not_found" else found.state
        return RefundResult(out_refund_no=req.out_refund_no, state=state, raw=raw)

    def query_refund(self, req: RefundRequest) -> RefundResult:
        """``alipay.trade.fastpay.refund.query``: only ``refund_status = REFUND_SUCCESS`` is a
        refund done. Without it the refund "was not received, or failed" (Alipay's words), or
        is not done yet: ``not_found``, to be sent again with the same ``out_request_no``."""
        _check_out_trade_no(req.out_trade_no)
        method = "alipay.trade.fastpay.refund.query"
        resp = self._call(method, {"out_trade_no": req.out_trade_no,
                                   "out_request_no": req.out_refund_no})
        if resp.get("code") == "40004" and resp.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return RefundResult(out_refund_no=req.out_refund_no, state="not_found", raw=resp)
        self._raise_unless_ok(method, resp)
        self._check_echo(method, resp, req.out_trade_no, required=False)
        if resp.get("refund_status") != "REFUND_SUCCESS":
            return RefundResult(out_refund_no=req.out_refund_no, state="not_found", raw=resp)
        if resp.get("out_request_no") != req.out_refund_no:
            raise _garbage(method, f"answer is about refund {resp.get('out_request_no')!r}, "
                                   f"not {req.out_refund_no!r}")
        try:
            amount = yuan_to_fen(resp["refund_amount"])
        except (KeyError, ValueError, TypeError):
            raise _garbage(method, f"bad refund_amount in {resp!r}") from None
        if amount != req.refund_fen:
            raise ChannelError(
                f"alipay refund {req.out_refund_no}: Alipay holds {amount} fen under this "
                f"out_request_no, not {req.refund_fen}", code="refund_amount_mismatch")
        return RefundResult(out_refund_no=req.out_refund_no, state="success", raw=resp)

    # ------------------------------------------------------------------ statements
    def fetch_statement(self, day: date) -> bytes:
        """The trade bill (``bill_type=trade``, 业务账单) of the Beijing day ``day``: the zip
        as Alipay delivers it, downloaded at once (its link is valid 30 s) and checked to
        be a whole zip. ``StatementNotReady`` for today or later (business clock) and while
        Alipay answers isp.bill_not_exist (not made yet, or no trade that day)."""
        return self.download_statement(self.statement_link(day))

    def statement_link(self, day: date) -> str:
        """``bill_download_url`` for ``day`` from alipay.data.dataservice.bill.downloadurl.
        query, the answer verified. Valid 30 s after Alipay answers: download it at once."""
        if not isinstance(day, date) or isinstance(day, datetime):
            raise ValueError(f"a statement day must be a date, got {day!r}")
        today = self._clock().astimezone(BEIJING).date()
        if day >= today:
            raise StatementNotReady(
                f"alipay statement {day}: Alipay makes a day's bill the next morning "
                f"(usually before 09:00 Beijing) and has none for today ({today}) or later")
        resp = self._call(BILL_METHOD, {"bill_type": "trade", "bill_date": day.isoformat()})
        if resp.get("code") == "40004" and resp.get("sub_code") in _BILL_NOT_EXIST:
            raise StatementNotReady(
                f"alipay statement {day}: Alipay has no bill of that day yet "
                f"({resp.get('sub_code')}: {resp.get('sub_msg')}): it is not made yet, or "
                "there was no trade that day; try again later, or upload it")
        self._raise_unless_ok(BILL_METHOD, resp)
        link = resp.get("bill_download_url")
        if not isinstance(link, str) or not self._bill_host_ok(link):
            raise _garbage(BILL_METHOD, f"no usable bill_download_url in {resp!r}")
        return link

    def _bill_host_ok(self, link: str) -> bool:
        parts = urllib.parse.urlsplit(link)
        host = parts.hostname or ""
        gateway = urllib.parse.urlsplit(self._config.gateway)
        return parts.scheme in ("http", "https") and (
            host == "alipay.com" or host.endswith(".alipay.com")
            or (parts.scheme, parts.netloc) == (gateway.scheme, gateway.netloc))

    def download_statement(self, link: str) -> bytes:
        """GET the bill link (no signature: the link carries its token) and check the file
        is a whole zip (every member's CRC). The zip bytes as delivered."""
        op = "statement download"
        request = urllib.request.Request(link, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                body: bytes = resp.read(STATEMENT_MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise ChannelError(
                f"alipay {op}: the bill link answered HTTP {exc.code}; it is valid 30 s after "
                "Alipay hands it out: ask for a new one", code="statement_link_refused",
                retryable=True) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise ChannelError(f"alipay {op}: the bill could not be downloaded ({exc!r}); ask "
                               "again", code="channel_error", retryable=True) from None
        if len(body) > STATEMENT_MAX_BYTES:
            raise ChannelError(f"alipay {op}: the bill is larger than {STATEMENT_MAX_BYTES} "
                               "bytes", code="statement_too_large")
        try:
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                # a member never inflates past its declared size (zipfile stops there and
                # checks the CRC), so the declared sizes bound what testzip() expands
                declared = sum(info.file_size for info in archive.infolist())
                if declared > STATEMENT_MAX_EXPANDED_BYTES:
                    raise ChannelError(f"alipay {op}: the bill zip expands to {declared} "
                                       f"bytes, more than {STATEMENT_MAX_EXPANDED_BYTES}",
                                       code="statement_too_large")
                bad = archive.testzip()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError,
                NotImplementedError, RuntimeError, ValueError) as exc:
            raise ChannelError(f"alipay {op}: the download is not a whole zip ({exc!r}); "
                               "ask again", code="statement_corrupt", retryable=True) from None
        if bad is not None:
            raise ChannelError(f"alipay {op}: the bill zip is damaged (member {bad!r} fails "
                               "its CRC); ask again", code="statement_corrupt", retryable=True)
        return body

    # ------------------------------------------------------------------ internals

    def _call(self, method: str, biz: dict[str, Any], *,
              notify_url: str | None = None) -> dict[str, Any]:
        """Sign with the SDK, GET the gateway, verify the answer with the SDK; the inner
        object of ``<method>_response`` as Alipay signed it (any ``code``)."""
        public: dict[str, str] = {"timestamp": datetime.now(BEIJING).strftime(BEIJING_FORMAT)}
        if notify_url:
            public["notify_url"] = notify_url      # a public parameter, not in biz_content
        # The SDK stamps a naive local datetime.now(); Alipay wants Beijing time, so pass it.
        data = self._sdk.build_body(method, biz, **public)
        url = f"{self._config.gateway}?{self._sdk.sign_data(data)}"
        return self._verified(method, self._fetch(method, url))

    def _fetch(self, method: str, url: str) -> str:
        request = urllib.request.Request(url, method="GET", headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                body: bytes = resp.read(_MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise _garbage(method, f"HTTP {exc.code} instead of an answer") from None
        except urllib.error.URLError as exc:      # failed before the request was sent
            if isinstance(exc.reason, TimeoutError):
                raise ChannelTimeout(f"alipay {method}: no connection within "
                                     f"{self._timeout}s") from None
            raise ChannelError(f"alipay {method}: gateway unreachable: {exc.reason}",
                               code="channel_unreachable", retryable=True) from None
        except TimeoutError:
            raise ChannelTimeout(f"alipay {method}: no answer within {self._timeout}s; "
                                 "outcome unknown") from None
        except (OSError, http.client.HTTPException) as exc:
            # The request may have arrived: as unknown as a timeout.
            raise ChannelTimeout(f"alipay {method}: connection lost before the answer "
                                 f"({exc!r}); outcome unknown") from None
        if len(body) > _MAX_ANSWER_BYTES:
            raise _garbage(method, "answer larger than 1 MB")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise _garbage(method, "answer is not UTF-8") from None

    def _verified(self, method: str, text: str) -> dict[str, Any]:
        response_type = method.replace(".", "_") + "_response"
        try:
            doc = json.loads(text)
        except ValueError:
            raise _garbage(method, f"answer is not JSON: {text[:200]!r}") from None
        if not isinstance(doc, dict):
            raise _garbage(method, f"answer is not a JSON object: {text[:200]!r}")
        inner = doc.get(response_type) or doc.get("error_response")
        if not isinstance(inner, dict):
            raise _garbage(method, f"no {response_type} in {text[:200]!r}")
        sign = doc.get("sign")
        if "error_response" in doc or not isinstance(sign, str) or not sign:
            # Alipay does not sign gateway-level errors (bad app id, bad signature…). An
            # unsigned answer proves nothing, so it can only ever be a failure.
            if inner.get("code") == "10000":
                raise _garbage(method, "unsigned success answer")
            raise _refusal(_describe(method, inner) + " (unsigned answer)", inner)
        try:
            # The SDK cuts the exact text of the inner object out of the answer, verifies
            # Alipay's RSA2 signature over it and parses THAT text (not the outer document).
            # It is the SDK's own (private) step for this: pyproject pins the tested range.
            verified = self._sdk._verify_and_return_sync_response(text, response_type)
        except AliPayValidationError:
            raise _garbage(method, "the answer's signature does not verify") from None
        except (AliPayException, ValueError, TypeError, AttributeError, binascii.Error) as exc:
            raise _garbage(method, f"answer could not be verified: {exc!r}") from None
        if not isinstance(verified, dict) or not isinstance(verified.get("code"), str):
            raise _garbage(method, f"verified answer has no code: {verified!r}")
        return verified

    @staticmethod
    def _raise_unless_ok(method: str, resp: Mapping[str, Any]) -> None:
        if resp.get("code") != "10000":
            raise _refusal(_describe(method, resp), resp)

    @staticmethod
    def _check_echo(method: str, resp: Mapping[str, Any], out_trade_no: str, *,
                    required: bool) -> None:
        # The signature covers the inner object only, not which request it answers: make
        # sure a (replayed) answer about another trade is not taken for this one.
        echoed = resp.get("out_trade_no")
        if echoed is None and not required:
            return
        if echoed != out_trade_no:
            raise _garbage(method, f"answer is about {echoed!r}, not {out_trade_no!r}")


def _check_out_trade_no(out_trade_no: str) -> None:
    if not isinstance(out_trade_no, str) or not _OUT_TRADE_NO.fullmatch(out_trade_no):
        raise ValueError(f"out_trade_no must be ≤ 64 of [A-Za-z0-9_]: {out_trade_no!r}")


def _code_of(resp: Mapping[str, Any]) -> str:
    sub_code, code = resp.get("sub_code"), resp.get("code")
    return str(sub_code or code or "channel_error")


def _refusal(message: str, resp: Mapping[str, Any]) -> ChannelError:
    """A refusal; or, for the codes Alipay uses when it does not know how the call ended,
    an unknown outcome (query, or retry with the same numbers)."""
    if {str(resp.get("code")), str(resp.get("sub_code"))} & _UNKNOWN_OUTCOME:
        return OutcomeUnknown(message, code=_code_of(resp))
    return ChannelError(message, code=_code_of(resp))


def _describe(method: str, resp: Mapping[str, Any]) -> str:
    return (f"alipay {method} refused: code={resp.get('code')} msg={resp.get('msg')} "
            f"sub_code={resp.get('sub_code')} sub_msg={resp.get('sub_msg')}")


def _garbage(method: str, why: str) -> ChannelError:
    # Whatever answered, the request may have reached Alipay: how it ended is not known.
    return OutcomeUnknown(f"alipay {method}: not an Alipay answer: {why}",
                          code="channel_garbage")
