from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from backend.orders.schemas import MAX_ITEMS

RefundStatus = Literal["requested", "approved", "queued", "processing", "awaiting_cash",
                       "succeeded", "failed", "rejected"]


def _words(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    if not value.isprintable():
        raise ValueError("must not hold control characters")
    return value


class RefundItemIn(BaseModel):
    """A bill line of the order, named as the order answer names its items."""

    resident_ref: str = Field(min_length=1, max_length=200)
    insurance: Literal["pension", "medical"]


class RefundCreate(BaseModel):
    order_no: str = Field(min_length=1, max_length=32, pattern=r"^[0-9A-Za-z]+$")
    items: list[RefundItemIn] | None = Field(
        default=None, min_length=1, max_length=MAX_ITEMS,
        description="the items to refund; left out: everything still refundable on the order")
    # what the payer's wallet shows with the refund (WeChat takes at most 80 characters)
    reason: str = Field(min_length=1, max_length=80)

    _reason = field_validator("reason")(_words)


class RefundReject(BaseModel):
    reason: str = Field(min_length=1, max_length=200)

    _reason = field_validator("reason")(_words)


class CashRefundPaid(BaseModel):
    receipt_no: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$",
                            description="the number of the receipt the resident signed")


class RefundItemOut(BaseModel):
    resident_ref: str
    insurance: str
    amount_fen: int


class RefundOut(BaseModel):
    refund_id: int
    order_no: str
    amount_fen: int
    status: RefundStatus
    method: Literal["channel", "cash"]
    channel: str                       # the payment's: wechat, alipay, unionpay, cash, pos
    items: list[RefundItemOut]
    reason: str
    requested_by: str                  # a staff username, or "system" (duplicates)
    requested_at: datetime | None
    approved_by: str | None = None
    approved_at: datetime | None = None
    rejected_by: str | None = None
    rejected_at: datetime | None = None
    reject_reason: str | None = None
    refunded_at: datetime | None = None
    channel_refund_id: str | None = None
    cash_receipt_no: str | None = None


class RefundList(BaseModel):
    refunds: list[RefundOut]
