"""Department bills (代缴通知单): issue, read, record transfers, credit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from backend.departments import service
from backend.departments.schemas import (
    CODE,
    BillCreate,
    BillList,
    BillOut,
    CreditNoteCreate,
    Department,
    TransferCreate,
)
from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import JSON_BODY, LOGGED_IN, errors
from backend.orders.endpoints import IdempotencyKeyHeader, idempotent_json

router = APIRouter(prefix="/api/v1/departments", tags=["departments"])
STAFF = (*LOGGED_IN, "forbidden")
BillNo = Annotated[str, Path(pattern=r"^[0-9A-Za-z]{1,32}$")]


@router.post("/{department}/bills", status_code=201, response_model=BillOut,
             responses=errors(*STAFF, *JSON_BODY, "not_found", "nothing_to_bill"))
def issue_bill(department: Department, body: BillCreate, rt: RuntimeDep,
               principal: CurrentPrincipal) -> BillOut:
    """Issue the department's bill for a town and year from its imported list and the
    registry: an immutable snapshot of lines that claims each item for the department.

    The first bill of a department, town and year is `kind: bill`; issuing again with new
    people on the list gives a supplementary bill (`supplement`) of only those; with nobody
    new, 409 `nothing_to_bill`. People left out are listed in `excluded` with a reason:
    `already_paid` (the resident paid it), `in_pending_order`, `claimed_by_other_department`
    (the plan's order: 扶贫办 > 民政 > 残联 > 卫健 > 财政), `deceased`, `not_eligible`.
    A list imported after the plan's due date is accepted, with a warning.

    Town staff for their town, finance for any; others 403.
    """
    return service.issue_bill(rt, principal, department, body.year, body.town_code)


@router.get("/bills", response_model=BillList,
            responses=errors(*STAFF, "validation_error"))
def list_bills(session: SessionDep, principal: CurrentPrincipal,
               year: Annotated[int | None, Query(ge=2000, le=2100)] = None,
               department: Department | None = None,
               town: Annotated[str | None, Query(pattern=CODE)] = None) -> BillList:
    """The bills (and supplements) the caller may read, newest first, without their lines:
    what is received and outstanding of each. Town staff see their town's, a department
    user its own department's; finance, auditors and admins all."""
    return BillList(bills=service.list_bills(session, principal, year=year,
                                             department=department, town=town))


@router.get("/bills/{bill_no}", response_model=BillOut,
            responses=errors(*STAFF, "validation_error", "not_found"))
def get_bill(bill_no: BillNo, rt: RuntimeDep, session: SessionDep,
             principal: CurrentPrincipal) -> BillOut:
    """The bill with what is received and outstanding, its transfers and credit notes.
    Finance, auditors and admins any; town staff their town's; a department user its own."""
    return service.get_bill(rt, session, principal, bill_no)


@router.post("/bills/{bill_no}/transfers", status_code=201, response_model=BillOut,
             responses=errors(*STAFF, *JSON_BODY, "not_found", "transfer_exceeds_outstanding",
                              "duplicate_bank_reference", "idempotency_conflict"))
def record_transfer(bill_no: BillNo, body: TransferCreate, request: Request, rt: RuntimeDep,
                    principal: CurrentPrincipal,
                    idempotency_key: IdempotencyKeyHeader = None) -> JSONResponse:
    """Record a bank transfer against the bill; partial transfers are fine. The money is
    held as the department's receivable until the transfers cover the bill: then every
    line is marked paid at once. More than what is outstanding: 409
    `transfer_exceeds_outstanding`; a bank reference used before: 409
    `duplicate_bank_reference`. Town staff of the bill's town, and finance."""
    return idempotent_json(rt, principal, idempotency_key, request, body, lambda: (
        service.record_transfer(rt, principal, bill_no, body.amount_fen, body.bank_reference,
                                body.value_date)))


@router.post("/bills/{bill_no}/credit-notes", status_code=201, response_model=BillOut,
             responses=errors(*STAFF, *JSON_BODY, "not_found", "line_already_credited"))
def credit_note(bill_no: BillNo, body: CreditNoteCreate, rt: RuntimeDep,
                principal: CurrentPrincipal) -> BillOut:
    """Take lines off the bill (a person found not eligible): a credit note (冲减单). A line
    not paid yet is released; one the bill had paid is owed back to the department. Deaths
    get credit notes by themselves when a death list is imported."""
    return service.issue_credit_note(rt, principal, bill_no,
                                     [(i.resident_ref, i.insurance) for i in body.items],
                                     body.reason)
