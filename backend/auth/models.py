"""Staff accounts (工作人员)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime, utcnow

ROLES = ("resident", "agent", "town_staff", "finance", "auditor", "department", "admin")
STAFF_ROLES = ROLES[1:]


class StaffUser(SQLModel, table=True):
    __tablename__ = "staff_users"
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, max_length=64)
    password_hash: str = Field(max_length=256)
    role: str = Field(max_length=16)
    town_code: str | None = Field(default=None, foreign_key="towns.code", max_length=32)
    village_code: str | None = Field(default=None, foreign_key="villages.code", max_length=32)
    department: str | None = Field(default=None, max_length=32)
    active: bool = True
    # carried in each token; deactivation moves it on, revoking every token issued before
    token_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
