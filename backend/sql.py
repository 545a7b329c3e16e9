"""Hot-path SQL: a few statements written once as text, run on the driver's own cursor.

Every notification runs the same handful of statements. Through the ORM or Core, each call
builds, cache-keys and compiles its statement and processes its result: about ten times the
CPU that PostgreSQL spends running it (``bench/README.md``, "Notifications"). These
statements are plain SQL with ``:name`` parameters, run on the DBAPI connection of the
session's own transaction — so they commit or roll back with everything else the session
did — prepared on the server by psycopg, and with their parameters converted exactly as the
columns' SQLAlchemy types would store them (the SQLite storage of ``UTCDateTime``, ``Date``
and ``JSON``), so rows written here and rows written by the ORM cannot be told apart.

Only the money path uses this; everything else stays with the ORM.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

from psycopg.types.json import Json
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_QUOTED = re.compile(r"('(?:[^']|'')*')")


def _pyformat(sql: str) -> str:
    """``:name`` → ``%(name)s`` outside string literals; a literal ``%`` is doubled."""
    parts = _QUOTED.split(sql)
    return "".join(part.replace("%", "%%") if k % 2 else _PARAM.sub(r"%(\1)s", part.replace(
        "%", "%%")) for k, part in enumerate(parts))


class Statement:
    """One statement's text for each dialect; ``:name`` parameters in both."""

    __slots__ = ("sqlite", "postgresql", "prepare")

    def __init__(self, sql: str, *, postgresql: str | None = None,
                 prepare: bool = True) -> None:
        self.prepare = prepare          # on PostgreSQL: a server-side prepared statement
        self.sqlite = " ".join(sql.split())
        self.postgresql = _pyformat(" ".join((postgresql or sql).split()))

    def __repr__(self) -> str:
        return f"Statement({self.sqlite!r})"


def _sqlite_value(value: Any) -> Any:
    # As SQLAlchemy's SQLite types store them: UTCDateTime as naive UTC text with
    # microseconds, Date as ISO text, JSON as json.dumps text.
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _pg_value(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if isinstance(value, dict | list):
        return Json(value)
    return value


class Tx:
    """The session's transaction, at the driver: ``Tx(session).one(stmt, **params)``.

    The session's ORM objects do not see what is written here: code that changes rows a
    caller may hold keeps the caller's copies in step (``payment_flow._in_step``).
    """

    __slots__ = ("postgres", "_dbapi", "_dialect")

    def __init__(self, session: Session) -> None:
        # What the session holds unwritten goes first: rows here may refer to it.
        session.flush()
        connection = session.connection()      # begins the session's transaction if need be
        self._bind(connection.connection.dbapi_connection, connection.dialect)

    def _bind(self, dbapi: Any, dialect: Dialect) -> None:
        self._dialect = dialect
        self.postgres = dialect.name == "postgresql"
        self._dbapi = dbapi

    @classmethod
    def on(cls, connection: Connection) -> Tx:
        """The same on a Core connection: in its transaction, or in autocommit if it is."""
        tx = cls.__new__(cls)
        tx._bind(connection.connection.dbapi_connection, connection.dialect)
        return tx

    def _run(self, stmt: Statement, params: Mapping[str, Any]) -> Any:
        cur = self._dbapi.cursor()
        try:
            if self.postgres:
                cur.execute(stmt.postgresql, {k: _pg_value(v) for k, v in params.items()},
                            prepare=stmt.prepare)
            else:
                cur.execute(stmt.sqlite, {k: _sqlite_value(v) for k, v in params.items()})
        except self._dialect.loaded_dbapi.Error as err:
            # The driver's error as SQLAlchemy's (IntegrityError, OperationalError, …), so
            # callers handle it the same whichever layer ran the statement.
            raise DBAPIError.instance(stmt.sqlite, dict(params), err,
                                      self._dialect.loaded_dbapi.Error,
                                      dialect=self._dialect) from err
        return cur

    def one(self, stmt: Statement, **params: Any) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self._run(stmt, params).fetchone()  # type: ignore[no-any-return]

    def all(self, stmt: Statement, **params: Any) -> list[tuple[Any, ...]]:
        return list(self._run(stmt, params).fetchall())

    def rowcount(self, stmt: Statement, **params: Any) -> int:
        return int(self._run(stmt, params).rowcount)

    def insert_many(self, table: str, columns: Sequence[tuple[str, str]],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Thousands of rows in one statement, where a multi-row INSERT's parsing would
        dominate: on PostgreSQL one array per column, unnested (``columns`` are (name, SQL
        type) pairs); on SQLite the driver's ``executemany``, a loop in C."""
        if not rows:
            return
        cur = self._dbapi.cursor()
        names = ", ".join(name for name, _ in columns)
        if self.postgres:
            arrays = ", ".join(f"%s::{sqltype}[]" for _, sqltype in columns)
            sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})"
        else:
            sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' for _ in columns)})"
        try:
            if self.postgres:
                cur.execute(sql, [[_pg_value(row[k]) for row in rows]
                                  for k in range(len(columns))])
            else:
                cur.executemany(sql, [[_sqlite_value(v) for v in row] for row in rows])
        except self._dialect.loaded_dbapi.Error as err:
            raise DBAPIError.instance(sql, {}, err, self._dialect.loaded_dbapi.Error,
                                      dialect=self._dialect) from err

    def insert_rows(self, table: str, columns: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Multi-row INSERTs: one round trip per ``ROWS_PER_INSERT`` rows."""
        for k in range(0, len(rows), ROWS_PER_INSERT):
            part = rows[k:k + ROWS_PER_INSERT]
            stmt = _multi_insert(table, tuple(columns), len(part))
            self._run(stmt, {f"{c}_{i}": v for i, row in enumerate(part)
                             for c, v in zip(columns, row, strict=True)})


@contextmanager
def reads(engine: Engine) -> Iterator[Tx]:
    """A pooled connection for reads that need no transaction: each statement commits on its
    own (psycopg's autocommit; SQLite's, as the engine sets it up), so there is no BEGIN and
    no COMMIT round trip. Under PostgreSQL's READ COMMITTED each statement of a transaction
    sees its own snapshot anyway: statements here see exactly what they would see there.
    Nothing that writes belongs here."""
    raw = engine.raw_connection()
    try:
        dbapi: Any = raw.dbapi_connection
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            dbapi.autocommit = True
        try:
            tx = Tx.__new__(Tx)
            tx._bind(dbapi, engine.dialect)
            yield tx
        finally:
            if postgres and not dbapi.closed:
                dbapi.autocommit = False     # as the pool hands connections out
    finally:
        raw.close()


# Well under both databases' limits on parameters per statement (SQLite 32,766; PostgreSQL
# 65,535). The statements for a few rows — a payment's lines and postings — are kept.
ROWS_PER_INSERT = 500
_KEPT_ROWS = 16
_MULTI: dict[tuple[str, tuple[str, ...], int], Statement] = {}


def _multi_insert(table: str, columns: tuple[str, ...], n: int) -> Statement:
    key = (table, columns, n)
    stmt = _MULTI.get(key)
    if stmt is None:
        values = ", ".join("(" + ", ".join(f":{c}_{i}" for c in columns) + ")"
                           for i in range(n))
        stmt = Statement(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}",
                         prepare=n <= _KEPT_ROWS)
        if n <= _KEPT_ROWS:
            _MULTI[key] = stmt
    return stmt
