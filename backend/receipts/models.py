"""An issued receipt (缴费凭证): the exact bytes that were signed, fixed once issued.

One row per payment, written by the worker's sweep seconds after a channel's payment (an
agent's or a department's: with the payment), or the first time anything asks for it. The
receipt number is derived from the payment (``R`` + business date + payment id), never
stored first; the row only fixes what the receipt says. Nothing updates or deletes a row:
a later refund is shown beside the receipt, and a later change in the registry (a corrected
name) leaves what was issued as it was.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, String, Text
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime


class Receipt(SQLModel, table=True):
    __tablename__ = "receipts"
    receipt_no: str = Field(sa_column=Column(String(24), primary_key=True))
    payment_id: int = Field(foreign_key="payments.id", unique=True)
    # the canonical content, exactly the signed bytes (UTF-8)
    canonical: str = Field(sa_column=Column(Text, nullable=False))
    signature: str = Field(max_length=88)          # Ed25519, base64url without padding
    issued_at: datetime = Field(sa_type=UTCDateTime)   # the business clock
