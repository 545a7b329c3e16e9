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
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from backend.db import unit_of_work, utcnow
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


def _claim(rt: Runtime, caller: str, key: str, req_hash: str) -> None:
    now = utcnow()
    for _ in range(3):
        try:
            with unit_of_work(rt.sessions) as s:
                s.add(IdempotencyKey(caller=caller, key=key, request_hash=req_hash,
                                     created_at=now))
            return
        except IntegrityError:
            pass
        with unit_of_work(rt.sessions) as s:
            row = s.scalar(select(IdempotencyKey).where(
                col(IdempotencyKey.caller) == caller, col(IdempotencyKey.key) == key))
            if row is None:
                continue
            expired = row.created_at < now - RETENTION
            abandoned = row.state == "running" and row.created_at < now - ABANDONED
            if expired or abandoned:
                s.execute(delete(IdempotencyKey).where(col(IdempotencyKey.id) == row.id))
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
    with unit_of_work(rt.sessions) as s:
        s.execute(update(IdempotencyKey)
                  .where(col(IdempotencyKey.caller) == caller, col(IdempotencyKey.key) == key)
                  .values(state="done", status_code=status, response=body))


def _release(rt: Runtime, caller: str, key: str) -> None:
    with unit_of_work(rt.sessions) as s:
        s.execute(delete(IdempotencyKey).where(col(IdempotencyKey.caller) == caller,
                                               col(IdempotencyKey.key) == key))
