"""POS settlement (POS 结算): what the acquirer paid into the town account remits the POS
collections, as an agent's bank receipt remits cash.

A POS collection debits ``channel_clearing:pos``; the acquirer's settlement credits it back
(measure ``remitted``, channel ``pos``) on the collection's own business day and village —
the row of the daily ledger that counted the collection, as a cash remittance does — and
debits the town's collection account with what arrived and ``channel_fees:pos`` with the
acquirer's fee. When that day is closed, the entry goes into the next open day as a
correction (``post_entry``). Each collection is remitted once: a partial unique index on the
entries refuses a second, and a settlement loaded again finds them remitted already.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.agents.models import AgentCollection
from backend.ledger import service as ledger
from backend.ledger.models import COLLECTED, DUPLICATE, REMITTED, JournalEntry, Posting
from backend.orders.models import Payment

POS_REMITTANCE = "pos_remittance"


@dataclass(frozen=True)
class PosSettled:
    """One collection in the acquirer's settlement: named by our payment id or by the POS slip
    reference the agent recorded (``pos_reference``); ``amount_fen`` is the collection's
    amount as the acquirer has it, ``fee_fen`` what it kept."""

    amount_fen: int
    fee_fen: int = 0
    payment_id: int | None = None
    pos_reference: str | None = None


@dataclass
class PosRemittance:
    remitted: list[int] = field(default_factory=list)          # payment ids remitted now
    already_remitted: list[int] = field(default_factory=list)  # by an earlier settlement
    # What could not be remitted, and why: ``unknown`` (no POS collection by that payment id
    # or reference), ``ambiguous_reference`` (several collections have it), ``amount_mismatch``
    # (the acquirer's amount is not the collection's), ``bad_fee``, ``duplicate_line`` (the
    # settlement names the collection twice).
    refused: list[tuple[PosSettled, str]] = field(default_factory=list)
    remitted_fen: int = 0
    fee_fen: int = 0


def remit_pos(session: Session, *, settle_date: date, collections: Sequence[PosSettled],
              occurred_at: datetime, reference: str) -> PosRemittance:
    """Remit the POS collections an acquirer settled on ``settle_date`` (its statement or
    batch: ``reference``), in the caller's transaction. Nothing is raised for a line that does
    not fit: it is returned in ``refused`` for the caller to report as a discrepancy."""
    out = PosRemittance()
    by_id, by_ref = _collections(session, collections)
    wanted: dict[int, PosSettled] = {}
    for line in collections:
        if line.payment_id is not None:
            found = by_id.get(line.payment_id)
        else:
            refs = by_ref.get(line.pos_reference or "", [])
            if len(refs) > 1:
                out.refused.append((line, "ambiguous_reference"))
                continue
            found = refs[0] if refs else None
        if found is None:
            out.refused.append((line, "unknown"))
        elif found[1] != line.amount_fen:
            out.refused.append((line, "amount_mismatch"))
        elif not 0 <= line.fee_fen <= line.amount_fen:
            out.refused.append((line, "bad_fee"))
        elif found[0] in wanted:
            out.refused.append((line, "duplicate_line"))
        else:
            wanted[found[0]] = line
    if not wanted:
        return out
    done = {int(pid) for pid in session.scalars(select(col(JournalEntry.payment_id)).where(
        col(JournalEntry.kind) == POS_REMITTANCE, col(JournalEntry.payment_id).in_(wanted)))
        if pid is not None}
    out.already_remitted += sorted(done)
    todo = [pid for pid in wanted if pid not in done]
    places = _collected_where(session, todo)
    clearing, fees = ledger.channel_clearing("pos"), ledger.channel_fees("pos")
    for pid in todo:
        line = wanted[pid]
        day, parts = places[pid]
        legs: list[ledger.Leg] = []
        fee_left = line.fee_fen
        for town, village, fen in parts:
            where = {"village_code": village, "town_code": town, "channel": "pos"}
            legs.append(ledger.Leg(clearing, -fen, measure=REMITTED, **where))
            fee = min(fee_left, fen)
            fee_left -= fee
            if fen - fee:
                legs.append(ledger.Leg(ledger.town_collection(town or ""), fen - fee, **where))
            if fee:
                legs.append(ledger.Leg(fees, fee, **where))
        ledger.post_entry(
            session, kind=POS_REMITTANCE,
            reason=f"POS settlement {reference} of {settle_date}: payment {pid}"
                   + (f", slip {line.pos_reference}" if line.pos_reference else "")
                   + f", fee {line.fee_fen} fen",
            business_date=day, occurred_at=occurred_at, legs=legs, payment_id=pid)
        out.remitted.append(pid)
        out.remitted_fen += line.amount_fen
        out.fee_fen += line.fee_fen
    return out


def _collections(session: Session, lines: Sequence[PosSettled]) -> tuple[
        dict[int, tuple[int, int]], dict[str, list[tuple[int, int]]]]:
    """The POS collections named: (payment id, amount) by payment id and by slip reference."""
    ids: list[int] = [line.payment_id for line in lines if line.payment_id is not None]
    refs = sorted({line.pos_reference for line in lines
                   if line.payment_id is None and line.pos_reference})
    by_id: dict[int, tuple[int, int]] = {}
    by_ref: dict[str, list[tuple[int, int]]] = {}
    stmt = (select(col(Payment.id), col(Payment.amount_fen), col(AgentCollection.pos_reference))
            .join(AgentCollection, col(AgentCollection.payment_id) == col(Payment.id))
            .where(col(AgentCollection.method) == "pos", col(Payment.channel) == "pos"))
    for chunk in _chunks(sorted(set(ids))):
        for pid, fen, _ in session.execute(stmt.where(col(Payment.id).in_(chunk))):
            by_id[int(pid or 0)] = (int(pid or 0), int(fen))
    for chunk in _chunks(refs):
        for pid, fen, ref in session.execute(
                stmt.where(col(AgentCollection.pos_reference).in_(chunk))):
            by_ref.setdefault(str(ref), []).append((int(pid or 0), int(fen)))
    return by_id, by_ref


def _collected_where(session: Session, payment_ids: list[int]) -> dict[
        int, tuple[date, list[tuple[str | None, str | None, int]]]]:
    """Each collection's business day and what it put into ``channel_clearing:pos``, by town
    and village."""
    days = {int(pid or 0): day for chunk in _chunks(payment_ids) for pid, day in session.execute(
        select(col(Payment.id), col(Payment.business_date))
        .where(col(Payment.id).in_(chunk)))}
    parts: dict[int, list[tuple[str | None, str | None, int]]] = {}
    for chunk in _chunks(payment_ids):
        for pid, town, village, fen in session.execute(
                select(col(JournalEntry.payment_id), col(Posting.town_code),
                       col(Posting.village_code), func.sum(col(Posting.amount_fen)))
                .join(Posting, col(Posting.entry_id) == col(JournalEntry.id))
                .where(col(JournalEntry.payment_id).in_(chunk),
                       col(JournalEntry.kind) == "pos_collection",
                       col(Posting.measure).in_((COLLECTED, DUPLICATE)))
                .group_by(col(JournalEntry.payment_id), col(Posting.town_code),
                          col(Posting.village_code))
                .order_by(col(Posting.town_code), col(Posting.village_code))):
            parts.setdefault(int(pid or 0), []).append((town, village, int(fen or 0)))
    return {pid: (days[pid], parts[pid]) for pid in payment_ids}


def _chunks(items: Sequence[int] | Sequence[str], size: int = 500):  # type: ignore[no-untyped-def]
    for k in range(0, len(items), size):
        yield list(items[k:k + size])
