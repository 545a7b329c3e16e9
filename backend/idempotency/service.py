"""Idempotency keys with Stripe's semantics.

The same key with the same body within 24 hours answers the first response again; with a
different body, or while the first request still runs, ``idempotency_conflict``. The key row
is claimed in its own short transaction before the work starts, so two concurrent requests
with one key can never both run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from backend.db import utcnow
from backend.errors import AppError, Conflict, ValidationFailed
from backend.idempotency.models import IdempotencyKey
from backend.runtime import Runtime

KEY_RE = re.compile(r"^[\x21-\x7e]{1,64}$")
RETENTION = timedelta(hours=24)
# A claim this old was left by a crashed process; another request may take it over.
ABANDONED = timedelta(minutes=5)


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def run_idempotent(rt: Runtime, caller: str, key: str | None, req_hash: str,
                   work: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
    """Run ``work`` (which returns status and JSON body) at most once per caller and key."""
    if key is None:
        return work()
    if not KEY_RE.match(key):
        raise ValidationFailed("Idempotency-Key: 1–64 printable ASCII characters")
    _claim(rt, caller, key, req_hash)
    try:
        status, body = work()
    except AppError as exc:
        # A deliberate answer is the answer, 5xx included: a channel timeout's 504 names the
        # order it left pending, and a retry must find that order, not make a second one.
        _finish(rt, caller, key, exc.status, exc.body())
        raise
    except BaseException:
        _release(rt, caller, key)
        raise
    _finish(rt, caller, key, status, body)
    return status, body


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


def _claim(rt: Runtime, caller: str, key: str, req_hash: str) -> None:
    now = utcnow()
    table = IdempotencyKey.__table__  # type: ignore[attr-defined]
    ins = postgresql.insert if rt.engine.dialect.name == "postgresql" else sqlite.insert
    for _ in range(3):
        with _statement(rt) as conn:
            claimed = conn.execute(
                ins(table).values(caller=caller, key=key, request_hash=req_hash,
                                  state="running", created_at=now)
                .on_conflict_do_nothing(index_elements=["caller", "key"])
                .returning(table.c.id)).scalar()
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
    table = IdempotencyKey.__table__  # type: ignore[attr-defined]
    with _statement(rt) as conn:
        conn.execute(update(table).where(table.c.caller == caller, table.c.key == key)
                     .values(state="done", status_code=status, response=body))


def _release(rt: Runtime, caller: str, key: str) -> None:
    table = IdempotencyKey.__table__  # type: ignore[attr-defined]
    with _statement(rt) as conn:
        conn.execute(delete(table).where(table.c.caller == caller, table.c.key == key))
