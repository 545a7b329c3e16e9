"""Engine, sessions and the unit of work.

One request or job is one transaction: services never commit; the route's session
dependency commits once at the end, or rolls everything back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Fen(TypeDecorator[int]):
    """Money, in integer fen: BIGINT on PostgreSQL, where INTEGER stops at 2^31 - 1 fen
    (21.47 million yuan — less than a town's year of collections).

    SQLite's INTEGER is already a 64-bit integer whatever the declared type, so there the
    columns stay declared INTEGER: renaming the type would rebuild every money table for no
    change in what it can hold. (``reconciliation_runs``' sums were created BIGINT on both
    and keep ``BigInteger``.) ``tests/ledger/test_money_columns.py`` holds every ``*_fen`` column
    on PostgreSQL to BIGINT.
    """

    impl = BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(Integer() if dialect.name == "sqlite" else BigInteger())


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str, **kw: Any) -> Engine:
    # A database error's text would otherwise carry the statement's parameters — a
    # resident's name, say — into the logs.
    kw.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        kw.pop("pool_size", None)     # SQLite takes one writer at a time: its defaults do
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kw)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            # Take transactions into our own hands (pysqlite's recipe in SQLAlchemy's docs)...
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # ...and start each one IMMEDIATE: writers queue on the lock instead of failing
            # with SQLITE_BUSY when two transactions that read first both want to write.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if "poolclass" not in kw:
        kw.setdefault("pool_size", 20)
        # Room for every request thread (anyio's 40, the notification threads, the worker)
        # to hold one at once; past pool_size they are opened and closed as needed.
        kw.setdefault("max_overflow", 40)
        # No pre-ping: it costs a round trip on every checkout. Connections are recycled
        # instead, and a dead one fails its transaction, which the caller retries.
        kw.setdefault("pool_recycle", 1800)
    return create_engine(url, **kw)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits once if the block succeeds, else rolls back everything."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
