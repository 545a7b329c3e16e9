"""Published versions of a village's lists (公示): per village, year and kind, version 1, 2, …

Each version keeps the rows as they were published (masked names and ID numbers, and per
insurance its state, amount and payer), so a file of any version can be written again as it
was; a version published during the window of the one before it is a correction (更正) and
keeps that window, and every version after the first keeps what changed against the one
before it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime


class PublicationVersion(SQLModel, table=True):
    __tablename__ = "publication_versions"
    __table_args__ = (UniqueConstraint("village_code", "year", "kind", "version",
                                       name="uq_publication_version"),)
    id: int | None = Field(default=None, primary_key=True)
    village_code: str = Field(foreign_key="villages.code", max_length=32)
    year: int
    kind: str = Field(max_length=8)                   # roster | paid
    version: int                                      # 1, 2, … per village, year and kind
    published_at: datetime = Field(sa_type=UTCDateTime)       # the business clock
    published_by_id: int | None = Field(default=None, foreign_key="staff_users.id")
    published_by: str = Field(max_length=64)          # the staff member's username
    window_start: date                                # the publication window (公示期),
    window_end: date                                  # both days inclusive
    correction: bool                                  # published within the previous window
    content_hash: str = Field(max_length=64)          # SHA-256 of the rows' canonical JSON
    residents: int
    # [{resident_id, name, id_masked, items: [{insurance, status, amount_due_fen, paid_by,
    #   reason}]}], names and ID numbers masked
    rows: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    # against the version before: {added: [row], removed: [row], changed: [{resident_id,
    # name, id_masked, insurance, old: item | null, new: item | null}]}; null for version 1
    changes: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
