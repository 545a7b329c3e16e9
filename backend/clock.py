"""The business clock (业务时钟).

With ``COLLECT_NOW`` set, business time starts at that instant when the process starts and
runs on at the real rate, so a demo or test can live inside the 2020 collection window.
Signature freshness checks must use :func:`real_now`, never this clock.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


class BusinessClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._start = start
        self._mono = time.monotonic()

    def now(self) -> datetime:
        if self._start is None:
            return datetime.now(UTC)
        return (self._start + timedelta(seconds=time.monotonic() - self._mono)).astimezone(UTC)

    @property
    def movable(self) -> bool:
        return self._start is not None

    def advance_to(self, instant: datetime) -> datetime:
        """Move a ``COLLECT_NOW`` clock forward to ``instant`` (a rehearsal's "next morning":
        the sandbox's clock control). Never backwards: business time only runs on."""
        if self._start is None:
            raise ValueError("the business clock is real time (COLLECT_NOW is not set): "
                             "it cannot be moved")
        if instant.tzinfo is None:
            raise ValueError("give the instant with its offset, e.g. 2020-11-03T10:30:00+08:00")
        now = self.now()
        if instant <= now:
            raise ValueError(f"the business clock only runs forward: it is already "
                             f"{now.astimezone(SHANGHAI).isoformat()}")
        self._start = self._start + (instant - now)
        return self.now()

    def today(self) -> date:
        """The business date in Asia/Shanghai."""
        return self.now().astimezone(SHANGHAI).date()


def real_now() -> datetime:
    return datetime.now(UTC)


def business_date(instant: datetime) -> date:
    if instant.tzinfo is None:
        raise ValueError("naive datetime")
    return instant.astimezone(SHANGHAI).date()
