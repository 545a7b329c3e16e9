"""What the simulated channels share to serve their daily statements: which trades touch a
Beijing day, the short-lived download links, and the fault that damages a download.

A channel hands out a statement through a link that expires (WeChat Pay: "该地址30s内有效";
Alipay: "获取连接后30秒后未下载，链接地址失效"). Expiry runs on real time (``real_clock``),
as at the channel, not on the business clock; a test injects the clock instead of sleeping.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from payment_adapters.sandbox.core import SimTrade

BEIJING = ZoneInfo("Asia/Shanghai")
LINK_VALIDITY = timedelta(seconds=30)


def real_now() -> datetime:
    return datetime.now(UTC)


def _refund_times(refund: dict[str, Any]) -> Iterable[datetime]:
    for key in ("success_time", "at", "create_time"):
        value = refund.get(key)
        if isinstance(value, datetime):
            yield value


def active_on(trades: Iterable[SimTrade], day: date) -> bool:
    """Whether any trade was paid, or refunded, on the Beijing day ``day``: a channel makes
    no trade statement for a day without either."""
    for trade in trades:
        if trade.paid_at is not None and trade.paid_at.astimezone(BEIJING).date() == day:
            return True
        for refund in trade.refunds:
            if any(t.astimezone(BEIJING).date() == day for t in _refund_times(refund)):
                return True
    return False


def damaged(content: bytes) -> bytes:
    """``content`` with one byte changed (the fault ``corrupt_statement``)."""
    if not content:
        return b"\x00"
    changed = bytearray(content)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


@dataclass
class _Link:
    payload: Any
    issued_at: datetime
    used: bool = False


class DownloadLinks:
    """Tokens for download links: valid ``validity`` of real time after they are handed
    out, and (``single_use``) for one download only."""

    def __init__(self, *, validity: timedelta = LINK_VALIDITY,
                 real_clock: Callable[[], datetime] = real_now,
                 single_use: bool = False) -> None:
        self.validity = validity
        self.real_clock = real_clock
        self.single_use = single_use
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}

    def issue(self, payload: Any) -> str:
        token = secrets.token_urlsafe(32)
        now = self.real_clock()
        with self._lock:
            # forget links long past their validity
            for old in [k for k, v in self._links.items()
                        if now - v.issued_at > self.validity + timedelta(minutes=10)]:
                del self._links[old]
            self._links[token] = _Link(payload, now)
        return token

    def redeem(self, token: str) -> tuple[Any, str | None]:
        """(payload, None), or (None, why the link is not valid)."""
        now = self.real_clock()
        with self._lock:
            link = self._links.get(token)
            if link is None:
                return None, "unknown"
            if now - link.issued_at > self.validity:
                return None, "expired"
            if link.used and self.single_use:
                return None, "used"
            link.used = True
            return link.payload, None
