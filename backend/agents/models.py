"""Payments an agent took in person (代收): cash or POS, each with the agent's receipt."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime, utcnow


class AgentCollection(SQLModel, table=True):
    __tablename__ = "agent_collections"
    __table_args__ = (UniqueConstraint("agent_id", "receipt_no", name="uq_agent_receipt"),)
    id: int | None = Field(default=None, primary_key=True)
    agent_id: int = Field(foreign_key="staff_users.id")
    receipt_no: str = Field(max_length=64)
    method: str = Field(max_length=8)          # cash | pos
    # the POS terminal's reference: what the acquirer's settlement names the payment by
    pos_reference: str | None = Field(default=None, max_length=64, index=True)
    order_id: int = Field(foreign_key="orders.id")
    payment_id: int = Field(foreign_key="payments.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
