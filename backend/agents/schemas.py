from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from backend.orders.schemas import MAX_ITEMS, OrderItemIn
from backend.receipts.schemas import ReceiptOut
from backend.residents.schemas import ItemStatus


class CollectionIn(BaseModel):
    year: int = Field(ge=2000, le=2100)
    items: list[OrderItemIn] = Field(min_length=1, max_length=MAX_ITEMS)
    method: Literal["cash", "pos"]
    receipt_no: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")
    pos_reference: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _pos_needs_reference(self) -> CollectionIn:
        if self.method == "pos" and not self.pos_reference:
            raise ValueError("pos_reference is required for a POS payment (the slip's number)")
        return self


class CollectionOut(BaseModel):
    order_no: str
    receipt_no: str = Field(description="The agent's paper receipt (收据) number, as sent; the "
                                        "service's receipt is `receipt` (its number "
                                        "`receipt.receipt_no`).")
    method: str
    amount_fen: int
    paid_at: datetime
    business_date: date
    items: list[dict[str, object]]
    receipt: ReceiptOut = Field(description="The service's receipt (缴费凭证) of this payment, "
                                            "to show or print on the spot.")
    receipt_url: str = Field(description="Its public check page (what its QR code holds).")
    receipt_png_url: str = Field(description="The receipt as a PNG, 58 mm wide (log in).")
    receipt_pdf_url: str = Field(description="The receipt as a PDF, 58 mm wide (log in).")


class RemittanceIn(BaseModel):
    business_date: date
    amount_fen: int = Field(gt=0, le=100_000_000)
    bank_receipt_no: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")


class RemittanceOut(BaseModel):
    id: int
    business_date: date
    amount_fen: int
    bank_receipt_no: str
    outstanding_fen: int


class RosterItem(BaseModel):
    insurance: Literal["pension", "medical"]
    status: ItemStatus
    amount_due_fen: int
    #: who paid: "resident" (a wallet), "agent" (cash or POS), "department" (代缴), or null
    paid_by: Literal["resident", "agent", "department"] | None
    #: why an item is not eligible (the policy's reason, e.g. "deceased"); else null
    reason: str | None = None


class RosterRow(BaseModel):
    resident_ref: str
    name: str
    id_number_masked: str
    items: list[RosterItem]


class RosterOut(BaseModel):
    year: int
    village_code: str
    rows: list[RosterRow]
