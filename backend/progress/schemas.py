from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class Measure(BaseModel):
    """One paid rate against its target. Rates are integer basis points (1 % = 100 bp)."""

    key: str = Field(description="`medical`, or `pension_<min>_<max>` for a pension age band "
                                 "of the policy's targets (e.g. `pension_16_44`)")
    insurance: Literal["pension", "medical"]
    min_age: int | None = Field(description="age band (coverage year − birth year), inclusive; "
                                            "null for medical (everyone eligible)")
    max_age: int | None
    eligible: int = Field(description="residents eligible for this insurance in the year")
    paid: int = Field(description="of them, those whose item for the year is paid, by anyone")
    rate_bp: int | None = Field(description="paid / eligible in basis points, rounded down; "
                                            "null when nobody is eligible")
    target_bp: int
    behind: bool = Field(description="paid / eligible is below the target (exact, not rounded)")
    shortfall: int = Field(description="how many more paid items reach the target")


class VillageProgress(BaseModel):
    village_code: str
    name: str
    gap_bp: int = Field(description="the largest target_bp − rate_bp of its measures (0 when "
                                    "on target); villages are listed largest gap first")
    measures: list[Measure]
    receipt_reports_open: int = Field(description="residents' reports of this village's paper "
                                                  "receipts (POST /r/report) still open: "
                                                  "unknown to the service, or known with "
                                                  "another amount, not yet matched nor "
                                                  "closed (POST /api/v1/receipt-reports/"
                                                  "{report_no}/close), whatever the year; "
                                                  "GET /api/v1/receipt-reports lists them")
    receipt_reports_total: int = Field(description="every report of this village's paper "
                                                   "receipts, open, matched later or closed")


class TownProgress(BaseModel):
    town_code: str
    name: str
    measures: list[Measure]
    villages: list[VillageProgress]
    receipt_reports_open: int = Field(description="the open reports of its villages")
    receipt_reports_total: int = Field(description="every report of its villages")


class TargetOut(BaseModel):
    key: str
    insurance: Literal["pension", "medical"]
    min_age: int | None
    max_age: int | None
    target_bp: int


class Progress(BaseModel):
    year: int
    as_of: datetime = Field(description="the business clock's instant of the answer")
    policy: str
    targets: list[TargetOut]
    towns: list[TownProgress]
    totals: list[Measure] = Field(description="the measures over every town in the answer")
