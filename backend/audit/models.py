"""The audit trail (审计日志): who did what to money or people, when and why.

Append-only (the database refuses UPDATE and DELETE) and hash-chained: each event's ``hash``
is SHA-256 over its content and the previous event's hash (``backend.audit.service``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_occurred_at", "occurred_at"),)
    id: int | None = Field(default=None, primary_key=True)
    occurred_at: datetime = Field(sa_type=UTCDateTime)     # the business clock
    recorded_at: datetime = Field(sa_type=UTCDateTime)     # the real clock
    actor_id: int | None = None                            # a staff user; None: "system"
    actor_username: str = Field(max_length=64)
    actor_role: str = Field(max_length=16)
    action: str = Field(max_length=48)
    subject_type: str = Field(max_length=32)
    subject_id: str = Field(max_length=64)
    reason: str | None = Field(default=None, max_length=500)
    details: dict[str, Any] = Field(default_factory=dict,
                                    sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)
