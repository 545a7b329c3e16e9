"""Idempotency keys (幂等键) with Stripe's semantics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime, utcnow


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("caller", "key", name="uq_idempotency_key"),)
    id: int | None = Field(default=None, primary_key=True)
    caller: str = Field(max_length=96)
    key: str = Field(max_length=64)
    request_hash: str = Field(max_length=64)
    state: str = Field(default="running", max_length=8)   # running | done
    status_code: int | None = None
    response: Any | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
