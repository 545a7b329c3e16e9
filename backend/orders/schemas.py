from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

ApiChannel = Literal["wechat_jsapi", "wechat_native", "alipay_qr", "unionpay_qr", "aggregate_qr"]
MAX_ITEMS = 20


class OrderItemIn(BaseModel):
    resident_ref: str = Field(min_length=1, max_length=200)
    insurance: Literal["pension", "medical"]
    tier_yuan: int | None = Field(default=None, ge=1, le=1_000_000)


class OrderCreate(BaseModel):
    year: int = Field(ge=2000, le=2100)
    channel: ApiChannel
    items: list[OrderItemIn] = Field(min_length=1, max_length=MAX_ITEMS)


class AgentQrCreate(BaseModel):
    year: int = Field(ge=2000, le=2100)
    channel: ApiChannel = "aggregate_qr"
    items: list[OrderItemIn] = Field(min_length=1, max_length=MAX_ITEMS)


class OrderItemOut(BaseModel):
    resident_ref: str
    insurance: str
    tier_yuan: int | None
    amount_fen: int


class PaymentOut(BaseModel):
    channel: str
    out_trade_no: str | None
    request_payment: dict[str, str] | None
    qr_content: str | None
    qr_image_url: str | None


class OrderRefundOut(BaseModel):
    """A refund of money paid on the order, as the payer sees it."""

    refund_id: int
    amount_fen: int
    # requested | approved | queued | processing | awaiting_cash | succeeded | failed | rejected
    status: str
    reason: str
    requested_at: datetime | None
    refunded_at: datetime | None


class OrderOut(BaseModel):
    order_no: str
    status: str
    year: int
    amount_fen: int
    expires_at: datetime
    items: list[OrderItemOut]
    payment: PaymentOut
    paid_at: datetime | None = None
    channel_transaction_id: str | None = None
    # money received on this order that is queued for refund (a duplicate payment), and what
    # has been refunded already
    refund_queued_fen: int = 0
    refunded_fen: int = 0
    refunds: list[OrderRefundOut] = []
    # once paid: the receipt (缴费凭证) of the payment that paid it, and the URL of its
    # public check page (what the receipt's QR code holds)
    receipt_no: str | None = None
    receipt_url: str | None = None
