"""Receipts as the API shows them: masked, never a full ID number."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from backend.receipts.view import ReceiptView

ReceiptChannel = Literal["wechat", "alipay", "unionpay", "cash", "pos", "department"]


class ReceiptPayer(BaseModel):
    name: str = Field(description="Masked (张*); for a department bill the department's name.")
    id_number_masked: str | None = Field(description="370406********1234; null for a "
                                                     "department.")


class ReceiptItemOut(BaseModel):
    insurance: Literal["pension", "medical"]
    amount_fen: int
    name: str | None = Field(description="Whose item, masked (a household pays several); "
                                         "null on a department's receipt.")
    id_number_masked: str | None
    count: int = Field(description="Items summed in this row: 1, or a department bill's "
                                   "number of residents for the insurance.")


class ReceiptOut(BaseModel):
    """A receipt (缴费凭证) as issued; `refunded_fen` is what was refunded of it since."""

    receipt_no: str = Field(description="`R` + business date YYYYMMDD + the payment's number, "
                                        "e.g. R2020110200000123.")
    payer: ReceiptPayer
    items: list[ReceiptItemOut]
    amount_fen: int
    channel: ReceiptChannel
    paid_at: datetime = Field(description="On the business clock, Beijing time (+08:00).")
    business_date: date
    agent: str | None = Field(description="Cash and POS: the agent who took the money.")
    paper_receipt_no: str | None = Field(description="Cash and POS: the agent's paper "
                                                     "receipt (收据) number.")
    refunded_fen: int = Field(description="Refunded since (shown beside the receipt; the "
                                          "receipt itself never changes).")
    verify_url: str = Field(description="PUBLIC_BASE_URL/r/<token>: what the receipt's QR "
                                        "code holds; anyone may open it.")


class ReceiptCheckOut(BaseModel):
    """What `GET /r/{token}` answers as JSON: valid or not, and what the receipt says."""

    valid: bool
    receipt_no: str | None = None
    amount_fen: int | None = None
    business_date: date | None = None
    refunded_fen: int | None = None
    payer: ReceiptPayer | None = None


def receipt_out(view: ReceiptView) -> ReceiptOut:
    return ReceiptOut(
        receipt_no=view.receipt_no,
        payer=ReceiptPayer(name=view.payer_name, id_number_masked=view.payer_id_number_masked),
        items=[ReceiptItemOut(insurance=i.insurance,  # type: ignore[arg-type]
                              amount_fen=i.amount_fen, name=i.name,
                              id_number_masked=i.id_number_masked, count=i.count)
               for i in view.items],
        amount_fen=view.amount_fen, channel=view.channel,  # type: ignore[arg-type]
        paid_at=view.paid_at, business_date=view.business_date, agent=view.agent,
        paper_receipt_no=view.paper_receipt_no, refunded_fen=view.refunded_fen,
        verify_url=view.verify_url)


def check_out(view: ReceiptView | None) -> ReceiptCheckOut:
    if view is None:
        return ReceiptCheckOut(valid=False)
    return ReceiptCheckOut(
        valid=True, receipt_no=view.receipt_no, amount_fen=view.amount_fen,
        business_date=view.business_date, refunded_fen=view.refunded_fen,
        payer=ReceiptPayer(name=view.payer_name, id_number_masked=view.payer_id_number_masked))
