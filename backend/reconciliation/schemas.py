from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

Kind = Literal["missing_locally", "missing_at_channel", "amount_mismatch", "status_mismatch",
               "fee_mismatch", "duplicate_payment"]
Status = Literal["open", "held", "proposed", "resolved", "auto_resolved"]
Side = Literal["channel", "local"]


class DiscrepancyOut(BaseModel):
    id: int
    run_id: int
    channel: str
    business_date: date
    kind: Kind
    status: Status
    line_no: int | None = Field(description="the statement line, when the difference is on one")
    out_trade_no: str | None
    transaction_id: str | None
    out_refund_no: str | None
    our_amount_fen: int | None
    channel_amount_fen: int | None
    expected_fee_fen: int | None = Field(description="fee_mismatch: amount × the channel's "
                                                     "rate, rounded half-up")
    channel_fee_fen: int | None
    attempt_id: int | None
    payment_id: int | None
    refund_id: int | None
    detail: str
    side: Side | None
    reason: str | None
    proposed_by: int | None
    proposed_at: datetime | None
    approved_by: int | None
    approved_at: datetime | None
    resolved_at: datetime | None
    ledger_entry_id: int | None = Field(description="the correcting entry (or the recovered "
                                                    "payment's), once approved")
    created_at: datetime


class StatementInfo(BaseModel):
    id: int
    filename: str
    size: int
    sha256: str
    source: Literal["upload", "fetch"]
    uploaded_by: int | None
    created_at: datetime


class StatementSide(BaseModel):
    payments: int
    payment_fen: int
    refunds: int
    refund_fen: int
    fee_fen: int = Field(description="the fees the statement charges, returned fees netted")
    expected_fee_fen: int = Field(description="Σ over payment lines of amount × the channel's "
                                              "rate, rounded half-up")


class TotalsOurs(BaseModel):
    payments: int = Field(description="our payments of the day on this channel")
    payment_fen: int
    refunds: int = Field(description="our refunds on this channel done that day")
    refund_fen: int


class RunTotals(BaseModel):
    statement: StatementSide
    ours: TotalsOurs
    paired: int = Field(description="statement lines paired with a payment or refund of ours")
    matched: int = Field(description="paired lines found no different")
    held: int = Field(description="ours near midnight, waiting for the next day's statement")
    discrepancies: int


class RunOut(BaseModel):
    run_id: int
    date: date
    channel: str
    matched: int
    discrepancy_count: int
    discrepancies: list[DiscrepancyOut] = Field(
        description="the run's discrepancies, the first 500; page the rest with GET "
                    "/api/v1/reconciliation/discrepancies?run_id=")
    discrepancies_truncated: bool
    totals: RunTotals
    statement: StatementInfo
    created_at: datetime


class RunSummary(BaseModel):
    run_id: int
    date: date
    channel: str
    matched: int
    discrepancy_count: int
    held: int
    created_at: datetime


class ResolveIn(BaseModel):
    side: Side = Field(description="`channel`: the statement is right, our books are "
                                   "corrected; `local`: we are right, the channel is asked to "
                                   "correct")
    reason: str = Field(min_length=1, max_length=500)


class DiscrepancyList(BaseModel):
    items: list[DiscrepancyOut]
    next_after_id: int | None = Field(description="pass as after_id for the next page")
