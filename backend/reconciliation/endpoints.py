"""Reconciliation routes: finance loads statements and resolves discrepancies (two people);
auditors and admins read."""

from __future__ import annotations

from datetime import date
from datetime import date as date_type
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import JSON_BODY, LOGGED_IN, MAX_ID, Forbidden, errors
from backend.reconciliation import service
from backend.reconciliation.schemas import (
    DiscrepancyList,
    DiscrepancyOut,
    Kind,
    ResolveIn,
    RunOut,
    RunSummary,
    Status,
)
from backend.security.tokens import Principal

router = APIRouter(prefix="/api/v1/reconciliation", tags=["reconciliation"])
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
Channel = Literal["wechat", "alipay", "unionpay", "pos"]
READERS = ("finance", "auditor", "admin")


def _finance(principal: Principal) -> int:
    """Loading statements and resolving differences is finance's, by a named staff user."""
    if principal.role != "finance" or not principal.sub.startswith("staff:"):
        raise Forbidden("reconciliation is done by finance staff")
    return int(principal.sub.removeprefix("staff:"))


def _reader(principal: Principal) -> None:
    if principal.role not in READERS:
        raise Forbidden("reconciliation is read by finance, auditors and admins")


@router.post("/{channel}/statements", response_model=RunOut, status_code=201,
             responses={200: {"model": RunOut, "description": "this very file was loaded "
                                                               "before: its run"},
                        **errors(*LOGGED_IN, "forbidden", "validation_error",
                                 "payload_too_large", "invalid_statement",
                                 "statement_already_loaded")})
def upload_statement(rt: RuntimeDep, principal: CurrentPrincipal, response: Response,
                     channel: Channel, file: Annotated[UploadFile, File()],
                     day: Annotated[date, Form(alias="date")]) -> RunOut:
    """Load a channel's statement of a business day (as the channel delivers it) and
    reconcile it. 201 with the new run; 200 with the run of this very file if it was loaded
    before."""
    user_id = _finance(principal)
    done = service.reconcile_statement(rt, channel=channel, day=day, fileobj=file.file,
                                       filename=file.filename or "statement", source="upload",
                                       user_id=user_id)
    if not done.created:
        response.status_code = 200
    return done.run


class FetchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    date: date_type = Field(description="the business day whose statement to fetch")


@router.post("/{channel}/fetch", response_model=RunOut, status_code=201,
             responses={200: {"model": RunOut, "description": "the channel delivered the same "
                                                               "file as before: its run"},
                        **errors(*LOGGED_IN, *JSON_BODY, "forbidden", "invalid_statement",
                                 "statement_already_loaded", "statement_not_ready",
                                 "channel_error")})
def fetch_statement(rt: RuntimeDep, principal: CurrentPrincipal, response: Response,
                    channel: Literal["wechat", "alipay"], body: FetchIn) -> RunOut:
    """Fetch the day's statement through the channel's own API (WeChat Pay's trade bill,
    Alipay's bill download) and reconcile it, as an upload would. ChinaUMS and POS
    statements are uploaded."""
    user_id = _finance(principal)
    done = service.fetch_and_reconcile(rt, channel=channel, day=body.date, user_id=user_id)
    if not done.created:
        response.status_code = 200
    return done.run


@router.get("/runs", response_model=list[RunSummary],
            responses=errors(*LOGGED_IN, "forbidden", "validation_error"))
def runs(session: SessionDep, principal: CurrentPrincipal,
         day: Annotated[date | None, Query(alias="date")] = None,
         channel: Channel | None = None) -> list[RunSummary]:
    _reader(principal)
    return [RunSummary(run_id=r.id, date=r.business_date, channel=r.channel,  # type: ignore[arg-type]
                       matched=r.matched, discrepancy_count=r.discrepancies, held=r.held,
                       created_at=r.created_at)
            for r in service.list_runs(session, day=day, channel=channel)]


@router.get("/runs/{run_id}", response_model=RunOut,
            responses=errors(*LOGGED_IN, "forbidden", "validation_error", "not_found"))
def run(session: SessionDep, principal: CurrentPrincipal,
        run_id: RowId) -> RunOut:
    _reader(principal)
    return service.run_view(session, run_id)


@router.get("/discrepancies", response_model=DiscrepancyList,
            responses=errors(*LOGGED_IN, "forbidden", "validation_error"))
def discrepancies(session: SessionDep, principal: CurrentPrincipal,
                  status: Status | None = None, kind: Kind | None = None,
                  run_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
                  day: Annotated[date | None, Query(alias="date")] = None,
                  channel: Channel | None = None,
                  after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100) -> DiscrepancyList:
    _reader(principal)
    items = service.list_discrepancies(session, status=status, run_id=run_id, kind=kind,
                                       day=day, channel=channel, after_id=after_id,
                                       limit=limit)
    return DiscrepancyList(items=[service.discrepancy_view(d) for d in items],
                           next_after_id=items[-1].id if len(items) == limit else None)


@router.post("/discrepancies/{discrepancy_id}/resolve", response_model=DiscrepancyOut,
             responses=errors(*LOGGED_IN, "forbidden", "validation_error",
                              "payload_too_large", "not_found", "discrepancy_not_open"))
def resolve(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
            discrepancy_id: RowId, body: ResolveIn) -> DiscrepancyOut:
    """Propose which side is right, with the reason; another finance user approves it."""
    return service.resolve_discrepancy(rt, session, discrepancy_id,
                                       user_id=_finance(principal), side=body.side,
                                       reason=body.reason)


@router.post("/discrepancies/{discrepancy_id}/approve", response_model=DiscrepancyOut,
             responses=errors(*LOGGED_IN, "forbidden", "same_approver", "validation_error",
                              "not_found", "discrepancy_not_proposed", "cannot_recover"))
def approve(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
            discrepancy_id: RowId) -> DiscrepancyOut:
    """Approve another finance user's proposal: the discrepancy is resolved and our books
    corrected where the channel's side was taken."""
    return service.approve_discrepancy(rt, session, discrepancy_id,
                                       user_id=_finance(principal))
