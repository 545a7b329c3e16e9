"""The daily remittance ledger (日报解台账): a query over postings, nothing stored twice."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.ledger.models import COLLECTED, REFUNDED, REMITTED, Posting


def daily_measures(session: Session, day: date, town: str | None,
                   village: str | None) -> list[tuple[str | None, str | None, str, str, int, int]]:
    """(town, village, channel, measure, count, fen) for one business day."""
    stmt = (select(Posting.town_code, Posting.village_code, Posting.channel, Posting.measure,
                   func.count(), func.sum(Posting.amount_fen))
            .where(Posting.business_date == day, Posting.measure.isnot(None))
            .group_by(Posting.town_code, Posting.village_code, Posting.channel,
                      Posting.measure))
    if town:
        stmt = stmt.where(Posting.town_code == town)
    if village:
        stmt = stmt.where(Posting.village_code == village)
    return [(t, v, str(c), str(m), int(n), int(fen or 0)) for t, v, c, m, n, fen in
            session.execute(stmt)]


MEASURES = (COLLECTED, REFUNDED, REMITTED)
