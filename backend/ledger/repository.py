"""The daily remittance ledger (日报解台账): a query over postings, nothing stored twice."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.ledger.models import COLLECTED, DUPLICATE, REFUNDED, REMITTED, JournalEntry, Posting


def daily_measures(session: Session, day: date, town: str | None,
                   village: str | None) -> list[tuple[str | None, str | None, str, str, int, int]]:
    """(town, village, channel, measure, count, fen) for one business day."""
    stmt = (select(col(Posting.town_code), col(Posting.village_code), col(Posting.channel),
                   col(Posting.measure), func.sum(col(Posting.items)),
                   func.sum(col(Posting.amount_fen)))
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


def corrections(session: Session, day: date, town: str | None, village: str | None
                ) -> list[tuple[int, date, str, str, str | None, str | None, str, str, int]]:
    """(entry, for_date, kind, reason, town, village, channel, measure, fen): what was posted
    into ``day`` for earlier days that were closed by then."""
    stmt = (select(col(JournalEntry.id), col(JournalEntry.for_date), col(JournalEntry.kind),
                   col(JournalEntry.reason), col(Posting.town_code), col(Posting.village_code),
                   col(Posting.channel), col(Posting.measure),
                   func.sum(col(Posting.amount_fen)))
            .join(Posting, col(Posting.entry_id) == col(JournalEntry.id))
            .where(col(JournalEntry.business_date) == day,
                   col(JournalEntry.for_date).isnot(None), col(Posting.measure).isnot(None))
            .group_by(col(JournalEntry.id), col(JournalEntry.for_date), col(JournalEntry.kind),
                      col(JournalEntry.reason), col(Posting.town_code),
                      col(Posting.village_code), col(Posting.channel), col(Posting.measure))
            .order_by(col(JournalEntry.id), col(Posting.town_code), col(Posting.village_code),
                      col(Posting.channel), col(Posting.measure)))
    if town:
        stmt = stmt.where(col(Posting.town_code) == town)
    if village:
        stmt = stmt.where(col(Posting.village_code) == village)
    return [(int(e), d, str(k), str(r), t, v, str(c), str(m), int(fen or 0))
            for e, d, k, r, t, v, c, m, fen in session.execute(stmt)
            if e is not None and d is not None]
