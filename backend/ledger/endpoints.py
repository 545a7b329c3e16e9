from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import LOGGED_IN, Forbidden, errors
from backend.ledger.models import COLLECTED, DUPLICATE, REFUNDED, REMITTED
from backend.ledger.repository import daily_measures
from backend.ledger.schemas import DailyLedger, DailyRow, DailyTotals
from backend.security.tokens import Principal

router = APIRouter(prefix="/api/v1/ledger", tags=["ledger"])
CODE = r"^[0-9A-Za-z_-]{1,32}$"


def _scope(principal: Principal, town: str | None, village: str | None) -> tuple[
        str | None, str | None]:
    """Staff see their own scope only: an agent their village, town staff their town."""
    match principal.role:
        case "finance" | "auditor" | "admin":
            return town, village
        case "town_staff":
            if town and town != principal.town_code:
                raise Forbidden("town staff see their own town only")
            return principal.town_code, village
        case "agent":
            if village and village != principal.village_code:
                raise Forbidden("an agent sees their own village only")
            return None, principal.village_code
    raise Forbidden("the daily ledger is for agents, town staff, finance and auditors")


@router.get("/daily", response_model=DailyLedger,
            responses=errors(*LOGGED_IN, "validation_error", "forbidden"))
def daily(session: SessionDep, rt: RuntimeDep, principal: CurrentPrincipal,
          day: Annotated[date, Query(alias="date")],
          town: Annotated[str | None, Query(pattern=CODE)] = None,
          village: Annotated[str | None, Query(pattern=CODE)] = None) -> DailyLedger:
    town, village = _scope(principal, town, village)
    rows: dict[tuple[str | None, str | None, str], DailyRow] = {}
    for t, v, channel, measure, n, fen in daily_measures(session, day, town, village):
        row = rows.setdefault((t, v, channel), DailyRow(
            town_code=t, village_code=v, channel=channel, count=0, amount_fen=0,
            refunded_fen=0, remitted_fen=0))
        if measure == COLLECTED:      # items paid: one posting each
            row.count += n
            row.amount_fen += fen
        elif measure == DUPLICATE:    # received, to be refunded: money, not an item paid
            row.amount_fen += fen
        elif measure == REFUNDED:
            row.refunded_fen += -fen
        elif measure == REMITTED:
            row.remitted_fen += -fen
    # Cash is due at the town account by the end of the next day (日报解).
    overdue_after = day + timedelta(days=1)
    today = rt.clock.today()
    for row in rows.values():
        if row.channel == "cash":
            row.outstanding_fen = row.amount_fen - row.refunded_fen - row.remitted_fen
            row.overdue = row.outstanding_fen > 0 and today > overdue_after
    ordered = sorted(rows.values(), key=lambda r: (r.town_code or "", r.village_code or "",
                                                   r.channel))
    return DailyLedger(date=day, rows=ordered, totals=DailyTotals(
        count=sum(r.count for r in ordered), amount_fen=sum(r.amount_fen for r in ordered),
        refunded_fen=sum(r.refunded_fen for r in ordered),
        remitted_fen=sum(r.remitted_fen for r in ordered),
        outstanding_fen=sum(r.outstanding_fen for r in ordered)))
