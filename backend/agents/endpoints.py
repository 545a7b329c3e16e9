"""The village agent's screens (村居代办员): dynamic QR codes that refresh."""

from __future__ import annotations

import secrets
from datetime import datetime

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from backend.agents import service as agents
from backend.agents.roster import roster as read_roster
from backend.agents.schemas import (
    CollectionIn,
    CollectionOut,
    RemittanceIn,
    RemittanceOut,
    RosterOut,
)
from backend.db import unit_of_work, utcnow
from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep, require_roles
from backend.errors import JSON_BODY, LOGGED_IN, Conflict, NotFound, errors
from backend.orders import repository as repo
from backend.orders import service as orders
from backend.orders.endpoints import (
    CHANNEL_CALL_ERRORS,
    ORDER_CREATE_ERRORS,
    IdempotencyKeyHeader,
    idempotent_json,
)
from backend.orders.models import Order
from backend.orders.schemas import AgentQrCreate, OrderCreate, OrderOut
from backend.receipts import service as receipts
from backend.security.tokens import Principal

router = APIRouter(prefix="/api/v1/agent", tags=["agents"])
AgentOnly = require_roles("agent")
AGENT = (*LOGGED_IN, "forbidden")
COLLECTION_ERRORS = ("receipt_no_taken", "not_eligible", "window_closed", "item_already_paid",
                     "item_in_pending_order", "idempotency_conflict")


class QrStatus(BaseModel):
    order_no: str
    status: str
    amount_fen: int
    expires_at: datetime
    expired: bool
    paid_at: datetime | None
    qr_content: str | None
    qr_image_url: str | None
    receipt_no: str | None = Field(description=(
        "Once paid: the service's receipt (缴费凭证) of the payment; null before."))
    receipt_url: str | None = Field(description=(
        "Once paid: the receipt's public check page (/r/<token>, masked, no login): what "
        "the agent shows or sends the resident who paid by scanning."))


def _own(session, principal: Principal, order_no: str) -> Order:  # type: ignore[no-untyped-def]
    order = repo.order_by_no(session, order_no)
    if order is None or order.payer_sub != principal.sub:
        raise NotFound(f"no QR code order {order_no} of this agent")
    return order


@router.post("/qr-codes", status_code=201, response_model=OrderOut, dependencies=[AgentOnly],
             responses=errors(*AGENT, *JSON_BODY, *ORDER_CREATE_ERRORS))
def create_qr(body: AgentQrCreate, request: Request, rt: RuntimeDep,
              principal: CurrentPrincipal,
              idempotency_key: IdempotencyKeyHeader = None) -> JSONResponse:
    order_body = OrderCreate(year=body.year, channel=body.channel, items=body.items)
    if body.channel == "wechat_jsapi":
        raise Conflict("an agent's QR code is a QR channel or aggregate_qr",
                       code="validation_error", status=422)
    return idempotent_json(rt, principal, idempotency_key, request, body, lambda: (
        orders.create_order(rt, principal, order_body, ttl=orders.AGENT_QR_TTL,
                            village_code=principal.village_code)))


@router.get("/qr-codes/{order_no}", response_model=QrStatus, dependencies=[AgentOnly],
            responses=errors(*AGENT, "not_found"))
def qr_status(order_no: str, rt: RuntimeDep, principal: CurrentPrincipal) -> QrStatus:
    """Polled by the agent's screen: paid yet? expired?"""
    with unit_of_work(rt.sessions) as s:
        order = _own(s, principal, order_no)
        content = orders.qr_content_of(rt, order, repo.attempts_of(s, order.id))  # type: ignore[arg-type]
        receipt = None
        if order.status in orders.PAID_STATES:     # issued now if the worker has not yet
            receipt = receipts.order_receipt(rt, s, order.id,  # type: ignore[arg-type]
                                             order.channel_transaction_id)
        return QrStatus(order_no=order.order_no, status=order.status,
                        amount_fen=order.amount_fen, expires_at=order.expires_at,
                        expired=(order.status == "pending"
                                 and order.expires_at <= rt.clock.now()),
                        paid_at=order.paid_at, qr_content=content,
                        qr_image_url=orders.qr_image_url(rt, order),
                        receipt_no=receipt.receipt_no if receipt else None,
                        receipt_url=(receipts.verify_url(rt.settings.public_base_url,
                                                         receipts.token_of(receipt))
                                     if receipt else None))


@router.post("/qr-codes/{order_no}/refresh", response_model=QrStatus, dependencies=[AgentOnly],
             responses=errors(*AGENT, "not_found", "order_not_payable", *CHANNEL_CALL_ERRORS))
def refresh_qr(order_no: str, rt: RuntimeDep, principal: CurrentPrincipal) -> QrStatus:
    """A new short-lived code for the same order; the old image and link stop working."""
    with unit_of_work(rt.sessions) as s:
        order = _own(s, principal, order_no)
        if order.status != "pending":
            raise Conflict(f"order {order_no} is {order.status}", code="order_not_payable")
        order.qr_token = secrets.token_urlsafe(24)
        order.expires_at = rt.clock.now() + orders.AGENT_QR_TTL
        order.updated_at = utcnow()
        attempt = None
        target = orders.API_CHANNELS[order.channel]
        if target is not None:
            attempt = orders._new_attempt(rt, s, order, target[0], target[1])
        description = orders._description(s, order)
    if attempt is not None:
        orders._open_at_channel(rt, order, attempt, description, None)
    return qr_status(order_no, rt, principal)


@router.post("/collections", status_code=201, response_model=CollectionOut,
             dependencies=[AgentOnly], responses=errors(*AGENT, *JSON_BODY, *COLLECTION_ERRORS))
def record_collection(body: CollectionIn, request: Request, rt: RuntimeDep,
                      principal: CurrentPrincipal,
                      idempotency_key: IdempotencyKeyHeader = None) -> JSONResponse:
    """Cash or POS taken in person; the phone may retry the same receipt for hours."""
    return idempotent_json(rt, principal, idempotency_key, request, body,
                           lambda: agents.record_collection(rt, principal, body))


@router.post("/remittances", status_code=201, response_model=RemittanceOut,
             dependencies=[AgentOnly], responses=errors(
                 *AGENT, *JSON_BODY, "remittance_exceeds_cash", "bank_receipt_taken",
                 "idempotency_conflict"))
def record_remittance(body: RemittanceIn, request: Request, rt: RuntimeDep,
                      principal: CurrentPrincipal,
                      idempotency_key: IdempotencyKeyHeader = None) -> JSONResponse:
    """The day's cash handed to the town account, with the bank's receipt number."""
    return idempotent_json(rt, principal, idempotency_key, request, body,
                           lambda: agents.record_remittance(rt, principal, body))


@router.get("/roster", response_model=RosterOut,
            responses=errors(*AGENT, "validation_error"))
def roster(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
           year: int = Query(ge=2000, le=2100),
           status: str | None = Query(default=None, description=(
               "only items in this state: unpaid, pending, paid, government_paid, "
               "not_eligible"))) -> RosterOut:
    """The agent's own village (清册): each resident, masked, with what each item owes and
    who paid it."""
    return read_roster(rt, session, principal, year, status)
