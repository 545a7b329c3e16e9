from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class DailyRow(BaseModel):
    town_code: str | None
    village_code: str | None
    channel: str
    count: int
    amount_fen: int
    refunded_fen: int
    remitted_fen: int
    outstanding_fen: int = 0      # cash collected that day and not yet remitted
    overdue: bool = False         # cash still outstanding after the end of the next day


class DailyTotals(BaseModel):
    count: int
    amount_fen: int
    refunded_fen: int
    remitted_fen: int
    outstanding_fen: int


class Correction(BaseModel):
    """Money posted into this day that belonged to an earlier day, closed by then."""

    entry_id: int
    for_date: date = Field(description="The closed day the money belonged to.")
    kind: str = Field(description="The journal entry's kind: `channel_payment`, "
                                  "`cash_collection`, `pos_collection`, `remittance`, "
                                  "`pos_remittance`, `refund`, `correction`.")
    reason: str
    town_code: str | None
    village_code: str | None
    channel: str
    measure: str = Field(description="Which of the row's figures it is in: `collected` and "
                                     "`duplicate` in `amount_fen`, `refunded` in "
                                     "`refunded_fen`, `remitted` in `remitted_fen`.")
    amount_fen: int = Field(description="As it counts in that figure of the row.")


class DailyLedger(BaseModel):
    date: date
    rows: list[DailyRow]
    totals: DailyTotals
    closed: bool = Field(default=False, description="Finance has closed the day: nothing more is "
                                            "posted into it, and this answer no longer "
                                            "changes.")
    closed_at: datetime | None = None
    closed_by: str | None = Field(default=None, description="The finance user who closed it.")
    corrections: list[Correction] = Field(
        default_factory=list,
        description="Entries posted into this day for earlier days that were closed when they "
                    "came; already counted in `rows` and `totals`.")


class CloseDayIn(BaseModel):
    note: str = Field(default="", max_length=500)


class Day(BaseModel):
    date: date
    closed: bool
    closed_at: datetime | None = None
    closed_by: str | None = None
    note: str | None = None
    totals: DailyTotals = Field(description="The day's daily ledger totals; for a closed day "
                                            "as they stood at the close.")


class Days(BaseModel):
    days: list[Day]
