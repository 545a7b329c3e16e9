from __future__ import annotations

from datetime import date

from pydantic import BaseModel


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


class DailyLedger(BaseModel):
    date: date
    rows: list[DailyRow]
    totals: DailyTotals
