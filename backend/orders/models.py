"""Bill lines (应缴明细), orders, attempts (支付尝试) and the money they brought in.

A bill line is one resident's item for one year and insurance; it is paid at most once.
An order groups bill lines a payer wants to pay together (a household, both insurances).
Every channel trade — a mini-program prepay, a QR code — is an attempt with its own
``out_trade_no`` and expiry. Money a channel confirms is a payment; its share of each bill
line is a payment line, and the partial unique index on applied payment lines is what makes
"paid at most once" a database fact rather than a hope.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from backend.db import Fen, UTCDateTime, utcnow

ORDER_STATUSES = ("pending", "paid", "closed", "refunded", "partially_refunded")
ATTEMPT_STATUSES = ("creating", "pending", "unknown", "paid", "closed", "failed")


class BillLine(SQLModel, table=True):
    __tablename__ = "bill_lines"
    __table_args__ = (UniqueConstraint("resident_id", "year", "insurance", name="uq_bill_line"),)
    id: int | None = Field(default=None, primary_key=True)
    resident_id: int = Field(foreign_key="residents.id")
    year: int
    insurance: str = Field(max_length=16)
    # unpaid | claimed (a department bill claims it: the department pays) | paid
    status: str = Field(default="unpaid", max_length=16)
    claim_bill_id: int | None = Field(default=None, foreign_key="department_bills.id",
                                      index=True)
    paid_payment_id: int | None = Field(default=None)
    paid_tier_yuan: int | None = None
    paid_fen: int | None = Field(default=None, sa_type=Fen)
    paid_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    id: int | None = Field(default=None, primary_key=True)
    order_no: str = Field(sa_column=Column(String(32), unique=True, nullable=False))
    payer_sub: str = Field(max_length=96)   # no index: no query looks orders up by payer
    payer_role: str = Field(max_length=16)
    year: int
    channel: str = Field(max_length=16)           # wechat_jsapi | … | aggregate_qr
    status: str = Field(default="pending", max_length=24)
    amount_fen: int = Field(sa_type=Fen)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    qr_token: str | None = Field(default=None, sa_column=Column(String(43), unique=True))
    village_code: str | None = Field(default=None, max_length=32)   # for agent orders
    paid_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    channel_transaction_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OrderLine(SQLModel, table=True):
    __tablename__ = "order_lines"
    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    bill_line_id: int = Field(foreign_key="bill_lines.id", index=True)
    resident_id: int = Field(foreign_key="residents.id")
    insurance: str = Field(max_length=16)
    tier_yuan: int | None = None
    amount_fen: int = Field(sa_type=Fen)
    # where the resident lives, copied at ordering: the ledger's dimensions without a join
    village_code: str | None = Field(default=None, max_length=32)
    town_code: str | None = Field(default=None, max_length=32)


class Attempt(SQLModel, table=True):
    __tablename__ = "attempts"
    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    channel: str = Field(max_length=16)           # wechat | alipay | unionpay
    kind: str = Field(max_length=8)               # jsapi | native | qr
    out_trade_no: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    amount_fen: int = Field(sa_type=Fen)
    status: str = Field(default="creating", max_length=16)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    qr_content: str | None = Field(default=None, max_length=512)
    request_payment: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    transaction_id: str | None = Field(default=None, max_length=64)
    paid_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=500)
    # active query (主动查单) of a trade whose notification has not come
    next_query_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    queries: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Payment(SQLModel, table=True):
    """Money a channel (or an agent, or a department) confirms was received.

    A channel trade (attempt) is paid at most once: that is what makes a repeated
    notification, or a notification and a query of the same payment, one payment. The
    channel's transaction id is not the key: two trades reported under one transaction id
    are an anomaly for staff, and the money of each trade is still counted.
    """

    __tablename__ = "payments"
    __table_args__ = (
        Index("uq_payment_attempt", "attempt_id", unique=True,
              postgresql_where=text("attempt_id IS NOT NULL"),
              sqlite_where=text("attempt_id IS NOT NULL")),
        Index("uq_payment_txn_once", "channel", "transaction_id", unique=True,
              postgresql_where=text("NOT shared_transaction"),
              sqlite_where=text("NOT shared_transaction")),
    )
    id: int | None = Field(default=None, primary_key=True)
    attempt_id: int | None = Field(default=None, foreign_key="attempts.id")
    order_id: int = Field(foreign_key="orders.id", index=True)
    channel: str = Field(max_length=16)
    transaction_id: str = Field(max_length=64)
    amount_fen: int = Field(sa_type=Fen)
    paid_at: datetime = Field(sa_type=UTCDateTime)
    business_date: date
    source: str = Field(max_length=16)            # notification | query | statement
    # the channel answered a query about this trade with a transaction id another trade
    # holds: applied as the channel said, kept apart from the one-trade-per-id rule for staff
    shared_transaction: bool = Field(default=False,
                                     sa_column_kwargs={"server_default": text("false")})
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PaymentLine(SQLModel, table=True):
    __tablename__ = "payment_lines"
    __table_args__ = (
        Index("uq_bill_line_paid_once", "bill_line_id", unique=True,
              postgresql_where=text("applied"), sqlite_where=text("applied")),
    )
    id: int | None = Field(default=None, primary_key=True)
    payment_id: int = Field(foreign_key="payments.id", index=True)
    bill_line_id: int = Field(foreign_key="bill_lines.id")
    amount_fen: int = Field(sa_type=Fen)
    # False: a duplicate, queued for refund — or a line whose money was refunded (its
    # refund line says which), so that the bill line can be paid again
    applied: bool


REFUND_STATUSES = ("requested", "approved", "queued", "processing", "awaiting_cash",
                   "succeeded", "failed", "rejected")
#: A refund that holds money back from what remains refundable (all but these).
REFUND_RELEASED = ("failed", "rejected")
#: Approved and on its way to the payer: money queued for refund.
REFUND_UNDER_WAY = ("approved", "queued", "processing", "awaiting_cash")


class Refund(SQLModel, table=True):
    """A refund (退费) of money received on one payment.

    Finance requests it (``requested``), another finance user approves it; then a channel
    refund goes ``approved`` → ``processing`` → ``succeeded`` through the payment's own
    channel, and a cash refund (of a cash or POS payment) is ``awaiting_cash`` until the
    village agent pays it back. The automatic refund of a duplicate payment is created
    approved (``queued``). ``requested`` may also end ``rejected``.
    """

    __tablename__ = "refunds"
    __table_args__ = (UniqueConstraint("cash_agent_id", "cash_receipt_no",
                                       name="uq_refund_cash_receipt"),)
    id: int | None = Field(default=None, primary_key=True)
    payment_id: int = Field(foreign_key="payments.id", index=True)
    out_refund_no: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    amount_fen: int = Field(sa_type=Fen)
    reason: str = Field(max_length=80)            # duplicate, or what finance wrote
    status: str = Field(default="queued", max_length=16, index=True)   # REFUND_STATUSES
    method: str = Field(default="channel", max_length=8,
                        sa_column_kwargs={"server_default": "channel"})   # channel | cash
    requested_by: str | None = Field(default=None, max_length=96)  # a principal's sub
    requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    approved_by: str | None = Field(default=None, max_length=96)   # "system": automatic
    approved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rejected_by: str | None = Field(default=None, max_length=96)
    rejected_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reject_reason: str | None = Field(default=None, max_length=200)
    # a cash refund: the agent who paid it back, and their receipt
    cash_agent_id: int | None = Field(default=None, foreign_key="staff_users.id")
    cash_receipt_no: str | None = Field(default=None, max_length=64)
    channel_refund_id: str | None = Field(default=None, max_length=64)
    refunded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RefundLine(SQLModel, table=True):
    """Which payment lines a refund gives back, and how much of each."""

    __tablename__ = "refund_lines"
    __table_args__ = (UniqueConstraint("refund_id", "payment_line_id", name="uq_refund_line"),)
    id: int | None = Field(default=None, primary_key=True)
    refund_id: int = Field(foreign_key="refunds.id", index=True)
    payment_line_id: int = Field(foreign_key="payment_lines.id", index=True)
    amount_fen: int = Field(sa_type=Fen)
    # the line had paid its item (refunding it makes the item unpaid again); else a duplicate
    applied: bool
