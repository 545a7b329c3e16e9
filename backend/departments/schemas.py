"""Department bills (代缴通知单) as the API shows them: masked, never a full ID number."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

Department = Literal["civil_affairs", "disabled_federation", "health", "poverty_office",
                     "finance"]
Insurance = Literal["pension", "medical"]
ExcludedReason = Literal["already_paid", "in_pending_order", "claimed_by_other_department",
                         "deceased", "not_eligible", "not_registered"]
CODE = r"^[0-9A-Za-z_-]{1,32}$"


class BillCreate(BaseModel):
    year: int = Field(ge=2000, le=2100)
    town_code: str = Field(pattern=CODE)


class TransferCreate(BaseModel):
    amount_fen: int = Field(gt=0, le=10**15, description="Integer fen; more than the bill "
                                                         "still owes is refused.")
    bank_reference: str = Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_./-]+$",
                                description="The bank's reference of the transfer: once.")
    value_date: date = Field(description="The day the money arrived (起息日), not after "
                                          "today.")


class CreditItem(BaseModel):
    resident_ref: str = Field(min_length=1, max_length=200)
    insurance: Insurance


class CreditNoteCreate(BaseModel):
    items: list[CreditItem] = Field(min_length=1, max_length=10000)
    reason: str = Field(min_length=1, max_length=200,
                        description="Why the department no longer owes these lines, e.g. "
                                    "`not_eligible: employee medical since 2020-09`.")


class BillLineOut(BaseModel):
    resident_ref: str
    id_number_masked: str
    name: str = Field(description="Masked (张*).")
    village_code: str
    insurance: Insurance
    tier_yuan: int | None = Field(description="Pension: the tier the department pays.")
    amount_fen: int
    credit_note: str | None = Field(description="The credit note that took the line off "
                                                "the bill, or null.")


class ExcludedOut(BaseModel):
    id_number_masked: str
    name: str
    insurance: Insurance
    reason: ExcludedReason


class TransferOut(BaseModel):
    amount_fen: int
    bank_reference: str
    value_date: date
    recorded_at: datetime


class CreditNoteOut(BaseModel):
    credit_no: str
    amount_fen: int
    reason: str
    issued_at: datetime
    refund_fen: int = Field(description="Of it, what the bill had paid already: owed back "
                                        "to the department.")


class BillFigures(BaseModel):
    """What a bill is and where it stands: the list and the whole bill both show it."""

    bill_no: str
    department: Department
    town_code: str
    year: int
    kind: Literal["bill", "supplement"]
    status: Literal["issued", "partially_paid", "paid"]
    total_fen: int = Field(description="As issued: never changes.")
    credited_fen: int
    received_fen: int
    outstanding_fen: int = Field(description="total − credited − received, at least 0.")
    overpaid_fen: int = Field(description="Received beyond what the bill, after its credit "
                                          "notes, owes: to return to the department.")
    issued_at: datetime
    paid_at: datetime | None


class BillOut(BillFigures):
    lines: list[BillLineOut]
    transfers: list[TransferOut]
    credit_notes: list[CreditNoteOut]
    warnings: list[str]
    excluded: list[ExcludedOut] = Field(description="On the answer that issues the bill: "
                                                    "listed people left out, and why.")


class BillSummary(BillFigures):
    lines: int = Field(description="How many lines the bill has (credited ones included).")


class BillList(BaseModel):
    bills: list[BillSummary]
