"""The double-entry ledger (复式记账): accounts, journal entries and their postings.

Append-only: the database refuses updates and deletes of entries and postings; a correction
is a new entry with a reason. A posting's amount is signed (debit > 0, credit < 0) and every
entry's postings sum to zero. Each posting carries the dimensions the daily remittance
ledger (日报解台账) groups by — business date, town, village, channel — and, for the postings
that view sums, a ``measure``; the view is a query over postings, not a second truth.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from backend.db import Fen, UTCDateTime, utcnow

# account kinds
CHANNEL_CLEARING = "channel_clearing"      # money a channel owes us until it settles
AGENT_CASH = "agent_cash"                  # cash in an agent's hands (代办员手中现金)
TOWN_COLLECTION = "town_collection"        # the town's designated collection account
DEPARTMENT_RECEIVABLE = "department_receivable"
REFUNDS_PAYABLE = "refunds_payable"        # money received that we owe back
CONTRIBUTIONS = "contributions"            # per insurance and year: what the fund is owed
CHANNEL_FEES = "channel_fees"              # what a channel or acquirer kept as its fee

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
    __table_args__ = (
        # The entries a day holds for earlier, closed days (its ``corrections``): few.
        Index("ix_journal_entries_corrections", "business_date",
              postgresql_where=text("for_date IS NOT NULL"),
              sqlite_where=text("for_date IS NOT NULL")),
        # An acquirer's settlement remits a POS collection once, however often it is loaded.
        Index("uq_pos_remittance_payment", "payment_id", unique=True,
              postgresql_where=text("kind = 'pos_remittance'"),
              sqlite_where=text("kind = 'pos_remittance'")),
    )
    id: int | None = Field(default=None, primary_key=True)
    # channel_payment | cash_collection | pos_collection | remittance | pos_remittance |
    # refund | correction
    kind: str = Field(max_length=32)
    reason: str = Field(max_length=200)
    # The day the entry is posted into. When the day it belonged to (``for_date``) was
    # closed already, the first open day after it (``backend/ledger/closing.py``).
    business_date: date = Field(index=True)
    for_date: date | None = Field(default=None)
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
    # No foreign key: it share-locked the account's row, one of a few every payment posts to
    # (migration 0015). An account is never deleted, and the entry's check at commit (a
    # trigger on SQLite) refuses a posting to one that does not exist.
    account_id: int = Field(index=True)
    amount_fen: int = Field(sa_type=Fen)  # debit > 0, credit < 0
    business_date: date
    town_code: str | None = Field(default=None, max_length=32)
    village_code: str | None = Field(default=None, max_length=32)
    channel: str | None = Field(default=None, max_length=16)   # wechat … cash, pos, department
    measure: str | None = Field(default=None, max_length=16)   # collected | refunded | remitted
    # how many items a ``collected`` posting stands for: 1 for a resident's payment, a
    # town's number of lines for a department bill's aggregate posting
    items: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


class EntryCheck(SQLModel, table=True):
    """An entry whose postings the running transaction wrote, to be checked for balance.

    Only PostgreSQL's balance check uses it (migration 0012): a statement inserting postings
    notes each of their entries here once; at commit a deferred trigger sums each noted
    entry's postings once and removes its row. Empty between transactions.
    """

    __tablename__ = "ledger_entry_checks"
    entry_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})


class Remittance(SQLModel, table=True):
    """An agent's hand-over of cash to the town account (日报解)."""

    __tablename__ = "remittances"
    __table_args__ = (UniqueConstraint("agent_id", "bank_receipt_no",
                                       name="uq_remittance_bank_receipt"),)
    id: int | None = Field(default=None, primary_key=True)
    agent_id: int = Field(foreign_key="staff_users.id", index=True)
    village_code: str = Field(max_length=32)
    business_date: date
    amount_fen: int = Field(sa_type=Fen)
    bank_receipt_no: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ClosedDay(SQLModel, table=True):
    """A business day finance has closed (日结): nothing is posted into it any more.

    ``totals`` is the district's daily ledger of that day as it stood at the close (rows,
    totals and corrections), kept to show the day's book never moved afterwards.
    """

    __tablename__ = "closed_days"
    business_date: date = Field(primary_key=True)
    closed_by: int = Field(foreign_key="staff_users.id")
    closed_at: datetime = Field(sa_type=UTCDateTime)
    totals: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    note: str = Field(default="", max_length=500)
