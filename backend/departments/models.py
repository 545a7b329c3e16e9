"""Department lists (代缴名单) and the bills departments pay (代缴通知单).

A department pays a bill, not a live computation. Staff issue a bill per department, town
and year from the department's imported list and the registry: an immutable snapshot of
lines (resident, insurance, amount) with a number and a total. Issuing it claims each line's
item (``bill_lines.claim_bill_id``): from then on the item is the department's to pay, and
neither the resident nor an agent can order it. Bank transfers are recorded against the
bill, partial ones too; the money sits in ``department_receivable:<department>`` until the
bill is covered, and then every line is marked paid at once, through one department
payment, so the partial unique index on applied payment lines guards this path as it guards
the channels'. Later changes are new documents: a supplementary bill (补充清单) for people
added to the list, a credit note (冲减单) for a line found ineligible or a death.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.db import Fen, UTCDateTime, utcnow

BILL_KINDS = ("bill", "supplement")
BILL_STATUSES = ("issued", "partially_paid", "paid")


class DepartmentListing(SQLModel, table=True):
    __tablename__ = "department_listings"
    __table_args__ = (
        UniqueConstraint("department", "resident_id", "insurance", "year",
                         name="uq_department_listing"),
    )
    id: int | None = Field(default=None, primary_key=True)
    department: str = Field(max_length=32)
    resident_id: int = Field(foreign_key="residents.id", index=True)
    insurance: str = Field(max_length=16)
    year: int
    imported_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DepartmentBill(SQLModel, table=True):
    """A bill (or supplementary bill): its lines and ``total_fen`` never change.

    ``received_fen`` (the transfers) and ``credited_fen`` (the credit notes) only grow, and
    only by a guarded UPDATE: what is outstanding, ``total − credited − received``, is never
    negative by a transfer.
    """

    __tablename__ = "department_bills"
    id: int | None = Field(default=None, primary_key=True)
    bill_no: str = Field(sa_column=Column(String(32), unique=True, nullable=False))
    department: str = Field(max_length=32)
    town_code: str = Field(foreign_key="towns.code", max_length=32, index=True)
    year: int
    kind: str = Field(max_length=16)                # bill | supplement
    total_fen: int = Field(sa_type=Fen)
    lines: int
    received_fen: int = Field(default=0, sa_type=Fen)
    credited_fen: int = Field(default=0, sa_type=Fen)
    status: str = Field(default="issued", max_length=16)   # BILL_STATUSES
    # the department's list came in after the plan's due date: accepted, with a warning
    late_list: bool = False
    issued_by: str = Field(max_length=96)
    issued_at: datetime = Field(sa_type=UTCDateTime)      # the business clock
    issued_on: date                                        # its business date
    # the department payment that marked the lines paid once the bill was covered
    payment_id: int | None = Field(default=None, foreign_key="payments.id")
    paid_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DepartmentBillLine(SQLModel, table=True):
    __tablename__ = "department_bill_lines"
    __table_args__ = (UniqueConstraint("bill_id", "bill_line_id", name="uq_department_bill_line"),)
    id: int | None = Field(default=None, primary_key=True)
    bill_id: int = Field(foreign_key="department_bills.id", index=True)
    bill_line_id: int = Field(foreign_key="bill_lines.id", index=True)
    resident_id: int = Field(foreign_key="residents.id")
    insurance: str = Field(max_length=16)
    tier_yuan: int | None = None
    amount_fen: int = Field(sa_type=Fen)
    village_code: str = Field(max_length=32)


class DepartmentTransfer(SQLModel, table=True):
    """A bank transfer from the department against a bill; its reference is used once."""

    __tablename__ = "department_transfers"
    id: int | None = Field(default=None, primary_key=True)
    bill_id: int = Field(foreign_key="department_bills.id", index=True)
    amount_fen: int = Field(sa_type=Fen)
    bank_reference: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    value_date: date
    recorded_by: str = Field(max_length=96)
    recorded_at: datetime = Field(sa_type=UTCDateTime)   # the business clock
    entry_id: int = Field(foreign_key="journal_entries.id")


class DepartmentCreditNote(SQLModel, table=True):
    """A credit note (冲减单) against a bill: lines the department no longer owes."""

    __tablename__ = "department_credit_notes"
    id: int | None = Field(default=None, primary_key=True)
    credit_no: str = Field(sa_column=Column(String(32), unique=True, nullable=False))
    bill_id: int = Field(foreign_key="department_bills.id", index=True)
    amount_fen: int = Field(sa_type=Fen)
    reason: str = Field(max_length=200)          # deceased | not_eligible | what staff wrote
    issued_by: str = Field(max_length=96)
    issued_at: datetime = Field(sa_type=UTCDateTime)
    # the ledger entry that gave back money the bill had received or paid (or None)
    entry_id: int | None = Field(default=None, foreign_key="journal_entries.id")


class DepartmentCreditLine(SQLModel, table=True):
    """A bill line a credit note takes back: each at most once."""

    __tablename__ = "department_credit_lines"
    __table_args__ = (UniqueConstraint("department_bill_line_id",
                                       name="uq_department_credit_line"),)
    id: int | None = Field(default=None, primary_key=True)
    credit_note_id: int = Field(foreign_key="department_credit_notes.id", index=True)
    department_bill_line_id: int = Field(foreign_key="department_bill_lines.id")
    amount_fen: int = Field(sa_type=Fen)
    # the line was paid already (the bill covered): its money is owed back to the department
    refund_fen: int = Field(default=0, sa_type=Fen)
