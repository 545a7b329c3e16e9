"""backend/sql.py: driver-level statements store what the ORM would, in its transaction."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from backend.db import unit_of_work
from backend.ledger.models import JournalEntry
from backend.notifications.models import InboxNotification
from backend.runtime import Runtime
from backend.sql import Statement, Tx

BEIJING = timezone(timedelta(hours=8))

_INBOX = Statement(
    """INSERT INTO notification_inbox (channel, dedupe_key, out_trade_no, verified, outcome,
                                       headers, body, received_at)
       VALUES ('wechat', :key, NULL, true, 'applied', :headers, 'body', :at) RETURNING id""")
_ENTRY = Statement(
    """INSERT INTO journal_entries (kind, reason, business_date, occurred_at, created_at)
       VALUES ('correction', 'test', :day, :at, :at) RETURNING id""")


def test_placeholders_become_the_drivers_and_casts_and_percent_survive() -> None:
    s = Statement("SELECT :a::text, x % 2, ':not_a_param', :b_2 WHERE y LIKE 'a%'")
    assert s.sqlite == "SELECT :a::text, x % 2, ':not_a_param', :b_2 WHERE y LIKE 'a%'"
    assert s.postgresql.startswith("SELECT %(a)s::text, x %% 2, ':not_a_param', ")
    assert "%(b_2)s" in s.postgresql and "LIKE 'a%%'" in s.postgresql


def test_rows_written_at_the_driver_read_back_as_the_orm_wrote_them(rt: Runtime) -> None:
    at = datetime(2020, 11, 2, 23, 59, 59, 123456, tzinfo=BEIJING)
    headers = {"Wechatpay-Serial": "PUB_KEY_ID_1", "Content-Type": "application/json"}
    with unit_of_work(rt.sessions) as s:
        row = Tx(s).one(_INBOX, key="driver", headers=headers, at=at)
        assert row is not None
        s.add(InboxNotification(channel="wechat", dedupe_key="orm", verified=True,
                                outcome="applied", headers=headers, body="body",
                                received_at=at))
    with unit_of_work(rt.sessions) as s:
        rows = {r.dedupe_key: r for r in s.scalars(select(InboxNotification))}
        assert rows["driver"].id == row[0]
        for r in rows.values():
            assert r.received_at == at and r.received_at.tzinfo is not None
            assert r.headers == headers
        if rt.engine.dialect.name == "sqlite":
            # byte for byte what SQLAlchemy's types store
            stored = dict(s.execute(text(
                "SELECT dedupe_key, received_at || '|' || headers FROM notification_inbox")
            ).all())
            assert stored["driver"] == stored["orm"]


def test_dates_and_the_session_transaction(rt: Runtime) -> None:
    at = datetime(2020, 11, 2, 16, 0, tzinfo=UTC)      # 00:00 in Beijing, next day
    with rt.sessions() as s:
        tx = Tx(s)
        entry = tx.one(_ENTRY, day=date(2020, 11, 3), at=at)
        assert entry is not None
        got = s.scalar(select(JournalEntry).where(col(JournalEntry.id) == entry[0]))
        assert got is not None
        assert got.business_date == date(2020, 11, 3) and got.occurred_at == at
        s.rollback()                                     # with the session: gone
    with rt.sessions() as s:
        assert s.scalar(select(JournalEntry).where(col(JournalEntry.id) == entry[0])) is None


def test_a_naive_datetime_is_refused(rt: Runtime) -> None:
    with rt.sessions() as s, pytest.raises(ValueError, match="naive datetime"):
        Tx(s).one(_INBOX, key="naive", headers={}, at=datetime(2020, 11, 2, 9, 0))


def test_multi_row_insert_and_rowcount(rt: Runtime) -> None:
    at = datetime(2020, 11, 2, 1, 0, tzinfo=UTC)
    with unit_of_work(rt.sessions) as s:
        tx = Tx(s)
        tx.insert_rows("notification_inbox",
                       ("channel", "dedupe_key", "verified", "outcome", "headers", "body",
                        "received_at"),
                       [("alipay", f"k{i}", False, "rejected", {}, "b", at) for i in range(3)])
        n = tx.rowcount(Statement(
            "UPDATE notification_inbox SET detail = 'seen' WHERE channel = :ch"), ch="alipay")
        assert n == 3
    with rt.sessions() as s:
        assert sorted(s.scalars(select(col(InboxNotification.dedupe_key))
                                .where(col(InboxNotification.detail) == "seen"))) == [
            "k0", "k1", "k2"]


def test_large_inserts_are_split_and_driver_errors_are_sqlalchemys(rt: Runtime) -> None:
    at = datetime(2020, 11, 2, 1, 0, tzinfo=UTC)
    columns = ("channel", "dedupe_key", "verified", "outcome", "headers", "body", "received_at")
    with unit_of_work(rt.sessions) as s:        # more rows than one statement may carry
        Tx(s).insert_rows("notification_inbox", columns,
                          [("wechat", f"bulk{i}", True, "applied", {}, "b", at)
                           for i in range(1203)])
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(InboxNotification)) == 1203
    with rt.sessions() as s, pytest.raises(IntegrityError):   # the unique event index
        Tx(s).insert_rows("notification_inbox", columns,
                          [("wechat", "bulk7", True, "applied", {}, "b", at)])
