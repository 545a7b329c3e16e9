"""Posting journal entries: every fen that moves is one balanced entry with a reason.

``post_entry`` is the only writer of the ledger. It is called inside the transaction of the
state change it records (a payment applied, a refund done, cash remitted), so the two can
never disagree. Accounts are created on first use and their ids cached per engine.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import and_, event, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.db import utcnow
from backend.ledger.models import (
    AGENT_CASH,
    CHANNEL_CLEARING,
    CHANNEL_FEES,
    CONTRIBUTIONS,
    DEPARTMENT_RECEIVABLE,
    REFUNDS_PAYABLE,
    TOWN_COLLECTION,
    JournalEntry,
    LedgerAccount,
    Posting,
)
from backend.sql import Statement, Tx


@dataclass(frozen=True)
class Account:
    code: str
    kind: str
    name: str


def channel_clearing(channel: str) -> Account:
    return Account(f"{CHANNEL_CLEARING}:{channel}", CHANNEL_CLEARING, f"{channel} 待清算")


def channel_fees(channel: str) -> Account:
    return Account(f"{CHANNEL_FEES}:{channel}", CHANNEL_FEES, f"{channel} 手续费")


def agent_cash(agent_id: int) -> Account:
    return Account(f"{AGENT_CASH}:{agent_id}", AGENT_CASH, f"代办员 {agent_id} 手中现金")


def town_collection(town_code: str) -> Account:
    return Account(f"{TOWN_COLLECTION}:{town_code}", TOWN_COLLECTION, f"{town_code} 征收专户")


def department_receivable(department: str) -> Account:
    return Account(f"{DEPARTMENT_RECEIVABLE}:{department}", DEPARTMENT_RECEIVABLE,
                   f"{department} 代缴应收")


REFUNDS = Account(REFUNDS_PAYABLE, REFUNDS_PAYABLE, "应退款项")


def contributions(insurance: str, year: int) -> Account:
    return Account(f"{CONTRIBUTIONS}:{insurance}:{year}", CONTRIBUTIONS,
                   f"{year}年度 {insurance} 保费")


@dataclass(frozen=True)
class Leg:
    account: Account
    amount_fen: int                        # debit > 0, credit < 0
    village_code: str | None = None
    town_code: str | None = None
    channel: str | None = None
    measure: str | None = None


@dataclass(frozen=True)
class AggregateLeg(Leg):
    """A ``collected`` posting that stands for many items (a department bill's, per town)."""

    items: int = 1


class UnbalancedEntry(ValueError):
    pass


_account_ids: weakref.WeakKeyDictionary[Engine, dict[str, int]] = weakref.WeakKeyDictionary()


def account_ids(session: Session, accounts: Sequence[Account]) -> dict[str, int]:
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    cache = _account_ids.setdefault(engine, {})
    missing = {a.code: a for a in accounts if a.code not in cache}
    if missing:
        ins = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        session.execute(ins(LedgerAccount).values([
            {"code": a.code, "kind": a.kind, "name": a.name} for a in missing.values()
        ]).on_conflict_do_nothing(index_elements=["code"]))
        found = session.execute(select(col(LedgerAccount.code), col(LedgerAccount.id))
                                .where(col(LedgerAccount.code).in_(list(missing))))
        ids = {code: int(id_) for code, id_ in found if id_ is not None}
        # Only cache ids that a committed transaction made visible to others: ours commits
        # with the entry, and a rollback would orphan nothing but this cache entry's row.
        session.info.setdefault("ledger_new_accounts", {}).update(ids)
        return {**cache, **ids}
    return cache


def remember_accounts(session: Session) -> None:
    """After commit: the accounts this session created are now safe to cache."""
    ids = session.info.pop("ledger_new_accounts", None)
    if ids:
        bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        _account_ids.setdefault(engine, {}).update(ids)


event.listen(Session, "after_commit", remember_accounts)


# The entry goes into its business date, or — that day being closed — into the first day
# after it that is not closed, with ``for_date`` keeping the day it was for. One statement:
# the closed-day check costs no round trip. On PostgreSQL a close holds SHARE on
# journal_entries from before it reads the day until it commits (``closing.close_day``); an
# INSERT queued behind it takes its snapshot after, so it sees the day closed.
_EFFECTIVE_SQLITE = """
    CASE WHEN EXISTS (SELECT 1 FROM closed_days WHERE business_date = :business_date)
    THEN (SELECT MIN(date(c.business_date, '+1 day')) FROM closed_days c
          WHERE c.business_date >= :business_date AND NOT EXISTS (
              SELECT 1 FROM closed_days n WHERE n.business_date = date(c.business_date, '+1 day')))
    ELSE :business_date END"""
_EFFECTIVE_PG = """
    CASE WHEN EXISTS (SELECT 1 FROM closed_days
                      WHERE business_date = CAST(:business_date AS date))
    THEN (SELECT MIN(c.business_date + 1) FROM closed_days c
          WHERE c.business_date >= CAST(:business_date AS date) AND NOT EXISTS (
              SELECT 1 FROM closed_days n WHERE n.business_date = c.business_date + 1))
    ELSE CAST(:business_date AS date) END"""
_INSERT_ENTRY = Statement(
    f"""INSERT INTO journal_entries (kind, reason, business_date, for_date, occurred_at,
                                     payment_id, refund_id, remittance_id, created_at)
        SELECT :kind, :reason, d.effective,
               CASE WHEN d.effective = :business_date THEN NULL ELSE :business_date END,
               :occurred_at, :payment_id, :refund_id, :remittance_id, :now
        FROM (SELECT {_EFFECTIVE_SQLITE} AS effective) AS d
        RETURNING id, business_date""",
    postgresql=f"""
        INSERT INTO journal_entries (kind, reason, business_date, for_date, occurred_at,
                                     payment_id, refund_id, remittance_id, created_at)
        SELECT CAST(:kind AS varchar), CAST(:reason AS varchar), d.effective,
               CASE WHEN d.effective = CAST(:business_date AS date) THEN NULL
                    ELSE CAST(:business_date AS date) END,
               CAST(:occurred_at AS timestamptz), CAST(:payment_id AS integer),
               CAST(:refund_id AS integer), CAST(:remittance_id AS integer),
               CAST(:now AS timestamptz)
        FROM (SELECT {_EFFECTIVE_PG} AS effective) AS d
        RETURNING id, business_date""")
_POSTING_COLUMNS = ("entry_id", "account_id", "amount_fen", "business_date", "town_code",
                    "village_code", "channel", "measure", "items")


@dataclass(frozen=True)
class Posted:
    """A journal entry written: its id and the day it went into (``business_date``, or the
    first open day after it when that day was closed: then ``for_date`` is set)."""

    entry_id: int
    business_date: date
    for_date: date | None


def post_entry(session: Session, *, kind: str, reason: str, business_date: date,
               occurred_at: datetime, legs: Sequence[Leg], payment_id: int | None = None,
               refund_id: int | None = None, remittance_id: int | None = None) -> Posted:
    if not legs or sum(leg.amount_fen for leg in legs) != 0:
        total = sum(leg.amount_fen for leg in legs)
        raise UnbalancedEntry(f"{kind}: postings sum to {total}, not 0")
    if any(not isinstance(leg.amount_fen, int) or leg.amount_fen == 0 for leg in legs):
        raise UnbalancedEntry(f"{kind}: every posting is a non-zero integer of fen")
    ids = account_ids(session, [leg.account for leg in legs])
    tx = Tx(session)
    row = tx.one(_INSERT_ENTRY, kind=kind, reason=reason[:200], business_date=business_date,
                 occurred_at=occurred_at, payment_id=payment_id, refund_id=refund_id,
                 remittance_id=remittance_id, now=utcnow())
    assert row is not None
    entry_id = int(row[0])
    day = row[1] if isinstance(row[1], date) else date.fromisoformat(row[1])
    # One multi-row INSERT (a single round trip), not an executemany.
    tx.insert_rows("postings", _POSTING_COLUMNS, [
        (entry_id, ids[leg.account.code], leg.amount_fen, day, leg.town_code,
         leg.village_code, leg.channel, leg.measure, getattr(leg, "items", 1)) for leg in legs])
    return Posted(entry_id, day, business_date if day != business_date else None)


def balance(session: Session, account: Account, *, business_date: date | None = None) -> int:
    """The account's balance; with ``business_date``, of what belongs to that day: its own
    postings, and those posted into a later day because it was closed (``for_date``)."""
    stmt = (select(func.coalesce(func.sum(col(Posting.amount_fen)), 0))
            .join(LedgerAccount, col(LedgerAccount.id) == col(Posting.account_id))
            .where(col(LedgerAccount.code) == account.code))
    if business_date is not None:
        stmt = stmt.join(JournalEntry, col(JournalEntry.id) == col(Posting.entry_id)).where(or_(
            and_(col(Posting.business_date) == business_date, col(JournalEntry.for_date).is_(None)),
            col(JournalEntry.for_date) == business_date))
    return int(session.scalar(stmt) or 0)
