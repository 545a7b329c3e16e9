"""The daily remittance ledger (日报解台账) of one business day, and who may see which part.

One computation for the API (``GET /api/v1/ledger/daily``) and the finance desk's page.
"""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy.orm import Session

from backend.errors import Forbidden
from backend.ledger.models import COLLECTED, DUPLICATE, REFUNDED, REMITTED
from backend.ledger.repository import corrections, daily_measures
from backend.ledger.schemas import Correction, DailyLedger, DailyRow, DailyTotals
from backend.security.tokens import Principal

# Cash is due at the town account by the end of the next day (日报解).
CASH_GRACE_DAYS = 1


def ledger_scope(principal: Principal, town: str | None, village: str | None, *,
                 refused: str = "the daily ledger is for agents, town staff, finance and "
                                "auditors") -> tuple[str | None, str | None]:
    """(town, village) a caller may look at: finance, auditors and admin any they ask for,
    town staff their own town, an agent their own village; anyone else is refused."""
    match principal.role:
        case "finance" | "auditor" | "admin":
            return town, village
        case "town_staff":
            if town and town != principal.town_code:
                raise Forbidden("town staff see their own town only")
            return principal.town_code, village
        case "agent":
            if village and village != principal.village_code:
                raise Forbidden("an agent sees their own village only")
            return None, principal.village_code
    raise Forbidden(refused)


def as_counted(measure: str, fen: int) -> int:
    """A measure posting's amount as the row counts it: refunds and remittances are credits."""
    return -fen if measure in (REFUNDED, REMITTED) else fen


def daily_ledger(session: Session, day: date, *, today: date, town: str | None = None,
                 village: str | None = None) -> DailyLedger:
    """The day's rows and totals: every posting in the day, the corrections for earlier
    closed days included (and listed apart). ``today`` decides which cash is overdue."""
    rows: dict[tuple[str | None, str | None, str], DailyRow] = {}
    for t, v, channel, measure, n, fen in daily_measures(session, day, town, village):
        row = rows.setdefault((t, v, channel), DailyRow(
            town_code=t, village_code=v, channel=channel, count=0, amount_fen=0,
            refunded_fen=0, remitted_fen=0))
        if measure == COLLECTED:      # items paid: one posting each
            row.count += n
            row.amount_fen += fen
        elif measure == DUPLICATE:    # received, to be refunded: money, not an item paid
            row.amount_fen += fen
        elif measure == REFUNDED:
            row.refunded_fen += -fen
        elif measure == REMITTED:
            row.remitted_fen += -fen
    fixes = [Correction(entry_id=e, for_date=d, kind=k, reason=r, town_code=t, village_code=v,
                        channel=c, measure=m, amount_fen=as_counted(m, fen))
             for e, d, k, r, t, v, c, m, fen in corrections(session, day, town, village)]
    # Cash is due at the town account by the end of the next day (日报解). What is outstanding
    # is the day's own cash: money for earlier, closed days (remitted late, say) is left out.
    earlier: dict[tuple[str | None, str | None, str], int] = {}
    for fix in fixes:
        key = (fix.town_code, fix.village_code, fix.channel)
        earlier[key] = earlier.get(key, 0) + (
            -fix.amount_fen if fix.measure in (REFUNDED, REMITTED) else fix.amount_fen)
    overdue_after = day + timedelta(days=CASH_GRACE_DAYS)
    for key, row in rows.items():
        if row.channel == "cash":
            row.outstanding_fen = (row.amount_fen - row.refunded_fen - row.remitted_fen
                                   - earlier.get(key, 0))
            row.overdue = row.outstanding_fen > 0 and today > overdue_after
    ordered = sorted(rows.values(), key=lambda r: (r.town_code or "", r.village_code or "",
                                                   r.channel))
    return DailyLedger(date=day, rows=ordered, corrections=fixes, totals=DailyTotals(
        count=sum(r.count for r in ordered), amount_fen=sum(r.amount_fen for r in ordered),
        refunded_fen=sum(r.refunded_fen for r in ordered),
        remitted_fen=sum(r.remitted_fen for r in ordered),
        outstanding_fen=sum(r.outstanding_fen for r in ordered)))
