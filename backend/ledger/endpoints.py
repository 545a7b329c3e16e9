from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import LOGGED_IN, errors
from backend.ledger.daily import daily_ledger, ledger_scope
from backend.ledger.schemas import DailyLedger

router = APIRouter(prefix="/api/v1/ledger", tags=["ledger"])
CODE = r"^[0-9A-Za-z_-]{1,32}$"


@router.get("/daily", response_model=DailyLedger,
            responses=errors(*LOGGED_IN, "validation_error", "forbidden"))
def daily(session: SessionDep, rt: RuntimeDep, principal: CurrentPrincipal,
          day: Annotated[date, Query(alias="date")],
          town: Annotated[str | None, Query(pattern=CODE)] = None,
          village: Annotated[str | None, Query(pattern=CODE)] = None) -> DailyLedger:
    town, village = ledger_scope(principal, town, village)
    return daily_ledger(session, day, today=rt.clock.today(), town=town, village=village)
