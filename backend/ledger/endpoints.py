from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from backend.auth.models import StaffUser
from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import JSON_BODY, LOGGED_IN, Forbidden, errors
from backend.ledger import closing
from backend.ledger.daily import ledger_scope
from backend.ledger.schemas import CloseDayIn, DailyLedger, DailyTotals, Day, Days

router = APIRouter(prefix="/api/v1/ledger", tags=["ledger"])
CODE = r"^[0-9A-Za-z_-]{1,32}$"


@router.get("/daily", response_model=DailyLedger,
            responses=errors(*LOGGED_IN, "validation_error", "forbidden"))
def daily(session: SessionDep, rt: RuntimeDep, principal: CurrentPrincipal,
          day: Annotated[date, Query(alias="date")],
          town: Annotated[str | None, Query(pattern=CODE)] = None,
          village: Annotated[str | None, Query(pattern=CODE)] = None) -> DailyLedger:
    town, village = ledger_scope(principal, town, village)
    return closing.ledger_of(session, rt.clock, day, town=town, village=village)


FINANCE_DESK = ("finance", "auditor", "admin")


@router.get("/days", response_model=Days,
            responses=errors(*LOGGED_IN, "validation_error", "forbidden"))
def days(session: SessionDep, rt: RuntimeDep, principal: CurrentPrincipal,
         first: Annotated[date, Query(alias="from")],
         last: Annotated[date, Query(alias="to")]) -> Days:
    """Each business day from `from` to `to` (at most 92): closed or open, who closed it and
    when, and its daily ledger totals."""
    if principal.role not in FINANCE_DESK:
        raise Forbidden("the list of days is for finance, auditors and admins")
    return Days(days=closing.list_days(session, rt.clock, first, last))


@router.post("/days/{day}/close", response_model=Day,
             responses=errors(*LOGGED_IN, *JSON_BODY, "forbidden", "day_not_over",
                              "day_closed", "open_discrepancies"))
def close(session: SessionDep, rt: RuntimeDep, principal: CurrentPrincipal, day: date,
          body: CloseDayIn | None = None) -> Day:
    """Close a business day (finance): nothing more is posted into it; later money for it goes
    into the next open day, listed there under `corrections`."""
    if principal.role != "finance" or not principal.sub.startswith("staff:"):
        raise Forbidden("only finance closes a day")
    closed = closing.close_day(session, rt.clock, day, int(principal.sub.removeprefix("staff:")),
                               body.note if body else "")
    user = session.get(StaffUser, closed.closed_by)
    return Day(date=day, closed=True, closed_at=closed.closed_at,
               closed_by=user.username if user else None, note=closed.note,
               totals=DailyTotals.model_validate(closed.totals["totals"]))
