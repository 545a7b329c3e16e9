"""The double-entry ledger (复式记账): accounts, journal entries and their postings.

Append-only: the database refuses updates and deletes of entries and postings; a correction
is a new entry with a reason. A posting's amount is signed (debit > 0, credit < 0) and every
entry's postings sum to zero. Each posting carries the dimensions the daily remittance
ledger (日报解台账) groups by — business date, town, village, channel — and, for the postings
that view sums, a ``measure``; the view is a query over postings, not a second truth.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, Index, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime, utcnow

# account kinds
CHANNEL_CLEARING = "channel_clearing"      # money a channel owes us until it settles
AGENT_CASH = "agent_cash"                  # cash in an agent's hands (代办员手中现金)
TOWN_COLLECTION = "town_collection"        # the town's designated collection account
DEPARTMENT_RECEIVABLE = "department_receivable"
REFUNDS_PAYABLE = "refunds_payable"        # money received that we owe back
CONTRIBUTIONS = "contributions"            # per insurance and year: what the fund is owed

# What the daily ledger sums. Money received for an item someone else had paid already is
# ``duplicate``: in the day's amount (it was received, and will be refunded) but not in its
# count of items paid.
COLLECTED, DUPLICATE, REFUNDED, REMITTED = "collected", "duplicate", "refunded", "remitted"


class LedgerAccount(SQLModel, table=True):
    __tablename__ = "ledger_accounts"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(sa_column=Column(String(96), unique=True, nullable=False))
    kind: str = Field(max_length=32)
    name: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class JournalEntry(SQLModel, table=True):
    __tablename__ = "journal_entries"
    id: int | None = Field(default=None, primary_key=True)
    # channel_payment | cash_collection | pos_collection | remittance | refund | correction
    kind: str = Field(max_length=32)
    reason: str = Field(max_length=200)
    business_date: date = Field(index=True)
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    payment_id: int | None = Field(default=None, foreign_key="payments.id", index=True)
    refund_id: int | None = Field(default=None, foreign_key="refunds.id")
    remittance_id: int | None = Field(default=None, foreign_key="remittances.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Posting(SQLModel, table=True):
    __tablename__ = "postings"
    __table_args__ = (
        Index("ix_postings_daily", "business_date", "measure", "village_code"),
    )
    id: int | None = Field(default=None, primary_key=True)
    entry_id: int = Field(foreign_key="journal_entries.id", index=True)
    account_id: int = Field(foreign_key="ledger_accounts.id", index=True)
    amount_fen: int                    # debit > 0, credit < 0
    business_date: date
    town_code: str | None = Field(default=None, max_length=32)
    village_code: str | None = Field(default=None, max_length=32)
    channel: str | None = Field(default=None, max_length=16)   # wechat … cash, pos, department
    measure: str | None = Field(default=None, max_length=16)   # collected | refunded | remitted


class Remittance(SQLModel, table=True):
    """An agent's hand-over of cash to the town account (日报解)."""

    __tablename__ = "remittances"
    __table_args__ = (UniqueConstraint("agent_id", "bank_receipt_no",
                                       name="uq_remittance_bank_receipt"),)
    id: int | None = Field(default=None, primary_key=True)
    agent_id: int = Field(foreign_key="staff_users.id", index=True)
    village_code: str = Field(max_length=32)
    business_date: date
    amount_fen: int
    bank_receipt_no: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
