"""Closing a business day (日结): finance locks the day's book.

Once a day is closed nothing more is posted into it. Money that arrives later for it — a
late notification, a statement recovering a payment, cash remitted after the close — is
posted by ``post_entry`` into the first day after it that is not closed, with ``for_date``
naming the closed day; that day's ledger lists it under ``corrections``. The closed day's
own ledger stays what it was at the close, and the close keeps it (``ClosedDay.totals``).

A day is closed only once it is over by the business clock, and only when every
precondition allows it (``PRECONDITIONS``: e.g. no open reconciliation discrepancies of the
day). Cash of the day that agents have not remitted yet does not stop a close: it is shown
(``outstanding_fen``) and its remittance, when it comes, is a correction of a later day.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.audit import service as audit
from backend.auth.models import StaffUser
from backend.clock import BusinessClock, business_date
from backend.errors import Conflict, ValidationFailed
from backend.ledger.daily import daily_ledger
from backend.ledger.models import ClosedDay
from backend.ledger.schemas import DailyLedger, DailyTotals, Day


@dataclass(frozen=True)
class Refusal:
    """Why a day may not be closed yet: an API error code (declared in ERROR_CODES, 409) and
    a sentence for finance."""

    code: str
    message: str


#: Asked in turn before a day is closed, inside the closing transaction (the ledger is
#: locked by then); the first refusal stops the close.
Precondition = Callable[[Session, date], Refusal | None]


def no_open_discrepancies(count: Callable[[Session, date], int]) -> Precondition:
    """A precondition from a counter of the day's open reconciliation discrepancies
    (``reconciliation.service.open_discrepancies``)."""
    def check(session: Session, day: date) -> Refusal | None:
        n = count(session, day)
        if n:
            return Refusal("open_discrepancies",
                           f"{n} reconciliation discrepancies of {day} are still open: resolve "
                           "them before closing the day")
        return None

    return check


def _open_discrepancies(session: Session, day: date) -> int:
    from backend.reconciliation.service import open_discrepancies  # (imports the ledger)

    return open_discrepancies(session, day)


#: What must hold before a day closes: no reconciliation discrepancy of the day left open.
PRECONDITIONS: list[Precondition] = [no_open_discrepancies(_open_discrepancies)]


LOCK_TIMEOUT = "5s"


def close_day(session: Session, clock: BusinessClock, day: date, user_id: int, note: str = "",
              *, preconditions: Sequence[Precondition] | None = None) -> ClosedDay:
    """Close ``day``: refused (409) before it is over (``day_not_over``), when closed already
    (``day_closed``) or when a precondition refuses (its code). Runs in the caller's
    transaction, which it expects to commit promptly."""
    today = clock.today()
    if day >= today:
        raise Conflict(f"{day} is not over yet (today is {today}): a day is closed after it "
                       "ends", code="day_not_over")
    if session.get_bind().dialect.name == "postgresql":
        # No entry lands in the day between reading it and committing the close: SHARE waits
        # for every transaction that has written an entry to finish, and holds back new ones
        # (INSERT takes ROW EXCLUSIVE) until the close commits; queued behind it, their
        # INSERT … SELECT sees the closed day (its snapshot is taken after the lock). SQLite
        # has one writer at a time (BEGIN IMMEDIATE): the close already holds it.
        # While the close waits for the lock, new entries queue behind it: it waits for
        # LOCK_TIMEOUT at most (then fails, to be retried) rather than stall every payment.
        session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        session.execute(text("LOCK TABLE journal_entries IN SHARE MODE"))
        session.execute(text("SET LOCAL lock_timeout = DEFAULT"))
    if session.get(ClosedDay, day) is not None:
        raise _closed(day)
    for check in PRECONDITIONS if preconditions is None else preconditions:
        refusal = check(session, day)
        if refusal is not None:
            raise Conflict(refusal.message, code=refusal.code)
    ledger = daily_ledger(session, day, today=today)
    closed = ClosedDay(business_date=day, closed_by=user_id, closed_at=clock.now(),
                       note=note, totals=snapshot(ledger))
    try:
        with session.begin_nested():
            session.add(closed)
    except IntegrityError:        # closed meanwhile, by another finance user
        raise _closed(day) from None
    totals = closed.totals["totals"]
    audit.record(session, clock, user_id, "day.close", "business_day", day.isoformat(),
                 reason=note or None,
                 details={"amount_fen": totals["amount_fen"], "count": totals["count"],
                          "outstanding_fen": totals["outstanding_fen"]})
    return closed


def _closed(day: date) -> Conflict:
    return Conflict(f"{day} is closed already; later money for it goes into the next open day",
                    code="day_closed")


def snapshot(ledger: DailyLedger) -> dict[str, object]:
    """What a close keeps of the day's ledger: its rows, totals and corrections."""
    return ledger.model_dump(mode="json", include={"rows", "totals", "corrections"})


def closed_days(session: Session, first: date, last: date) -> dict[date, tuple[ClosedDay, str]]:
    """The closed days between ``first`` and ``last`` (inclusive), with who closed each."""
    rows = session.execute(
        select(ClosedDay, col(StaffUser.username))
        .join(StaffUser, col(StaffUser.id) == col(ClosedDay.closed_by))
        .where(col(ClosedDay.business_date) >= first, col(ClosedDay.business_date) <= last))
    return {day.business_date: (day, username) for day, username in rows}


def ledger_of(session: Session, clock: BusinessClock, day: date, *, town: str | None = None,
              village: str | None = None) -> DailyLedger:
    """The daily ledger as the API answers it: a closed day as it stood at its close."""
    found = closed_days(session, day, day).get(day)
    if found is None:
        return daily_ledger(session, day, today=clock.today(), town=town, village=village)
    closed, username = found
    # Nothing is posted into a closed day, so its rows are what the close saw; which cash
    # was overdue is read as at the close too.
    ledger = daily_ledger(session, day, today=business_date(closed.closed_at), town=town,
                          village=village)
    return ledger.model_copy(update={"closed": True, "closed_at": closed.closed_at,
                                     "closed_by": username})


MAX_DAYS = 92


def list_days(session: Session, clock: BusinessClock, first: date, last: date) -> list[Day]:
    """Each day from ``first`` to ``last``: closed or open, who closed it, its totals."""
    if last < first:
        raise ValidationFailed(f"to: {last} is before from: {first}", fields=["to"])
    if (last - first).days >= MAX_DAYS:
        raise ValidationFailed(f"from, to: at most {MAX_DAYS} days at once", fields=["to"])
    closed = closed_days(session, first, last)
    today = clock.today()
    days: list[Day] = []
    day = first
    while day <= last:
        if day in closed:
            c, username = closed[day]
            days.append(Day(date=day, closed=True, closed_at=c.closed_at, closed_by=username,
                            note=c.note, totals=DailyTotals.model_validate(c.totals["totals"])))
        else:
            days.append(Day(date=day, closed=False,
                            totals=daily_ledger(session, day, today=today).totals))
        day += timedelta(days=1)
    return days
