"""The daily remittance ledger (日报解台账): a query over postings, nothing stored twice."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.ledger.models import COLLECTED, DUPLICATE, REFUNDED, REMITTED, Posting


def daily_measures(session: Session, day: date, town: str | None,
                   village: str | None) -> list[tuple[str | None, str | None, str, str, int, int]]:
    """(town, village, channel, measure, count, fen) for one business day."""
    stmt = (select(col(Posting.town_code), col(Posting.village_code), col(Posting.channel),
                   col(Posting.measure), func.count(), func.sum(col(Posting.amount_fen)))
            .where(col(Posting.business_date) == day, col(Posting.measure).isnot(None))
            .group_by(col(Posting.town_code), col(Posting.village_code), col(Posting.channel),
                      col(Posting.measure)))
    if town:
        stmt = stmt.where(col(Posting.town_code) == town)
    if village:
        stmt = stmt.where(col(Posting.village_code) == village)
    return [(t, v, str(c), str(m), int(n), int(fen or 0)) for t, v, c, m, n, fen in
            session.execute(stmt)]


MEASURES = (COLLECTED, DUPLICATE, REFUNDED, REMITTED)
