"""The outbox's retry schedule: each failure counts once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from backend.db import unit_of_work, utcnow
from backend.outbox import service as outbox
from backend.outbox.models import OutboxJob
from backend.runtime import Runtime

# README: retried after 10 s, 30 s, 2 min, 10 min, 30 min, 1 h, 6 h, then dead
SCHEDULE_S = [10, 30, 120, 600, 1800, 3600, 6 * 3600]


def _always_fails(rt: Any, payload: dict[str, Any]) -> None:
    raise RuntimeError("the far side is down")


def _job(rt: Runtime) -> OutboxJob:
    with unit_of_work(rt.sessions) as s:
        job = s.scalar(select(OutboxJob))
        assert job is not None
        return job


def test_a_failing_job_follows_the_schedule_and_dies_after_its_eighth_try(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.worker.handlers  # noqa: F401  (registered before we add ours)

    monkeypatch.setitem(outbox.HANDLERS, "test_always_fails", _always_fails)
    with unit_of_work(rt.sessions) as s:
        outbox.enqueue(s, "test_always_fails", {})
    for n, delay in enumerate(SCHEDULE_S, start=1):
        before = utcnow()
        assert outbox.run_due(rt) == 1
        job = _job(rt)
        assert job.tries == n and job.status == "pending", (n, job.tries, job.status)
        assert before + timedelta(seconds=delay - 1) <= job.run_at
        assert job.run_at <= utcnow() + timedelta(seconds=delay + 1)
        assert "the far side is down" in (job.last_error or "")
        assert outbox.run_due(rt) == 0            # not due before its time
        with unit_of_work(rt.sessions) as s:     # the clock reaches run_at
            s.execute(update(OutboxJob).values(run_at=utcnow() - timedelta(seconds=1)))
    assert outbox.run_due(rt) == 1
    job = _job(rt)
    assert job.tries == 8 and job.status == "dead"
    with unit_of_work(rt.sessions) as s:
        s.execute(update(OutboxJob).values(run_at=utcnow() - timedelta(seconds=1)))
    assert outbox.run_due(rt) == 0                # a dead job is not run again
