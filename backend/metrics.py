"""Prometheus metrics: what operations watch (README, "Operations").

Counters and histograms are counted where things happen, per process; under ``serve
--workers N`` they are kept in prometheus-client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``, which ``serve`` sets up) and summed at the scrape. What the
database knows — the outbox's depth and age, dead jobs, open reconciliation discrepancies — is
read at the scrape, so every process answers the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import Integer, bindparam, text

from backend.db import UTCDateTime, utcnow
from backend.notifications.models import ANOMALY_KINDS, ANOMALY_WHERE

if TYPE_CHECKING:
    from backend.runtime import Runtime

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "collect_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"])
LATENCY = Histogram(
    "collect_http_request_duration_seconds",
    "Time from the request's arrival to the end of its answer, by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
NOTIFICATIONS = Counter(
    "collect_notifications_total",
    "Payment notifications from the channels, by channel and outcome (applied, repeat, "
    "rejected, malformed, unknown_order, amount_mismatch, transaction_conflict, error, ...)",
    ["channel", "outcome"])
RECEIPT_CHECKS = Counter(
    "collect_receipt_verifications_total",
    "Receipt tokens checked at /r/<token>, by outcome: valid, or invalid (malformed, a "
    "signature not ours, an unknown receipt, content that differs from the issued one)",
    ["outcome"])

RECEIPT_REPORTS = Counter(
    "collect_receipt_reports_total",
    "Residents' reports of paper receipts at POST /r/report, by kind: unknown_receipt and "
    "amount_differs (recorded for the town and auditors), matches (known with that amount: "
    "nothing recorded), repeat (the same report again while it is open: nothing new)",
    ["kind"])

_OUTBOX = text(
    "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,"
    " min(run_at) FILTER (WHERE status = 'pending' AND run_at <= :now) AS oldest_due,"
    " count(*) FILTER (WHERE status = 'dead') AS dead"
    " FROM outbox WHERE status IN ('pending', 'dead')",
).bindparams(bindparam("now", type_=UTCDateTime)).columns(
    pending=Integer, oldest_due=UTCDateTime, dead=Integer)
# Anomalies as the inbox holds them (ix_inbox_anomalies): the worker's active queries find
# them too, in a process whose own counters no scrape reads.
_ANOMALIES = text(
    "SELECT outcome, count(*) FROM notification_inbox"
    f" WHERE {ANOMALY_WHERE} GROUP BY outcome")
_DISCREPANCIES = text(
    "SELECT channel, count(*) FROM discrepancies WHERE status = 'open' GROUP BY channel")

# Route label for requests no route matched: never the path itself (a scanner's paths
# would make a new series each).
UNMATCHED = "unmatched"


class _Source(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class DatabaseGauges:
    """What the database holds that operations watch, read at every scrape (indexed reads:
    ``ix_outbox_due``, ``ix_discrepancies_status``)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("collect_database_up",
                               "1 when the metrics' database reads succeeded at this scrape")
        try:
            with self.rt.engine.connect() as conn:
                pending, oldest_due, dead = conn.execute(_OUTBOX, {"now": utcnow()}).one()
                open_by_channel = conn.execute(_DISCREPANCIES).all()
                anomalies: dict[str, int] = dict(conn.execute(_ANOMALIES).tuples().all())
        except Exception as exc:
            log.warning("metrics: the database could not be read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        g = GaugeMetricFamily("collect_outbox_pending_jobs",
                              "Outbox jobs waiting to run (due or scheduled later)")
        g.add_metric([], pending)
        yield g
        g = GaugeMetricFamily("collect_outbox_oldest_due_age_seconds",
                              "How long the oldest due outbox job has been waiting; 0 if none")
        g.add_metric([], _age_s(oldest_due))
        yield g
        g = GaugeMetricFamily("collect_outbox_dead_jobs",
                              "Outbox jobs that gave up after their retries (need a person)")
        g.add_metric([], dead)
        yield g
        c = CounterMetricFamily(
            "collect_anomalies",
            "Anomalies recorded for staff, by kind: a channel reporting another amount "
            "(amount_mismatch), a transaction id two trades claim (transaction_conflict, "
            "shared_transaction); counted from the notification inbox", labels=["kind"])
        for kind in ANOMALY_KINDS:
            c.add_metric([kind], int(anomalies.get(kind, 0)))
        yield c
        g = GaugeMetricFamily("collect_reconciliation_discrepancies_open",
                              "Reconciliation discrepancies still open, by channel",
                              labels=["channel"])
        for channel, n in open_by_channel:
            g.add_metric([channel], n)
        yield g


def _age_s(oldest: datetime | None) -> float:
    return 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())


class _Scrape:
    def __init__(self, sources: Iterable[_Source]) -> None:
        self.sources = tuple(sources)

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


def render(rt: Runtime) -> bytes:
    """The Prometheus text of every process of this serve, and the database's gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counted: _Source = multiprocess.MultiProcessCollector(None)  # type: ignore[arg-type]
    else:
        counted = REGISTRY
    return generate_latest(_Scrape([counted, DatabaseGauges(rt)]))  # type: ignore[arg-type]
