"""The capabilities of a payment channel, and the normalized results they return.

A channel is a set of small capabilities (create, query, close, refund, verify a
notification, answer it), each testable alone. The simulator in ``sandbox/`` is one more
implementation of the channels' *servers*; the clients here do not know whether they talk to
it or to the real channel, except for the base URL and keys they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

# The business clock (an aware "now"). Everything a channel dates — order numbers, bill
# dates, expiry, the simulator's payment and refund times — reads it; only signature
# timestamps and their freshness checks read the real clock.
Clock = Callable[[], datetime]


def real_clock() -> datetime:
    return datetime.now(UTC)


class Channel(StrEnum):
    WECHAT = "wechat"
    ALIPAY = "alipay"
    UNIONPAY = "unionpay"


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class WechatConfig:
    appid: str
    mchid: str
    apiv3_key: str               # 32 characters
    mch_private_key_pem: str     # signs requests and paySign
    mch_serial: str              # merchant API certificate serial
    # What verifies WeChat Pay's answers and notifications: the WeChat Pay public key
    # (公钥模式), the platform certificates (平台证书), or both while migrating.
    public_key_pem: str = ""     # WeChat Pay public key
    public_key_id: str = ""      # PUB_KEY_ID_…
    platform_certs_dir: str = "" # a folder of platform certificates (PEM)
    base_url: str = "https://api.mch.weixin.qq.com"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class AlipayConfig:
    appid: str
    app_private_key_pem: str
    alipay_public_key_pem: str
    seller_id: str               # 2088… the merchant's Alipay user id
    gateway: str = "https://openapi.alipay.com/gateway.do"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class UnionpayConfig:
    mid: str
    tid: str
    msg_src_id: str              # 4-character source id, the prefix of every billNo
    key: str                     # 通讯密钥
    msg_src: str                 # 消息来源, assigned per merchant (WWW.TEST.COM is the test set's)
    base_url: str = "https://qr.chinaums.com/netpay-route-server/api/"
    timeout_s: float = 10.0


# --------------------------------------------------------------------------- requests, results
TradeKind = Literal["jsapi", "native", "qr"]


@dataclass(frozen=True)
class CreateRequest:
    out_trade_no: str
    amount_fen: int
    description: str
    expires_at: datetime         # aware
    notify_url: str
    kind: TradeKind
    payer_openid: str | None = None   # WeChat JSAPI only


@dataclass(frozen=True)
class CreateResult:
    out_trade_no: str
    qr_content: str | None = None                       # what a QR code encodes
    request_payment: dict[str, str] | None = None       # wx.requestPayment parameters
    prepay_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


TradeState = Literal["paid", "pending", "closed", "refunded", "not_found"]


@dataclass(frozen=True)
class TradeStatus:
    out_trade_no: str
    state: TradeState
    amount_fen: int | None = None
    transaction_id: str | None = None
    paid_at: datetime | None = None
    app_id: str | None = None
    merchant_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


# not_found (from query_refund only): the channel has no refund under this number — it never
# arrived, or the channel dropped it — so sending it again with the same number is safe.
RefundState = Literal["processing", "success", "failed", "not_found"]


@dataclass(frozen=True)
class RefundRequest:
    out_trade_no: str
    out_refund_no: str
    total_fen: int
    refund_fen: int
    reason: str
    notify_url: str | None = None


@dataclass(frozen=True)
class RefundResult:
    out_refund_no: str
    state: RefundState
    refund_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


NotificationKind = Literal["payment", "refund", "other"]


@dataclass(frozen=True)
class Notification:
    """A verified notification, normalized. The service checks it against the order."""

    channel: Channel
    kind: NotificationKind
    dedupe_key: str                  # unique per channel event (WeChat id, Alipay notify_id, …)
    out_trade_no: str
    trade_state: str                 # the channel's own word: SUCCESS, TRADE_SUCCESS, PAID, …
    succeeded: bool                  # money was received (or refunded, for kind="refund")
    amount_fen: int
    transaction_id: str | None = None
    paid_at: datetime | None = None
    app_id: str | None = None
    merchant_id: str | None = None
    out_refund_no: str | None = None
    refund_fen: int | None = None
    refund_id: str | None = None     # the channel's own refund id (WeChat refund_id, …)
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes
    media_type: str = "text/plain"


# --------------------------------------------------------------------------- errors
class ChannelError(Exception):
    """A channel call failed: the channel refused, timed out or answered garbage."""

    def __init__(self, message: str, *, code: str = "channel_error", retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class OutcomeUnknown(ChannelError):
    """The call may or may not have taken effect at the channel: query (or retry with the
    same numbers) before assuming anything. Never a final refusal."""

    def __init__(self, message: str, *, code: str = "outcome_unknown") -> None:
        super().__init__(message, code=code, retryable=True)


class ChannelTimeout(OutcomeUnknown):
    """No answer in time: the outcome is unknown; query before assuming anything."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="channel_timeout")


class VerificationFailed(Exception):
    """A notification that must change nothing: bad signature, stale, wrong app or merchant."""


# --------------------------------------------------------------------------- capabilities
class PaymentClient(Protocol):
    channel: Channel

    def new_out_trade_no(self, base: str) -> str:
        """The channel's order number for an attempt, from ``base`` (≤ 24 of [0-9A-Za-z]).

        WeChat: 6–32 of [0-9A-Za-z_-|*]; Alipay: ≤ 64 letters, digits, _; ChinaUMS: billNo
        of 7–27 characters starting with the 4-character source id.
        """
        ...

    def create(self, req: CreateRequest) -> CreateResult: ...
    def query(self, out_trade_no: str) -> TradeStatus: ...
    def close(self, out_trade_no: str) -> None: ...
    def refund(self, req: RefundRequest) -> RefundResult: ...

    def query_refund(self, req: RefundRequest) -> RefundResult:
        """Where a refund asked for earlier stands, from the channel's refund query — never
        by sending the refund again. ``processing`` while the channel has no final word;
        ``not_found`` when it has no refund under ``out_refund_no`` at all."""
        ...


class StatementNotReady(ChannelError):
    """The channel has not published the day's statement yet (WeChat: after 10:00 the next
    day), or will not (a day outside what its API serves): try again later, or upload it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="statement_not_ready", retryable=True)


class StatementSource(Protocol):
    """A channel whose daily statement can be fetched through its own API (WeChat, Alipay)."""

    channel: Channel

    def fetch_statement(self, day: date) -> bytes:
        """The day's trade statement exactly as the channel delivers it (WeChat: the trade
        bill, gzip; Alipay: the bill zip), after checking what the channel says to check
        (WeChat: the SHA1 ``hash_value``). Raises StatementNotReady, or ChannelError."""
        ...


class NotificationVerifier(Protocol):
    channel: Channel

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        """Verify on the raw bytes and parse; raise VerificationFailed saying why."""
        ...

    def success_answer(self) -> HttpAnswer: ...
    def failure_answer(self, reason: str) -> HttpAnswer: ...
