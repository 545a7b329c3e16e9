"""The worker's statement fetch, driven directly with the business clock moved: each
published day fetched once, failures retried later, a day without trades recorded."""

from __future__ import annotations

import logging
from datetime import date

import pytest
from sqlalchemy import select
from sqlmodel import col

from backend.reconciliation.fetching import Backoff, fetch_due_statements
from backend.reconciliation.models import ReconciliationRun, Statement
from tests.conftest import Live
from tests.orders.helpers import order, pay, ref, resident_headers, seed
from tests.reconciliation.test_fetch import move_clock

D2, D3 = date(2020, 11, 2), date(2020, 11, 3)


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _runs(live: Live) -> dict[tuple[str, date], tuple[int, str]]:
    with live.rt.sessions() as s:
        rows = s.execute(select(col(ReconciliationRun.channel),
                                col(ReconciliationRun.business_date),
                                col(ReconciliationRun.statement_payments),
                                col(Statement.filename))
                         .join(Statement, col(Statement.id) == col(ReconciliationRun.statement_id))
                         ).all()
    return {(c, d): (n, f) for c, d, n, f in rows}


def test_the_worker_fetches_each_published_day_once(live: Live,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    for name, channel in (("张三", "wechat_native"), ("李梅", "alipay_qr")):
        r = order(live, h, channel, [{"resident_ref": ref(live, h, name, people[name]),
                                      "insurance": "medical"}])
        assert r.status_code == 201, r.text
        pay(live, r.json()["payment"]["out_trade_no"])
    ticks = Ticks()
    backoff = Backoff(now=ticks)
    caplog.set_level(logging.INFO, logger="backend.reconciliation.fetching")

    assert fetch_due_statements(live.rt, backoff=backoff) == 0      # nothing published
    move_clock(live, "2020-11-03T09:30:00+08:00")                  # Alipay's is, WeChat's not
    assert fetch_due_statements(live.rt, backoff=backoff) == 1
    assert set(_runs(live)) == {("alipay", D2)}

    # WeChat's file damaged on the way: logged, and not asked again until the delay passes
    move_clock(live, "2020-11-03T10:30:00+08:00")
    faults = live.http.post("/sandbox/faults", json={"channel": "wechat",
                                                      "corrupt_statement": True})
    assert faults.status_code == 200, faults.text
    caplog.clear()
    assert fetch_due_statements(live.rt, backoff=backoff) == 0
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "wechat 2020-11-02 failed (try 1" in error.getMessage()
    assert "statement_hash_mismatch" in error.getMessage() or "channel_error" in error.getMessage()
    live.http.post("/sandbox/faults", json={"channel": "wechat", "corrupt_statement": False})
    caplog.clear()
    assert fetch_due_statements(live.rt, backoff=backoff) == 0     # waiting
    assert caplog.records == []
    ticks.t += 5 * 60
    assert fetch_due_statements(live.rt, backoff=backoff) == 1
    assert _runs(live)[("wechat", D2)][0] == 1
    assert fetch_due_statements(live.rt, backoff=backoff) == 0     # each day once

    # 11-03 had no trade: WeChat has no bill (recorded as an empty run, never asked again);
    # Alipay cannot say so (asked again later, while the day is in the window)
    move_clock(live, "2020-11-04T10:30:00+08:00")
    assert fetch_due_statements(live.rt, backoff=backoff) == 1
    runs = _runs(live)
    assert runs[("wechat", D3)] == (0, "wechat-2020-11-03-no-statement.txt")
    assert ("alipay", D3) not in runs
    ticks.t += 3600
    caplog.clear()
    assert fetch_due_statements(live.rt, backoff=backoff) == 0
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "statement fetch of alipay 2020-11-03: no"]
    # never before the channel's first payment: no day before 11-02 was asked
    assert {d for _, d in _runs(live)} == {D2, D3}

    # As the worker runs it (its schedule's own callable, no backoff given): one backoff per
    # runtime, kept between calls — the 11-03 Alipay retry waits, nothing is fetched twice.
    from backend.worker.runner import SCHEDULE
    job = next(fn for name, _, fn in SCHEDULE if name == "fetch_statements")
    assert job(live.rt) == 0
    assert job(live.rt) == 0
    assert live.rt.__dict__["statement_fetch_backoff"] is not backoff
