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

    def today(self) -> date:
        """The business date in Asia/Shanghai."""
        return self.now().astimezone(SHANGHAI).date()


def real_now() -> datetime:
    return datetime.now(UTC)


def business_date(instant: datetime) -> date:
    if instant.tzinfo is None:
        raise ValueError("naive datetime")
    return instant.astimezone(SHANGHAI).date()
