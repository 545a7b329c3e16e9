"""The audit trail for auditors (and admins): read, export, verify."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from backend.audit import service
from backend.audit.models import AuditEvent
from backend.audit.schemas import AuditEventOut, AuditPage, AuditVerified
from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import LOGGED_IN, MAX_ID, Forbidden, ValidationFailed, errors
from backend.security.tokens import Principal

router = APIRouter(prefix="/api/v1", tags=["audit"])
READERS = ("auditor", "admin")
MAX_DAYS = 366


def _reader(principal: Principal) -> None:
    if principal.role not in READERS:
        raise Forbidden("the audit trail is for auditors and admins")


# The service's records begin in this century; a date far outside it (0001-01-01) would
# overflow when its Beijing midnight is turned into UTC.
EARLIEST, LATEST = date(2000, 1, 1), date(2999, 12, 31)


def _range(first: date, last: date) -> None:
    for name, day in (("from", first), ("to", last)):
        if not EARLIEST <= day <= LATEST:
            raise ValidationFailed(f"{name}: {day} is outside {EARLIEST} to {LATEST}",
                                   fields=[name])
    if last < first:
        raise ValidationFailed(f"to: {last} is before from: {first}", fields=["to"])
    if (last - first).days >= MAX_DAYS:
        raise ValidationFailed(f"from, to: at most {MAX_DAYS} days at once", fields=["to"])


def _out(e: AuditEvent) -> AuditEventOut:
    return AuditEventOut(id=e.id or 0, occurred_at=e.occurred_at, recorded_at=e.recorded_at,
                         actor=e.actor_username, actor_id=e.actor_id, actor_role=e.actor_role,
                         action=e.action, subject_type=e.subject_type, subject_id=e.subject_id,
                         reason=e.reason, details=e.details, prev_hash=e.prev_hash,
                         hash=e.hash)


@router.get("/audit", response_model=AuditPage,
            responses=errors(*LOGGED_IN, "validation_error", "forbidden"))
def audit(session: SessionDep, principal: CurrentPrincipal,
          first: Annotated[date, Query(alias="from")], last: Annotated[date, Query(alias="to")],
          after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
          limit: Annotated[int, Query(ge=1, le=500)] = 100) -> AuditPage:
    """The events that occurred from `from` to `to` (business dates, at most 366 days), in
    order, `limit` at a time."""
    _reader(principal)
    _range(first, last)
    rows = service.events(session, first, last, after_id=after_id, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(events=[_out(e) for e in rows],
                     next_after_id=rows[-1].id if more and rows else None)


COLUMNS = ("id", "occurred_at", "recorded_at", "actor", "actor_id", "actor_role", "action",
           "subject_type", "subject_id", "reason", "details", "prev_hash", "hash")


@router.get("/audit.csv", response_class=StreamingResponse,
            responses={**errors(*LOGGED_IN, "validation_error", "forbidden"),
                       200: {"content": {"text/csv": {}},
                             "description": "The events as CSV (UTF-8), one a row."}})
def audit_csv(rt: RuntimeDep, principal: CurrentPrincipal,
              first: Annotated[date, Query(alias="from")],
              last: Annotated[date, Query(alias="to")]) -> StreamingResponse:
    """The events from `from` to `to` as CSV, streamed (at most 366 days)."""
    _reader(principal)
    _range(first, last)

    def rows() -> Iterator[str]:
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(COLUMNS)
        with rt.sessions() as session:
            for n, e in enumerate(service.all_events(session, first, last)):
                o = _out(e)
                out.writerow([o.id, o.occurred_at.isoformat(), o.recorded_at.isoformat(),
                              o.actor, o.actor_id if o.actor_id is not None else "",
                              o.actor_role, o.action, o.subject_type, o.subject_id,
                              o.reason or "",
                              json.dumps(o.details, ensure_ascii=False, sort_keys=True),
                              o.prev_hash, o.hash])
                if n % 200 == 0:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
        yield buf.getvalue()

    name = f"audit-{first}-{last}.csv"
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/audit/verify", response_model=AuditVerified, response_model_exclude_none=True,
            responses=errors(*LOGGED_IN, "forbidden"))
def verify(session: SessionDep, principal: CurrentPrincipal) -> AuditVerified:
    """Walk the whole hash chain: `{"ok": true, "checked": n}`, or the first broken link."""
    _reader(principal)
    ok, checked, broken = service.verify(session)
    if broken is not None:
        return AuditVerified(ok=False, checked=checked, broken_id=broken.id,
                             problem=broken.problem)
    return AuditVerified(ok=ok, checked=checked, head=service.head(session))
