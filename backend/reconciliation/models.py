"""Reconciliation (对账): a channel's daily statement, its lines, the run that matched them
against what we recorded, and the discrepancies (差错) the run found.

A statement is kept as it came (its SHA-256 is of the bytes delivered); its lines are staged
with what each was paired with on our side, so a run can be read back line by line. One run
per channel and business day; a discrepancy is resolved by one finance user choosing a side
with a reason and a second one approving it.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Column, Index, LargeBinary, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.db import Fen, UTCDateTime, utcnow

CHANNELS = ("wechat", "alipay", "unionpay", "pos")
KINDS = ("missing_locally", "missing_at_channel", "amount_mismatch", "status_mismatch",
         "fee_mismatch", "duplicate_payment")
STATUSES = ("open", "held", "proposed", "resolved", "auto_resolved")
SIDES = ("channel", "local")


class Statement(SQLModel, table=True):
    """A channel's settlement statement (对账单) for one business day, kept whole."""

    __tablename__ = "statements"
    __table_args__ = (UniqueConstraint("channel", "sha256", name="uq_statement_file"),)
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    business_date: date
    filename: str = Field(max_length=255)
    size: int                                   # bytes as delivered
    sha256: str = Field(max_length=64)          # of the bytes as delivered
    # The bytes as delivered when they came compressed (gzip, zip); else gzip of them
    # (``content_encoding`` says which), so a 100 MB CSV does not take 100 MB of database.
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    content_encoding: str = Field(max_length=8)     # identity | gzip
    source: str = Field(max_length=8)               # upload | fetch
    uploaded_by: int | None = Field(default=None, foreign_key="staff_users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class StatementLine(SQLModel, table=True):
    """One detail line of a statement, with what it was paired with on our side.

    Written in bulk (COPY on PostgreSQL); ``our_*`` are copies taken at the run, so the
    checks read this table alone. No foreign key to the statement: its check would run once
    per line (a million times for one bill), and lines are only ever written by the run
    that wrote their statement, in its transaction."""

    __tablename__ = "statement_lines"
    statement_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    line_no: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    kind: str = Field(max_length=8)                 # payment | refund
    out_trade_no: str = Field(max_length=64)
    transaction_id: str = Field(max_length=64)
    amount_fen: int = Field(sa_type=Fen)
    fee_fen: int = Field(sa_type=Fen)
    status: str = Field(max_length=32)              # the channel's word
    done: bool                                      # False: a refund still processing/failed
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    out_refund_no: str | None = Field(default=None, max_length=64)
    refund_id: str | None = Field(default=None, max_length=64)
    terminal: str | None = Field(default=None, max_length=64)
    # an earlier line of the same trade (payment) or refund: this one is a duplicate
    duplicate_of: int | None = None
    # what the line was paired with: the attempt and payment (payment lines), our refund
    attempt_id: int | None = None
    payment_id: int | None = None
    our_refund_id: int | None = None
    our_amount_fen: int | None = Field(default=None, sa_type=Fen)
    our_transaction_id: str | None = Field(default=None, max_length=64)
    our_status: str | None = Field(default=None, max_length=16)    # our refund's status


class ReconciliationRun(SQLModel, table=True):
    __tablename__ = "reconciliation_runs"
    __table_args__ = (UniqueConstraint("channel", "business_date", name="uq_run_day"),)
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    business_date: date
    statement_id: int = Field(foreign_key="statements.id",
                              sa_column_kwargs={"unique": True})
    matched: int = 0               # lines paired with ours and found no different
    paired: int = 0                # lines paired with a payment or refund of ours
    discrepancies: int = 0
    held: int = 0                  # ours near midnight, waiting for the next day's statement
    # sums of fen: a day of a million payments is past a 32-bit integer
    statement_payments: int = 0
    statement_payment_fen: int = Field(default=0, sa_type=BigInteger)
    statement_refunds: int = 0
    statement_refund_fen: int = Field(default=0, sa_type=BigInteger)
    # the fees the statement charges (refunds' returned fees netted), and what the channel's
    # rate makes them: Σ round_half_up(payment × rate)
    statement_fee_fen: int = Field(default=0, sa_type=BigInteger)
    expected_fee_fen: int = Field(default=0, sa_type=BigInteger)
    our_payments: int = 0
    our_payment_fen: int = Field(default=0, sa_type=BigInteger)
    our_refunds: int = 0
    our_refund_fen: int = Field(default=0, sa_type=BigInteger)
    created_by: int | None = Field(default=None, foreign_key="staff_users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Discrepancy(SQLModel, table=True):
    """A difference between the statement and our records (对账差错)."""

    __tablename__ = "discrepancies"
    __table_args__ = (
        Index("ix_discrepancies_status", "status", "channel", "business_date"),
    )
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="reconciliation_runs.id", index=True)
    channel: str = Field(max_length=16)
    business_date: date             # the run's day
    kind: str = Field(max_length=24)
    status: str = Field(max_length=16)
    line_no: int | None = None      # the statement line, if the difference is on one
    out_trade_no: str | None = Field(default=None, max_length=64)
    transaction_id: str | None = Field(default=None, max_length=64)
    out_refund_no: str | None = Field(default=None, max_length=64)
    our_amount_fen: int | None = Field(default=None, sa_type=Fen)
    channel_amount_fen: int | None = Field(default=None, sa_type=Fen)
    expected_fee_fen: int | None = Field(default=None, sa_type=Fen)
    channel_fee_fen: int | None = Field(default=None, sa_type=Fen)
    attempt_id: int | None = Field(default=None, foreign_key="attempts.id")
    payment_id: int | None = Field(default=None, foreign_key="payments.id")
    refund_id: int | None = Field(default=None, foreign_key="refunds.id")
    detail: str = Field(sa_column=Column(String(500), nullable=False))
    side: str | None = Field(default=None, max_length=8)        # channel | local
    reason: str | None = Field(default=None, max_length=500)
    proposed_by: int | None = Field(default=None, foreign_key="staff_users.id")
    proposed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    approved_by: int | None = Field(default=None, foreign_key="staff_users.id")
    approved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # the correcting entry, or the entry of the payment recovered through the notification path
    ledger_entry_id: int | None = Field(default=None, foreign_key="journal_entries.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
