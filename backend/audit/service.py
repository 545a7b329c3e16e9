"""Recording staff actions in the audit trail, and checking its hash chain.

``record`` is called inside the transaction of the change it records: the event commits or
rolls back with it. Each event's ``hash`` is SHA-256 over the canonical JSON (sorted keys,
no spaces, UTF-8) of its content and ``prev_hash``, the hash of the event before it (64
zeros for the first). Appends are serialised — on PostgreSQL by a transaction-level advisory
lock taken before the last hash is read; SQLite has one writer at a time — so no two events
ever share a ``prev_hash``. Call ``record`` last in a transaction: the lock is held until it
commits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.audit.models import AuditEvent
from backend.auth.models import StaffUser
from backend.clock import SHANGHAI, BusinessClock, real_now
from backend.security.pii import mask_id_number, mask_phone
from backend.security.tokens import Principal

GENESIS = "0" * 64
#: pg_advisory_xact_lock key of the chain's appends ("audit" in ASCII).
CHAIN_LOCK = 0x6175646974
VERIFY_BATCH = 1000
# Runs of 11+ digits (with an optional X check digit): ID numbers and phone numbers.
_LONG_NUMBER = re.compile(r"\d{14,17}[\dXx]|\d{11,13}")
# A whole SHA-256 (or SHA-1, MD5) hex digest is a file's fingerprint, kept as it is: its
# digit runs are not ID or phone numbers, and masked it could not be compared with the file.
# (At least one letter: a run of digits alone is masked whatever its length.)
_DIGEST = re.compile(r"(?=.*[a-f])(?:[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64})")

# Administrative division codes (统计用区划代码: a town's 9 digits, a village's 12) are public,
# not personal: under these keys a code is kept as it is, where a run of 11-13 digits would
# otherwise be masked as a phone number.
_REGION_KEYS = frozenset({"village_code", "town_code"})
_REGION_CODE = re.compile(r"\d{6,12}")

Actor = Principal | StaffUser | int | None


def _masked(value: Any) -> Any:
    """``details`` as kept: JSON types only, every ID or phone number in a string masked."""
    if isinstance(value, dict):
        return {str(k): v if k in _REGION_KEYS and isinstance(v, str)
                and _REGION_CODE.fullmatch(v) else _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, str):
        if _DIGEST.fullmatch(value):
            return value
        return _LONG_NUMBER.sub(lambda m: mask_id_number(m.group(0)) if len(m.group(0)) >= 15
                                else mask_phone(m.group(0)), value)
    if isinstance(value, bool | int | None):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"audit details: {type(value).__name__} is not kept (use str or int)")


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def content_of(event: AuditEvent) -> dict[str, Any]:
    """What the hash covers: every column but ``id`` and ``hash``."""
    return {"occurred_at": _instant(event.occurred_at),
            "recorded_at": _instant(event.recorded_at),
            "actor_id": event.actor_id, "actor_username": event.actor_username,
            "actor_role": event.actor_role, "action": event.action,
            "subject_type": event.subject_type, "subject_id": event.subject_id,
            "reason": event.reason, "details": event.details, "prev_hash": event.prev_hash}


def hash_of(event: AuditEvent) -> str:
    canonical = json.dumps(content_of(event), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _actor(session: Session, actor: Actor) -> tuple[int | None, str, str]:
    if actor is None:
        return None, "system", "system"
    if isinstance(actor, StaffUser):
        return actor.id, actor.username, actor.role
    if isinstance(actor, Principal):
        if not actor.sub.startswith("staff:"):
            return None, actor.sub[:64], actor.role
        actor = int(actor.sub.removeprefix("staff:"))
    user = session.get(StaffUser, actor)
    if user is None:
        return actor, f"staff:{actor}", "unknown"
    return user.id, user.username, user.role


def record(session: Session, clock: BusinessClock | Any, actor: Actor, action: str,
           subject_type: str, subject_id: object, *, reason: str | None = None,
           details: dict[str, Any] | None = None) -> AuditEvent:
    """Append one event to the trail, in ``session``'s transaction.

    ``clock``: the business clock, or the Runtime holding it (``rt``). ``actor``: the staff
    member (a Principal, a StaffUser or a staff user id), None for the system. ``details``
    are JSON values; ID and phone numbers in them are masked.
    """
    business = clock.clock if hasattr(clock, "clock") else clock
    actor_id, username, role = _actor(session, actor)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})
    prev = session.scalar(select(col(AuditEvent.hash)).order_by(col(AuditEvent.id).desc())
                          .limit(1)) or GENESIS
    event = AuditEvent(occurred_at=business.now(), recorded_at=real_now(), actor_id=actor_id,
                       actor_username=username[:64], actor_role=role[:16], action=action,
                       subject_type=subject_type, subject_id=str(subject_id)[:64],
                       reason=_masked(reason[:500]) if reason else None,
                       details=json.loads(json.dumps(_masked(details or {}))),
                       prev_hash=prev, hash="")
    event.hash = hash_of(event)
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class Broken:
    """The first event whose link does not hold, and how."""

    id: int
    problem: str       # "prev_hash": not the hash before it; "hash": its content changed


def verify(session: Session, batch: int = VERIFY_BATCH) -> tuple[bool, int, Broken | None]:
    """Walk the chain in id order, ``batch`` events at a time: (ok, events checked, the
    first broken link). A changed event fails its own hash; a deleted one, the link of the
    event after it."""
    prev, checked, after = GENESIS, 0, 0
    while True:
        rows = session.scalars(select(AuditEvent).where(col(AuditEvent.id) > after)
                               .order_by(col(AuditEvent.id)).limit(batch)).all()
        if not rows:
            return True, checked, None
        for event in rows:
            assert event.id is not None
            if event.prev_hash != prev:
                return False, checked, Broken(event.id, "prev_hash")
            if hash_of(event) != event.hash:
                return False, checked, Broken(event.id, "hash")
            prev, after, checked = event.hash, event.id, checked + 1
        session.expunge_all()      # bounded memory however long the trail


def head(session: Session) -> str:
    """The hash of the last event (GENESIS for an empty trail): noted down by an auditor, it
    shows later that nothing was cut off the end."""
    return session.scalar(select(col(AuditEvent.hash)).order_by(col(AuditEvent.id).desc())
                          .limit(1)) or GENESIS


def day_bounds(first: date, last: date) -> tuple[datetime, datetime]:
    """The instants from the start of business day ``first`` to the end of ``last``."""
    start = datetime.combine(first, time(), SHANGHAI)
    end = datetime.combine(last + timedelta(days=1), time(), SHANGHAI)
    return start, end


def events(session: Session, first: date, last: date, *, after_id: int = 0,
           limit: int = 100) -> list[AuditEvent]:
    """The events that occurred (business clock) on ``first``..``last``, in id order."""
    start, end = day_bounds(first, last)
    return list(session.scalars(
        select(AuditEvent).where(col(AuditEvent.occurred_at) >= start,
                                 col(AuditEvent.occurred_at) < end,
                                 col(AuditEvent.id) > after_id)
        .order_by(col(AuditEvent.id)).limit(limit)).all())


def all_events(session: Session, first: date, last: date,
               batch: int = VERIFY_BATCH) -> Iterator[AuditEvent]:
    after = 0
    while True:
        rows = events(session, first, last, after_id=after, limit=batch)
        if not rows:
            return
        yield from rows
        after = rows[-1].id or after
        session.expunge_all()
