"""Refunds (退费): finance requests, another finance user approves or rejects; the village
agent confirms a cash refund paid back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep, require_roles
from backend.errors import JSON_BODY, LOGGED_IN, MAX_ID, errors
from backend.orders.endpoints import IdempotencyKeyHeader, idempotent_json
from backend.refunds import service
from backend.refunds.schemas import (
    CashRefundPaid,
    RefundCreate,
    RefundList,
    RefundOut,
    RefundReject,
    RefundStatus,
)

router = APIRouter(tags=["refunds"])
FinanceOnly = require_roles("finance")
STAFF = (*LOGGED_IN, "forbidden")
RefundId = Annotated[int, Path(ge=1, le=MAX_ID)]
CODE = r"^[0-9A-Za-z_-]{1,32}$"


@router.post("/api/v1/refunds", status_code=201, response_model=RefundOut,
             dependencies=[FinanceOnly], responses=errors(
                 *STAFF, *JSON_BODY, "not_found", "order_not_refundable",
                 "refund_exceeds_refundable", "idempotency_conflict"))
def request_refund(body: RefundCreate, request: Request, rt: RuntimeDep,
                   principal: CurrentPrincipal,
                   idempotency_key: IdempotencyKeyHeader = None) -> JSONResponse:
    """Ask for a refund of an order: everything still refundable, or the items named. It
    waits for the approval of another finance user."""
    return idempotent_json(rt, principal, idempotency_key, request, body, lambda: (
        service.request_refund(rt, principal, body.order_no, body.items, body.reason)))


@router.get("/api/v1/refunds", response_model=RefundList,
            responses=errors(*STAFF, "validation_error"))
def list_refunds(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
                 status: RefundStatus | None = None,
                 town: Annotated[str | None, Query(pattern=CODE)] = None,
                 limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
                 before_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
                 ) -> RefundList:
    """Newest first; ``before_id`` (the last refund_id of a page) gives the next page."""
    return RefundList(refunds=service.list_refunds(rt, session, principal, status=status,
                                                   town=town, limit=limit,
                                                   before_id=before_id))


@router.get("/api/v1/refunds/{refund_id}", response_model=RefundOut,
            responses=errors(*STAFF, "validation_error", "not_found"))
def get_refund(refund_id: RefundId, rt: RuntimeDep, session: SessionDep,
               principal: CurrentPrincipal) -> RefundOut:
    return service.get_refund(rt, session, principal, refund_id)


@router.post("/api/v1/refunds/{refund_id}/approve", response_model=RefundOut,
             dependencies=[FinanceOnly], responses=errors(
                 *STAFF, "validation_error", "not_found", "same_approver",
                 "refund_not_pending"))
def approve_refund(refund_id: RefundId, rt: RuntimeDep,
                   principal: CurrentPrincipal) -> RefundOut:
    """By a finance user other than the one who asked for it."""
    return service.approve_refund(rt, principal, refund_id)


@router.post("/api/v1/refunds/{refund_id}/reject", response_model=RefundOut,
             dependencies=[FinanceOnly], responses=errors(
                 *STAFF, *JSON_BODY, "not_found", "same_approver", "refund_not_pending"))
def reject_refund(refund_id: RefundId, body: RefundReject, rt: RuntimeDep,
                  principal: CurrentPrincipal) -> RefundOut:
    """By a finance user other than the one who asked for it, with a reason."""
    return service.reject_refund(rt, principal, refund_id, body.reason)


@router.post("/api/v1/agent/refunds/{refund_id}/paid", response_model=RefundOut,
             dependencies=[require_roles("agent")], tags=["agents"], responses=errors(
                 *STAFF, *JSON_BODY, "not_found", "refund_not_pending", "receipt_no_taken",
                 "idempotency_conflict"))
def cash_refund_paid(refund_id: RefundId, body: CashRefundPaid, request: Request,
                     rt: RuntimeDep, principal: CurrentPrincipal,
                     idempotency_key: IdempotencyKeyHeader = None) -> JSONResponse:
    """The agent paid an approved cash refund back to the payer, against a receipt."""
    return idempotent_json(rt, principal, idempotency_key, request, body, lambda: (
        service.confirm_cash_refund(rt, principal, refund_id, body.receipt_no)), status=200)
