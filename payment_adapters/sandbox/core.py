"""The channel simulator's shared parts: its trades, its fault switches, and delivery.

Each channel's simulator (``wechat.py``, ``alipay.py``, ``unionpay.py`` beside this file)
serves that channel's HTTP API in the real wire format, signing as the channel does, and
builds the channel's real-format notifications. This module keeps what they share.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import httpx
from fastapi import APIRouter

from payment_adapters.base import Channel, Clock, real_clock

log = logging.getLogger(__name__)

BEIJING = ZoneInfo("Asia/Shanghai")
SimState = Literal["pending", "paid", "closed", "refunded"]
# Where a held refund call waits (the ``hold_refunds`` fault): before the channel does the
# refund, or after it did it and before it answers.
RefundHold = Literal["before_effect", "after_effect"]


@dataclass
class SimTrade:
    channel: Channel
    out_trade_no: str
    amount_fen: int
    notify_url: str
    kind: str                        # jsapi | native | qr
    description: str = ""
    state: SimState = "pending"
    transaction_id: str | None = None
    paid_at: datetime | None = None
    paid_fen: int | None = None      # what the payer actually paid (may differ on a fault)
    payer: str | None = None
    expires_at: datetime | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    refunded_fen: int = 0
    refunds: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Faults:
    """Switches a test (or a person) flips to make the channel misbehave."""

    timeout: bool = False            # API calls hang past the client's timeout
    query_not_found: bool = False    # query answers "no such trade" whatever the truth
    garbage: bool = False            # API calls answer a 200 with a body that is not the format
    hang_s: float = 3.0
    # API calls answer this error code of the channel (ChinaUMS: SYSTEM_BUSY, TIMEOUT, …),
    # without doing what was asked — or after doing it, with error_after_effect (only the
    # answer is lost). Honoured by the simulators that know such codes.
    answer_error: str | None = None
    error_after_effect: bool = False
    # a refund query answers the bill's latest refund record, whichever refund was asked about
    other_refund_record: bool = False
    # a statement download delivers a file changed on the way (one byte of the bill altered,
    # still well-formed compression), which the channel's check must catch
    corrupt_statement: bool = False
    # refund calls wait until released (the switch cleared) — before doing the refund (one
    # released then is dropped undone, as a request lost on its way in: it answers a system
    # error) or after doing it (released, it answers as usual) — at most hold_s seconds.
    # A test kills the caller while the call waits: a refund that did, or did not, happen.
    hold_refunds: RefundHold | None = None
    hold_s: float = 30.0


@dataclass
class RefundCalls:
    """What the channel saw of one refund number (``GET /sandbox/refunds/{no}``)."""

    calls: int = 0       # refund requests under this number that reached the channel
    effects: int = 0     # of them, the ones that made the refund (a repeat makes none)
    queries: int = 0     # refund queries about it
    held: int = 0        # calls waiting now on the hold_refunds switch


@dataclass(frozen=True)
class OutgoingNotification:
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class PayOptions:
    amount_fen: int | None = None    # pay a different amount than the trade's
    bad_signature: bool = False
    event: str | None = None         # channel-specific event, e.g. Alipay "TRADE_FINISHED"


class ChannelSimulator(Protocol):
    channel: Channel

    def router(self) -> APIRouter:
        """The channel's server API, prefixed ``/<channel>`` (mounted under ``/sandbox``)."""
        ...

    def payment_notification(self, trade: SimTrade, opts: PayOptions) -> OutgoingNotification:
        """The real-format, signed (WeChat: also encrypted) notification for a paid trade."""
        ...

    def refund_notification(self, trade: SimTrade, refund: dict[str, Any]) -> (
            OutgoingNotification | None):
        """A refund result notification, for channels that send one; else None."""
        ...


class SandboxState:
    """All simulated trades of this process, thread-safe, and the simulator's clock.

    The simulated channels date what they report — payment and refund times, bill dates —
    by the business clock they are given (``COLLECT_NOW`` in a demo), as the real channels
    date them by the real one; signature timestamps stay real time.
    """

    def __init__(self, clock: Clock = real_clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._trades: dict[tuple[Channel, str], SimTrade] = {}
        self.faults: dict[Channel, Faults] = {c: Faults() for c in Channel}
        self._seq = 0
        self._refunds: dict[str, RefundCalls] = {}
        self._gates: dict[Channel, threading.Event] = {c: threading.Event() for c in Channel}

    def now(self) -> datetime:
        """The business clock, to the second (channels report whole seconds)."""
        return self._clock().astimezone(UTC).replace(microsecond=0)

    def next_seq(self) -> int:
        """A number no simulator of this machine has handed out before, restarts included.

        The simulator keeps its trades in memory, but the service keeps what it was told in
        its database: a counter that started again at 1 would hand a new payment the
        transaction id of an old one. Real microseconds, strictly increasing, never repeat.
        """
        with self._lock:
            self._seq = max(self._seq + 1, time.time_ns() // 1000)
            return self._seq

    def put(self, trade: SimTrade) -> SimTrade:
        with self._lock:
            existing = self._trades.get((trade.channel, trade.out_trade_no))
            if existing is not None:
                return existing
            self._trades[(trade.channel, trade.out_trade_no)] = trade
            return trade

    def get(self, channel: Channel, out_trade_no: str) -> SimTrade | None:
        with self._lock:
            return self._trades.get((channel, out_trade_no))

    def trades(self, channel: Channel) -> list[SimTrade]:
        """A snapshot of the channel's trades (for its statements)."""
        with self._lock:
            return [t for (c, _), t in self._trades.items() if c is channel]

    def find(self, out_trade_no: str) -> SimTrade | None:
        with self._lock:
            for (_, no), trade in self._trades.items():
                if no == out_trade_no:
                    return trade
            return None

    def update(self, trade: SimTrade, fn: Callable[[SimTrade], None]) -> SimTrade:
        with self._lock:
            fn(trade)
            return trade

    def past_expiry(self, trade: SimTrade) -> bool:
        """An unpaid trade whose expiry (by the business clock) has passed: no channel takes
        money for it any more."""
        return (trade.state == "pending" and trade.expires_at is not None
                and self.now() >= trade.expires_at)

    def before_call(self, channel: Channel) -> None:
        """Apply the timeout switch at the start of every simulated API call."""
        faults = self.faults[channel]
        if faults.timeout:
            time.sleep(faults.hang_s)

    # ------------------------------------------------------------------ refund calls
    def refund_seen(self, out_refund_no: str, what: Literal["call", "effect", "query"]) -> None:
        """Count a refund call, a refund done, or a refund query, under the channel's own
        refund number (WeChat out_refund_no, Alipay out_request_no, ChinaUMS refundOrderId)."""
        with self._lock:
            seen = self._refunds.setdefault(out_refund_no, RefundCalls())
            if what == "call":
                seen.calls += 1
            elif what == "effect":
                seen.effects += 1
            else:
                seen.queries += 1

    def refund_calls(self, out_refund_no: str) -> RefundCalls | None:
        with self._lock:
            seen = self._refunds.get(out_refund_no)
            return RefundCalls(**vars(seen)) if seen is not None else None

    def hold_refund(self, channel: Channel, out_refund_no: str, stage: RefundHold) -> bool:
        """Wait here while the channel's ``hold_refunds`` switch is at ``stage``, until it is
        cleared (or ``hold_s`` passed); True if the call waited. (Called in a thread of the
        server's pool, never on its event loop.)"""
        faults = self.faults[channel]
        with self._lock:
            if faults.hold_refunds != stage:
                return False
            gate = self._gates[channel]
            seen = self._refunds.setdefault(out_refund_no, RefundCalls())
            seen.held += 1
        log.info("sandbox %s: refund %s held %s", channel.value, out_refund_no, stage)
        try:
            gate.wait(faults.hold_s)
        finally:
            with self._lock:
                seen.held -= 1
        return True

    def set_hold(self, channel: Channel, stage: RefundHold | None) -> None:
        """Set the ``hold_refunds`` switch; clearing it releases the calls waiting on it."""
        with self._lock:
            self.faults[channel].hold_refunds = stage
            if stage is None:
                self._gates[channel].set()
                self._gates[channel] = threading.Event()

    def mark_paid(self, trade: SimTrade, opts: PayOptions, transaction_id: str) -> bool:
        """Pay a trade once; a second pay of a paid trade only re-sends its notification."""
        with self._lock:
            if trade.state == "paid":
                return False
            if trade.state != "pending":
                raise ValueError(f"trade {trade.out_trade_no} is {trade.state}, not payable")
            trade.state = "paid"
            trade.transaction_id = transaction_id
            trade.paid_at = self.now()
            trade.paid_fen = opts.amount_fen if opts.amount_fen is not None else trade.amount_fen
            return True

    def clear(self) -> None:
        with self._lock:
            self._trades.clear()
            self._refunds.clear()
            self.faults = {c: Faults() for c in Channel}
            for gate in self._gates.values():
                gate.set()
            self._gates = {c: threading.Event() for c in Channel}


def deliver(note: OutgoingNotification, *, timeout_s: float = 10.0) -> tuple[int, str]:
    """POST a notification to our notify URL as the channel would; return status and body."""
    try:
        resp = httpx.post(note.url, content=note.body, headers=dict(note.headers),
                          timeout=timeout_s)
    except httpx.HTTPError as exc:
        log.warning("sandbox delivery to %s failed: %s", note.url, exc)
        return 0, str(exc)
    return resp.status_code, resp.text


def deliver_later(note: OutgoingNotification, delay_s: float) -> None:
    def _run() -> None:
        time.sleep(delay_s)
        deliver(note)

    threading.Thread(target=_run, daemon=True, name="sandbox-delivery").start()


def sim_transaction_id(channel: Channel, seq: int, when: datetime) -> str:
    """Transaction ids in each channel's own shape, unique as ``seq`` is (it never repeats,
    restarts included: ``SandboxState.next_seq``)."""
    day = when.astimezone(BEIJING).strftime("%Y%m%d")
    if channel is Channel.WECHAT:
        return f"42000{seq:023d}"                       # 28 digits, 42…
    if channel is Channel.ALIPAY:
        return f"{day}22001{seq % 10**15:015d}"         # 28: date, 22001, 15 digits
    return f"{day}{seq:016d}"                           # ChinaUMS targetOrderId-ish
