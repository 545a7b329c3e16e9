"""Counts of rejected notifications over the minute's allowance, gathered in the process and
written once a second (``notifications.service.flush_rejections``: by the next rejection
after a second, by serve's once-a-second flush when the flood has stopped, and at close)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

FLUSH_EVERY_S = 1.0

Key = tuple[str, datetime, str]   # channel, minute, outcome


@dataclass
class Count:
    count: int
    sample: tuple[Any, ...]     # the first one's detail, headers and body
    last_at: datetime


class RejectionTally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, Count] = {}
        self._taken_at = time.monotonic()

    def add(self, key: Key, sample: tuple[Any, ...], now: datetime) -> bool:
        """Count one; True when the counts are due to be written."""
        with self._lock:
            c = self._counts.get(key)
            if c is None:
                self._counts[key] = Count(1, sample, now)
            else:
                c.count += 1
                c.last_at = now
            return time.monotonic() - self._taken_at >= FLUSH_EVERY_S

    def pending(self) -> bool:
        return bool(self._counts)

    def put_back(self, counts: dict[Key, Count]) -> None:
        """Counts taken whose write failed: added to what came meanwhile, written next time."""
        with self._lock:
            for key, c in counts.items():
                now = self._counts.get(key)
                if now is None:
                    self._counts[key] = c
                else:
                    now.count += c.count
                    now.sample = c.sample              # the earlier one's: the first seen
                    now.last_at = max(now.last_at, c.last_at)

    def take(self) -> dict[Key, Count]:
        with self._lock:
            counts, self._counts = self._counts, {}
            self._taken_at = time.monotonic()
            return counts
