"""Idempotency keys with Stripe's semantics.

The same key with the same body within 24 hours answers the first response again; with a
different body, or while the first request still runs, ``idempotency_conflict``. The key row
is claimed in its own short transaction before the work starts, so two concurrent requests
with one key can never both run.

Order creation is a hot path (``bench/README.md``, "Order creation"), so these are SQL text
at the driver (``backend/sql.py``), and a work that ends in a transaction of its own may
record its answer in that transaction (:class:`Finish`) instead of a statement after it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.errors import AppError, Conflict, ValidationFailed
from backend.idempotency.models import IdempotencyKey
from backend.runtime import Runtime
from backend.sql import Statement, Tx

KEY_RE = re.compile(r"^[\x21-\x7e]{1,64}$")
RETENTION = timedelta(hours=24)
# A claim this old was left by a crashed process; another request may take it over.
ABANDONED = timedelta(minutes=5)


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def run_idempotent(rt: Runtime, caller: str, key: str | None, req_hash: str,
                   work: Callable[..., tuple[int, Any]], *,
                   finishes_itself: bool = False) -> tuple[int, Any]:
    """Run ``work`` (which returns status and JSON body) at most once per caller and key.

    With ``finishes_itself``, ``work`` is called with a :class:`Finish`: it may record its
    answer with it in its own last transaction, saving the statement (and commit) after.
    """
    finish = Finish(caller, key)

    def run() -> tuple[int, Any]:
        return work(finish) if finishes_itself else work()

    if key is None:
        return run()
    if not KEY_RE.match(key):
        raise ValidationFailed("Idempotency-Key: 1–64 printable ASCII characters")
    _claim(rt, caller, key, req_hash)
    try:
        status, body = run()
    except AppError as exc:
        # A deliberate answer is the answer, 5xx included: a channel timeout's 504 names the
        # order it left pending, and a retry must find that order, not make a second one.
        # (A Finish inside a transaction that then failed was rolled back with it.)
        _finish(rt, caller, key, exc.status, exc.body())
        raise
    except BaseException:
        _release(rt, caller, key)
        raise
    if not finish.recorded:
        _finish(rt, caller, key, status, body)
    return status, body


_FINISH = Statement(
    """UPDATE idempotency_keys SET state = 'done', status_code = :status, response = :body
       WHERE caller = :caller AND "key" = :key""")


class Finish:
    """Records the answer to a request's key in the work's own transaction: the answer is
    stored if and only if what the work did is committed."""

    __slots__ = ("caller", "key", "recorded")

    def __init__(self, caller: str, key: str | None) -> None:
        self.caller, self.key = caller, key
        self.recorded = False

    def __call__(self, session: Session, status: int, body: Any) -> None:
        if self.key is None:
            return
        Tx(session).rowcount(_FINISH, status=status, body=body, caller=self.caller,
                             key=self.key)
        self.recorded = True


class Replay(Exception):
    """The stored first answer, to send again."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__("replay")
        self.status, self.body = status, body


@contextmanager
def _statement(rt: Runtime) -> Iterator[Connection]:
    """One statement, committed on its own: on PostgreSQL in autocommit, one round trip
    instead of BEGIN, statement, COMMIT (these rows guard requests; they hold no money)."""
    if rt.engine.dialect.name == "postgresql":
        with rt.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn
    else:
        with rt.engine.begin() as conn:
            yield conn


# The claim's commit need not wait for its WAL flush (synchronous_commit off, for this one
# statement's transaction: set_config(…, true) holds until its end, and the commit record is
# written before settings are reset). Nothing is lost that matters: whatever the request
# then commits — its work, its stored answer, the release of the key — is committed
# synchronously later in the same WAL, which makes the claim durable with it; a claim lost
# in a crash is one whose request changed nothing, and its retry runs anew.
_CLAIM_SQL = """INSERT INTO idempotency_keys (caller, "key", request_hash, state, created_at)
    SELECT :caller, :key, :hash, 'running', :now {where}
    ON CONFLICT (caller, "key") DO NOTHING RETURNING id"""
_CLAIM = Statement(_CLAIM_SQL.format(where="WHERE true"), postgresql=_CLAIM_SQL.format(
    where="WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL"))


def _claim(rt: Runtime, caller: str, key: str, req_hash: str) -> None:
    now = utcnow()
    table = IdempotencyKey.__table__  # type: ignore[attr-defined]
    for _ in range(3):
        with _statement(rt) as conn:
            claimed = Tx.on(conn).one(_CLAIM, caller=caller, key=key, hash=req_hash, now=now)
        if claimed is not None:
            return
        with _statement(rt) as conn:
            row = conn.execute(select(table).where(table.c.caller == caller,
                                                   table.c.key == key)).first()
            if row is None:
                continue
            expired = row.created_at < now - RETENTION
            abandoned = row.state == "running" and row.created_at < now - ABANDONED
            if expired or abandoned:
                conn.execute(delete(table).where(table.c.id == row.id,
                                                 table.c.created_at == row.created_at))
                continue
        if row.request_hash != req_hash:
            raise Conflict("this Idempotency-Key was used with a different request body",
                           code="idempotency_conflict")
        if row.state == "running":
            raise Conflict("a request with this Idempotency-Key is still running; retry "
                           "shortly", code="idempotency_conflict")
        raise Replay(int(row.status_code or 200), row.response)
    raise Conflict("could not claim the Idempotency-Key; retry", code="idempotency_conflict")


def _finish(rt: Runtime, caller: str, key: str, status: int, body: Any) -> None:
    with _statement(rt) as conn:
        Tx.on(conn).rowcount(_FINISH, status=status, body=body, caller=caller, key=key)


def _release(rt: Runtime, caller: str, key: str) -> None:
    table = IdempotencyKey.__table__  # type: ignore[attr-defined]
    with _statement(rt) as conn:
        conn.execute(delete(table).where(table.c.caller == caller, table.c.key == key))
