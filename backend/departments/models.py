"""Department lists (代缴名单): which department pays for whom, per insurance and year."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime, utcnow


class DepartmentListing(SQLModel, table=True):
    __tablename__ = "department_listings"
    __table_args__ = (
        UniqueConstraint("department", "resident_id", "insurance", "year",
                         name="uq_department_listing"),
    )
    id: int | None = Field(default=None, primary_key=True)
    department: str = Field(max_length=32)
    resident_id: int = Field(foreign_key="residents.id", index=True)
    insurance: str = Field(max_length=16)
    year: int
    imported_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
