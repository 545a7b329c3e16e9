"""The worker's statement fetch (自动下载对账单): each day's WeChat Pay and Alipay statements,
fetched and reconciled once the channel has published them.

Every few minutes the job looks at the last ``LOOKBACK_DAYS`` business days of each channel
— never before the channel's first payment of ours — and fetches each day that has no run
yet and whose statement is published by the business clock (WeChat after 10:00 the next
day, Alipay after 09:00). A day with a run is never fetched again, whoever loaded it.

A day the channel says is not ready, or a fetch that fails (the channel, the network, a file
that does not parse), is retried with a growing delay (``RETRY_FIRST`` doubling up to
``RETRY_MAX``); a failure is logged at ERROR with the channel and the day. A day WeChat says
it has no bill of (``NO_STATEMENT_EXIST``: no payment and no refund that day) is recorded as
a run of an empty statement, so it is not asked again, and any payment of ours that day is
reported missing at the channel. Alipay does not tell "not made yet" from "no trade that
day": such a day is asked again until it leaves the window.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import col

from backend.errors import AppError, Conflict
from backend.orders.models import Payment
from backend.reconciliation import service
from backend.reconciliation.models import ReconciliationRun
from backend.runtime import Runtime
from payment_adapters.alipay.client import bill_published_at as alipay_published_at
from payment_adapters.wechat.client import bill_published_at as wechat_published_at

log = logging.getLogger(__name__)

LOOKBACK_DAYS = 7
RETRY_FIRST = timedelta(minutes=5)
RETRY_MAX = timedelta(hours=2)
#: When each channel's statement of a day is published (Beijing, by the business clock).
PUBLISHED_AT: dict[str, Callable[[date], datetime]] = {
    "wechat": wechat_published_at, "alipay": alipay_published_at}


@dataclass
class Backoff:
    """Failed days and when each may be tried again (real, monotonic seconds: the worker's
    own pace, whatever the business clock does)."""

    now: Callable[[], float] = time.monotonic
    failures: dict[tuple[str, date], tuple[int, float]] = field(default_factory=dict)

    def due(self, channel: str, day: date) -> bool:
        failed = self.failures.get((channel, day))
        return failed is None or self.now() >= failed[1]

    def failed(self, channel: str, day: date) -> tuple[int, timedelta]:
        n = self.failures.get((channel, day), (0, 0.0))[0] + 1
        delay = min(RETRY_FIRST * 2 ** (n - 1), RETRY_MAX)
        self.failures[(channel, day)] = (n, self.now() + delay.total_seconds())
        return n, delay

    def done(self, channel: str, day: date) -> None:
        self.failures.pop((channel, day), None)




def due_days(rt: Runtime, channel: str) -> list[date]:
    """The days of ``channel`` to fetch now: published, in the window, from the channel's
    first payment on, without a run."""
    now = rt.clock.now()
    today = rt.clock.today()
    published = PUBLISHED_AT[channel]
    window = [today - timedelta(days=n) for n in range(LOOKBACK_DAYS, 0, -1)]
    with rt.sessions() as s:
        first = s.scalar(select(func.min(col(Payment.business_date)))
                         .where(col(Payment.channel) == channel))
        if first is None:
            return []
        have = set(s.scalars(select(col(ReconciliationRun.business_date)).where(
            col(ReconciliationRun.channel) == channel,
            col(ReconciliationRun.business_date) >= window[0])).all())
    return [d for d in window if d >= first and d not in have and published(d) <= now]


def fetch_due_statements(rt: Runtime, *, backoff: Backoff | None = None) -> int:
    """Fetch and reconcile every due statement (see the module); return the runs made."""
    if backoff is None:
        # one per runtime (a worker process), kept on it: Runtime is not hashable
        backoff = rt.__dict__.setdefault("statement_fetch_backoff", Backoff())
    made = 0
    for channel in service.FETCHABLE:
        for day in due_days(rt, channel):
            if not backoff.due(channel, day):
                continue
            try:
                done = service.fetch_and_reconcile(rt, channel=channel, day=day, user_id=None)
            except service.StatementUnavailable as exc:
                if exc.why == "no_statement":
                    made += _record_empty(rt, channel, day, exc.message)
                    backoff.done(channel, day)
                    continue
                n, delay = backoff.failed(channel, day)
                log.info("statement fetch of %s %s: not ready (try %d; again in %s): %s",
                         channel, day, n, delay, exc.message)
                continue
            except Conflict as exc:
                if exc.code == "statement_already_loaded":   # loaded meanwhile, by hand
                    backoff.done(channel, day)
                    continue
                _failed(backoff, channel, day, exc)
                continue
            except Exception as exc:  # one day's trouble must not stop the others
                _failed(backoff, channel, day, exc)
                continue
            backoff.done(channel, day)
            made += int(done.created)
            log.info("statement fetch of %s %s: run %s, %s matched, %s discrepancies",
                     channel, day, done.run_id, done.matched, done.discrepancy_count)
    return made


def _failed(backoff: Backoff, channel: str, day: date, exc: Exception) -> None:
    n, delay = backoff.failed(channel, day)
    what = f"{exc.code}: {exc.message}" if isinstance(exc, AppError) else (
        f"{type(exc).__name__}: {exc}")
    log.error("statement fetch of %s %s failed (try %d; again in %s): %s", channel, day, n,
              delay, what)


def _record_empty(rt: Runtime, channel: str, day: date, reason: str) -> int:
    """The channel has no statement of ``day`` (no trade at all): a run of an empty
    statement, kept as a one-line note of the channel's answer."""
    note = f"{channel} {day.isoformat()}: no statement ({reason})\n".encode()
    done = service.reconcile_statement(
        rt, channel=channel, day=day, fileobj=io.BytesIO(note), filename=(
            f"{channel}-{day.isoformat()}-no-statement.txt"), source="fetch", user_id=None,
        parse=lambda _channel, _file: [])
    log.info("statement fetch of %s %s: the channel has no statement of that day; recorded "
             "as run %s of an empty statement", channel, day, done.run_id)
    return int(done.created)
