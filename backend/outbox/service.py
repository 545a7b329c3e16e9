"""The outbox: jobs written in the transaction that made them necessary, run by the worker.

Claiming is safe with several workers: due rows are taken with ``FOR UPDATE SKIP LOCKED``
(PostgreSQL; SQLite has one writer at a time anyway) and leased by moving their ``run_at``
forward, so a worker that dies mid-job only delays it. Failures retry on ``RETRY_AFTER_S``;
after the last retry a job is ``dead`` and listed for staff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.db import unit_of_work, utcnow
from backend.outbox.models import OutboxJob

log = logging.getLogger(__name__)

# seconds before retry n (1-based); a job failing after the last one is dead
RETRY_AFTER_S = (10, 30, 120, 600, 1800, 3600, 6 * 3600)
LEASE = timedelta(minutes=5)
BATCH = 20

Handler = Callable[[Any, dict[str, Any]], None]
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


def enqueue(session: Session, kind: str, payload: dict[str, Any], *, delay_s: float = 0) -> None:
    session.add(OutboxJob(kind=kind, payload=payload,
                          run_at=utcnow() + timedelta(seconds=delay_s)))


def claim(rt: Any, limit: int = BATCH) -> list[OutboxJob]:
    now = utcnow()
    with unit_of_work(rt.sessions) as s:
        jobs = list(s.scalars(select(OutboxJob)
                              .where(col(OutboxJob.status) == "pending",
                                     col(OutboxJob.run_at) <= now)
                              .order_by(col(OutboxJob.run_at)).limit(limit)
                              .with_for_update(skip_locked=True)))
        if jobs:
            # One count per try, in SQL; "evaluate" carries the new values onto the jobs
            # loaded above (adding one in memory too would count every try twice).
            s.execute(update(OutboxJob).where(col(OutboxJob.id).in_([j.id for j in jobs]))
                      .values(run_at=now + LEASE, tries=col(OutboxJob.tries) + 1,
                              updated_at=now)
                      .execution_options(synchronize_session="evaluate"))
        return jobs


def run_due(rt: Any) -> int:
    """Run the jobs that are due; return how many ran."""
    import backend.worker.handlers  # noqa: F401  (registers the handlers)

    jobs = claim(rt)
    for job in jobs:
        fn = HANDLERS.get(job.kind)
        try:
            if fn is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            fn(rt, job.payload)
        except Exception as exc:  # a job's failure is recorded, never lost
            _failed(rt, job, f"{type(exc).__name__}: {exc}")
            continue
        with unit_of_work(rt.sessions) as s:
            s.execute(update(OutboxJob).where(col(OutboxJob.id) == job.id)
                      .values(status="done", last_error=None, updated_at=utcnow()))
    return len(jobs)


def _failed(rt: Any, job: OutboxJob, error: str) -> None:
    dead = job.tries > len(RETRY_AFTER_S)
    log.log(logging.ERROR if dead else logging.WARNING, "job %s %s (try %d) failed: %s",
            job.id, job.kind, job.tries, error)
    with unit_of_work(rt.sessions) as s:
        values: dict[str, Any] = {"last_error": error[:500], "updated_at": utcnow()}
        if dead:
            values["status"] = "dead"
        else:
            values["run_at"] = utcnow() + timedelta(seconds=RETRY_AFTER_S[job.tries - 1])
        s.execute(update(OutboxJob).where(col(OutboxJob.id) == job.id).values(**values))


def retry_later(rt: Any, job_kind: str, payload: dict[str, Any], delay_s: float) -> None:
    with unit_of_work(rt.sessions) as s:
        enqueue(s, job_kind, payload, delay_s=delay_s)
