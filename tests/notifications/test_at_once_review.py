"""Review of the one-statement notification path (migration 0015): the cases where it meets
another transaction mid-way must end as the general path ends them."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from backend.auth.service import create_staff_user
from backend.clock import business_date, real_now
from backend.db import unit_of_work
from backend.ledger import service as ledger
from backend.notifications import service
from payment_adapters.base import Channel
from tests.conftest import Live
from tests.notifications.test_at_once import _dsn, _two_orders, spy  # noqa: F401
from tests.notifications.test_notify import notification

pytestmark = pytest.mark.parametrize("backend_name", ["postgres"])


def _waiting_on_a_lock(dsn: str, n: int = 1) -> None:
    deadline = time.monotonic() + 10
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchone() != (n,):
            assert time.monotonic() < deadline, "nobody waits on the lock"
            time.sleep(0.02)


def _verified(live: Live, note: dict[str, Any], channel: Channel) -> Any:
    return live.rt.channels.verifiers[channel].verify(note["headers"], note["body"].encode(),
                                                      real_now())


@pytest.mark.parametrize("channel", ["alipay"])
def test_txn_id_taken_at_the_same_moment_is_a_conflict_on_the_threads_path(
        live: Live, channel: str, spy: list[Any]) -> None:  # noqa: F811
    """Another trade's payment under the same transaction id commits while the one
    statement inserts: the general path calls that a transaction conflict (audited as such,
    the trade queried); the threads' one-statement path must end the same way, not as an
    internal error."""
    a, b = _two_orders(live, channel)
    note = notification(live, a["payment"]["out_trade_no"])
    txn = _verified(live, note, Channel.ALIPAY).transaction_id
    dsn = _dsn(live)
    now = datetime.now(UTC)
    answers: list[Any] = []
    with psycopg.connect(dsn) as other:
        # the other trade's payment under the same transaction id, not yet committed
        other.execute(
            "INSERT INTO payments (attempt_id, order_id, channel, transaction_id, amount_fen, "
            "paid_at, business_date, source, shared_transaction, created_at) "
            "SELECT a.id, a.order_id, a.channel, %s, a.amount_fen, %s, %s, 'notification', "
            "false, %s FROM attempts a WHERE a.out_trade_no = %s",
            (txn, now, business_date(now), now, b["payment"]["out_trade_no"]))
        t = threading.Thread(target=lambda: answers.append(service.handle(
            live.rt, Channel.ALIPAY, note["headers"], note["body"].encode())))
        t.start()
        _waiting_on_a_lock(dsn)
        other.commit()
        t.join(20)
    assert answers and answers[0].body.decode() != "success"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT outcome FROM notification_inbox").fetchall() == [
            ("transaction_conflict",)]
        assert conn.execute("SELECT count(*) FROM outbox WHERE kind = 'sync_attempt'"
                            ).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM payments").fetchone() == (1,)


@pytest.mark.parametrize("channel", ["wechat"])
def test_a_day_closed_while_the_statement_waits_sends_the_entry_to_the_next_day(
        live: Live, channel: str) -> None:
    """As post_entry: an entry queued behind a close (SHARE on journal_entries) sees the
    day closed and goes into the next open day, with for_date the day it was for — also
    on a connection where the function's plans are cached already."""
    with unit_of_work(live.rt.sessions) as s:
        uid = create_staff_user(s, username="fin", password="finance-pass", role="finance").id
        ledger.account_ids(s, [ledger.channel_clearing(channel),
                               ledger.contributions("medical", 2021)])
    first, second = _two_orders(live, channel)
    dsn = _dsn(live)
    paid_at = datetime(2020, 11, 1, 12, tzinfo=UTC)
    day = business_date(paid_at)
    results: list[Any] = []

    def apply(conn: psycopg.Connection[Any], o: dict[str, Any], k: int) -> Any:
        return conn.execute(
            "SELECT apply_channel_notification(%s, %s, %s, %s, %s, %s, %s, %s, "
            "'{}'::json, 'x', 'notification')",
            (channel, o["payment"]["out_trade_no"], f"4200000000202011010000000{k:03d}",
             o["amount_fen"], paid_at, day, datetime.now(UTC), f"event-{k}")).fetchone()

    with psycopg.connect(dsn, autocommit=True) as payer:
        assert str(apply(payer, first, 1)[0]).startswith("applied")   # plans cached
        with psycopg.connect(dsn) as closer:
            closer.execute("LOCK TABLE journal_entries IN SHARE MODE")
            closer.execute(
                "INSERT INTO closed_days (business_date, closed_by, closed_at, totals, note) "
                "VALUES (%s, %s, now(), '{}', '')", (day, uid))
            t = threading.Thread(target=lambda: results.append(apply(payer, second, 2)))
            t.start()
            _waiting_on_a_lock(dsn)
            closer.commit()
            t.join(20)
    assert results and str(results[0][0]).startswith("applied")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT o.order_no, e.business_date, e.for_date FROM journal_entries e "
            "JOIN payments p ON p.id = e.payment_id JOIN orders o ON o.id = p.order_id "
            "ORDER BY e.id").fetchall()
        posted = conn.execute(
            "SELECT DISTINCT p.business_date FROM postings p JOIN journal_entries e "
            "ON e.id = p.entry_id WHERE e.id = (SELECT max(id) FROM journal_entries)"
        ).fetchall()
    assert rows == [(first["order_no"], day, None),
                    (second["order_no"], day + timedelta(days=1), day)]
    assert posted == [(day + timedelta(days=1),)]
