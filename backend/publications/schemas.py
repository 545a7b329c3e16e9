from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

Insurance = Literal["pension", "medical"]


class ChangeCounts(BaseModel):
    added: int = Field(description="residents on this version and not on the one before")
    removed: int = Field(description="residents on the version before and not on this one")
    changed: int = Field(description="items (resident × insurance) whose state, amount or "
                                     "payer changed")


class VersionOut(BaseModel):
    """One published version of a village's list (the rows are in its files)."""

    village_code: str
    year: int
    kind: Literal["roster", "paid"]
    version: int = Field(description="1, 2, … per village, year and kind")
    published_at: datetime = Field(description="by the business clock")
    published_by: str = Field(description="the staff member's username")
    window_start: date = Field(description="the publication window (公示期), first day")
    window_end: date = Field(description="its last day, inclusive")
    correction: bool = Field(description="published within the window of the version "
                                         "before (更正): it keeps that window")
    content_hash: str = Field(description="SHA-256 of the rows' canonical JSON")
    residents: int
    changes: ChangeCounts | None = Field(description="against the version before; null for "
                                                     "version 1. The files' 变更 sheet or "
                                                     "section lists them")


class VersionsOut(BaseModel):
    village_code: str
    year: int
    versions: list[VersionOut] = Field(description="by kind, then version")
