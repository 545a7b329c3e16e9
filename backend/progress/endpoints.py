from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import LOGGED_IN, errors
from backend.progress import service
from backend.progress.schemas import Progress
from backend.residents.service import policy_for

router = APIRouter(prefix="/api/v1", tags=["progress"])
CODE = r"^[0-9A-Za-z_-]{1,32}$"


@router.get("/progress", response_model=Progress,
            responses=errors(*LOGGED_IN, "validation_error", "forbidden", "not_found"))
def progress(session: SessionDep, rt: RuntimeDep, principal: CurrentPrincipal,
             year: Annotated[int, Query(ge=1900, le=2999)],
             town: Annotated[str | None, Query(pattern=CODE)] = None) -> Progress:
    """Paid rates (征缴进度) for a coverage year against the policy's targets (任务目标).

    For each measure — `medical` (target: everyone eligible), and pension per age band of the
    policy (`pension_45_59` ≥ 95 %, `pension_16_44` ≥ 60 % in Shanting 2021) — `eligible` counts
    the residents the assessment finds eligible for that insurance in the year (age = year −
    birth year; dead before the year, employee-insured, students for pension: not eligible),
    and `paid` those of them whose item for the year is paid, by anyone (resident, agent,
    department). Rates are integer basis points (`rate_bp`, 1 % = 100, rounded down; null when
    nobody is eligible); `behind` compares exactly. Per town, then per village, villages with
    the largest gap to a target first; `totals` over every town in the answer. Each village
    and town also counts residents' reports of paper receipts (`POST /r/report`):
    `receipt_reports_open` (unknown to the service, or known with another amount, not yet
    matched or closed) and `receipt_reports_total`, whatever the year.

    Scope: finance, auditors and admins see the district, or one `town`; town staff their own
    town (another town: 403). Agents, departments and residents: 403 (agents follow their
    village on the roster). An unknown `town`: 404; a `year` without a policy: 422.
    """
    town = service.scope(principal, town)
    return service.progress(session, policy_for(rt, year), rt.clock.now(), town)
