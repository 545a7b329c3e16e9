"""What a death list (死亡名单) does to the residents it names.

A resident who died before a coverage year starts is not charged for it (the engine's rule:
``died_on < policy.year_start``). The death list is imported monthly; once its rows are
written, :func:`apply_deaths` — in the import's transaction — makes the rest of the service
agree with it:

* the residents are deceased wherever they are assessed (the lookup, the roster, ordering):
  the ``deaths`` row, keyed by the ID hash, is what every assessment reads;
* their pending orders holding an item of such a year are closed — at the channel first, so
  by an outbox job (``close_for_death``), never inside the import's transaction;
* money already received for such an item is queued for refund, once: an automatic refund
  (``reason="deceased"``, requested and approved by ``system``) through the payment's own
  channel, or for a cash or POS payment a cash refund the village agent pays back. Its lines
  are the applied payment lines, so the item becomes unpaid when the refund succeeds. Only
  what remains refundable is taken (a refund finance already asked for is not doubled), so
  importing the list again, or a later list naming the same person, queues nothing more.

Money that still arrives for a closed order of a deceased resident is applied as any late
payment is, and then refunded the same way (:func:`refund_late_payment`, called by
``apply_payment``); the close job does the same for a payment that came before the channel
closed the trade.

Department bills (代缴通知单) get their credit notes from the summary
:func:`apply_deaths` returns (``DeathsApplied.deceased``): the hook is
:func:`credit_department_bills`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.audit import service as audit
from backend.audit.service import Actor
from backend.db import unit_of_work, utcnow
from backend.money import yuan
from backend.orders import repository as orders_repo
from backend.orders.models import (
    BillLine,
    Order,
    OrderLine,
    Payment,
    PaymentLine,
    Refund,
    RefundLine,
)
from backend.orders.payment_flow import new_refund_no
from backend.orders.service import close_attempts
from backend.orders.states import LIVE_ATTEMPT_STATES
from backend.outbox.service import enqueue
from backend.policy import policy_for_year
from backend.policy.loader import coverage_year_start
from backend.refunds.repository import held_fen
from backend.refunds.service import SYSTEM, method_of
from backend.residents.models import Death, Resident
from backend.runtime import Runtime

log = logging.getLogger(__name__)

REASON = "deceased"                    # the refunds' reason
CLOSE_JOB = "close_for_death"          # the outbox job that closes an order at the channel
# ID hashes per `IN (…)` (SQLite's bound parameters are limited; a monthly list is small).
KEYS_PER_QUERY = 500


@dataclass(frozen=True)
class Deceased:
    """A registered resident the list names, and the coverage years they are not charged
    for (those that start after the death, among the years the service knows of)."""

    resident_id: int
    died_on: date
    years: tuple[int, ...]


@dataclass(frozen=True)
class QueuedRefund:
    refund_id: int
    payment_id: int
    order_id: int
    amount_fen: int
    method: str                        # channel | cash


@dataclass
class DeathsApplied:
    """What one death list did: the import's report and audit record say it."""

    named: int = 0                     # rows of the list
    marked: int = 0                    # registered residents whose death is new or changed
    registered: int = 0                # registered residents named (new or not)
    orders_closed: int = 0             # pending orders sent to be closed at the channel
    refunds: list[QueuedRefund] = field(default_factory=list)
    # paid items no refund was queued for: not refundable here (e.g. a department's payment)
    not_refunded: int = 0
    deceased: list[Deceased] = field(default_factory=list)
    # credit notes on department bills for their lines (代缴通知单 冲减单)
    credit_notes: list[str] = field(default_factory=list)

    @property
    def refunds_queued(self) -> int:
        return len(self.refunds)

    @property
    def refund_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds)

    def summary(self) -> str:
        text = (f"deaths: {self.marked} resident{'s' if self.marked != 1 else ''} marked "
                f"deceased ({self.registered} registered of {self.named} named), "
                f"{self.orders_closed} pending order{'s' if self.orders_closed != 1 else ''} "
                f"closed, {self.refunds_queued} refund{'s' if self.refunds_queued != 1 else ''}"
                f" queued ({yuan(self.refund_fen)} yuan)")
        if self.credit_notes:
            text += (f", {len(self.credit_notes)} department bill credit "
                     f"note{'s' if len(self.credit_notes) != 1 else ''}")
        if self.not_refunded:
            text += f"; {self.not_refunded} paid item(s) not refundable here"
        return text


# --------------------------------------------------------------------------- years
def year_start(rt: Runtime, year: int) -> date:
    """When coverage ``year`` starts, by the district's policy for it (the runtime's policy,
    or the file beside it that ``policy_for`` would load)."""
    try:
        return policy_for_year(rt.policy, year).year_start
    except LookupError:
        # No policy file for the year: no order can be made for it either; the rule is the
        # same for every policy.
        return coverage_year_start(year)


def not_charged(died_on: date, start: date) -> bool:
    """The engine's rule (``deceased = died_on < policy.year_start``)."""
    return died_on < start


# --------------------------------------------------------------------------- the import
def apply_deaths(rt: Runtime, session: Session, id_hashes: Sequence[str], *,
                 changed: Iterable[str] = (), actor: Actor = None) -> DeathsApplied:
    """Everything a death list does, in the import's transaction (``session``), after its
    rows are written. ``id_hashes``: every person the list names; ``changed``: those whose
    death row this import inserted or changed. Channel work is left to outbox jobs."""
    changed = set(changed)
    result = DeathsApplied(named=len(id_hashes))
    people = _registered(session, id_hashes)
    result.registered = len(people)
    result.marked = sum(1 for _, id_hash, _ in people if id_hash in changed)
    years = _known_years(rt, session, [rid for rid, _, _ in people])
    starts = {y: year_start(rt, y) for y in years}
    result.deceased = [
        Deceased(rid, died, tuple(y for y in years if not_charged(died, starts[y])))
        for rid, _, died in people]
    result.deceased = [d for d in result.deceased if d.years]
    by_resident = {d.resident_id: d for d in result.deceased}
    _lock_orders_of(session, sorted(by_resident))
    result.orders_closed = _close_pending_orders(session, by_resident)
    result.refunds, result.not_refunded = refund_paid_items(
        rt, session, resident_ids=sorted(by_resident), at=rt.clock.now())
    credit_department_bills(rt, session, result)
    audit.record(session, rt, actor, "deaths.applied", "import", "deaths",
                 details=audit_details(result))
    log.info("%s", result.summary())
    return result


def credit_department_bills(rt: Runtime, session: Session, result: DeathsApplied) -> None:
    """Department bills (代缴通知单): a credit note on each bill with lines of
    ``result.deceased`` for a coverage year they are not charged for, once, in the import's
    transaction — a line not paid yet is released, one the bill had paid is owed back to
    the department (``backend/departments/service.py`` ``credit_deceased``)."""
    from backend.departments.service import credit_deceased

    result.credit_notes = credit_deceased(
        rt, session, {d.resident_id: d.died_on for d in result.deceased})


def audit_details(result: DeathsApplied) -> dict[str, Any]:
    """Counts and refund ids: never an ID number (the residents are ids, not numbers)."""
    return {"named": result.named, "registered": result.registered, "marked": result.marked,
            "orders_closed": result.orders_closed, "refunds_queued": result.refunds_queued,
            "refund_fen": result.refund_fen, "refund_ids": [r.refund_id for r in result.refunds],
            "not_refunded": result.not_refunded, "credit_notes": result.credit_notes,
            "residents": [d.resident_id for d in result.deceased]}


def _chunks(items: Sequence[Any], size: int = KEYS_PER_QUERY) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _registered(session: Session, id_hashes: Sequence[str]) -> list[tuple[int, str, date]]:
    """(resident id, ID hash, died on) of the registered residents among ``id_hashes``."""
    rows: list[tuple[int, str, date]] = []
    for chunk in _chunks(sorted(set(id_hashes))):
        rows += [(int(rid or 0), str(h), died) for rid, h, died in session.execute(
            select(col(Resident.id), col(Resident.id_hash), col(Death.died_on))
            .join(Death, col(Death.id_hash) == col(Resident.id_hash))
            .where(col(Resident.id_hash).in_(chunk)))]
    return sorted(rows)


def _known_years(rt: Runtime, session: Session, resident_ids: Sequence[int]) -> list[int]:
    """The runtime's coverage year, and every year the residents have an item or order of."""
    years = {rt.policy.coverage_year}
    for chunk in _chunks(resident_ids):
        years.update(y for (y,) in session.execute(
            select(col(BillLine.year)).where(col(BillLine.resident_id).in_(chunk)).distinct()))
    return sorted(years)


def _lock_orders_of(session: Session, resident_ids: Sequence[int]) -> None:
    """Lock every order holding an item of these residents (in id order, as every path
    locks orders) before their payments are read. A payment for one of them — its
    confirmation locks the order — then either committed first and is read here, or waits
    for this import and sees its deaths rows (``refund_late_payment``). Read unlocked, money
    for a closed order confirmed meanwhile was refunded by neither: the import had not seen
    it, and the confirmation had not seen the death."""
    ids: set[int] = set()
    for chunk in _chunks(resident_ids):
        ids.update(int(i) for (i,) in session.execute(
            select(col(OrderLine.order_id)).where(col(OrderLine.resident_id).in_(chunk))
            .distinct()))
    for chunk in _chunks(sorted(ids)):
        session.execute(select(col(Order.id)).where(col(Order.id).in_(chunk))
                        .order_by(col(Order.id)).with_for_update()).all()


def _close_pending_orders(session: Session, deceased: dict[int, Deceased]) -> int:
    """Send every pending order holding an item the resident is not charged for to be
    closed at the channel (a job: no network call inside the import's transaction)."""
    orders: set[int] = set()
    for chunk in _chunks(sorted(deceased)):
        for order_id, resident_id, year in session.execute(
                select(col(Order.id), col(OrderLine.resident_id), col(Order.year))
                .join(OrderLine, col(OrderLine.order_id) == col(Order.id))
                .where(col(Order.status) == "pending", col(OrderLine.resident_id).in_(chunk))):
            if year in deceased[resident_id].years:
                orders.add(int(order_id or 0))
    for order_id in sorted(orders):
        enqueue(session, CLOSE_JOB, {"order_id": order_id})
    return len(orders)


# --------------------------------------------------------------------------- refunds
@dataclass(frozen=True)
class _Line:
    id: int
    payment_id: int
    order_id: int
    remaining_fen: int


def _paid_lines(session: Session, where: list[Any]) -> list[tuple[Any, ...]]:
    """The applied payment lines (money now paying an item) of deceased residents, with
    what remains refundable of each and the item's year and the death."""
    return list(session.execute(
        select(col(PaymentLine.id), col(PaymentLine.payment_id), col(Payment.order_id),
               col(PaymentLine.amount_fen) - held_fen(), col(BillLine.year), col(Death.died_on))
        .join(BillLine, col(BillLine.id) == col(PaymentLine.bill_line_id))
        .join(Payment, col(Payment.id) == col(PaymentLine.payment_id))
        .join(Resident, col(Resident.id) == col(BillLine.resident_id))
        .join(Death, col(Death.id_hash) == col(Resident.id_hash))
        .where(col(PaymentLine.applied), *where)
        .order_by(col(PaymentLine.id))))


def refund_paid_items(rt: Runtime, session: Session, *, resident_ids: Sequence[int] = (),
                      order_ids: Sequence[int] = (), at: datetime
                      ) -> tuple[list[QueuedRefund], int]:
    """Queue a refund of the money still paying an item of a deceased resident (of these
    residents, or in these orders) for a coverage year that starts after the death; answer
    the refunds queued and how many such items could not be refunded here."""
    if resident_ids:
        wheres = [[col(BillLine.resident_id).in_(chunk)] for chunk in _chunks(resident_ids)]
    elif order_ids:
        wheres = [[col(Payment.order_id).in_(chunk)] for chunk in _chunks(order_ids)]
    else:
        return [], 0
    found = [row for where in wheres for row in _paid_lines(session, where)]
    if not found:
        return [], 0
    # The order rows serialise every refund of their money, and every payment of it (see
    # refunds.service): lock them, then read what remains refundable.
    orders = sorted({int(row[2]) for row in found})
    session.execute(select(col(Order.id)).where(col(Order.id).in_(orders))
                    .order_by(col(Order.id)).with_for_update()).all()
    starts: dict[int, date] = {}
    lines = []
    for line_id, payment_id, order_id, remaining, year, died in (
            row for chunk in _chunks(orders)
            for row in _paid_lines(session, [col(Payment.order_id).in_(chunk)])):
        start = starts.setdefault(year, year_start(rt, year))
        if not_charged(died, start) and remaining > 0:
            lines.append(_Line(int(line_id), int(payment_id), int(order_id), int(remaining)))
    return queue_refunds(session, lines, at)


def queue_refunds(session: Session, lines: Sequence[_Line],
                  at: datetime) -> tuple[list[QueuedRefund], int]:
    """One refund per payment of ``lines`` (each line: what remains of it), approved by the
    system: through the payment's channel (queued for the worker), or in cash by the agent."""
    by_payment: dict[int, list[_Line]] = {}
    for line in lines:
        by_payment.setdefault(line.payment_id, []).append(line)
    payments = {p.id: p for p in session.scalars(
        select(Payment).where(col(Payment.id).in_(sorted(by_payment))))} if by_payment else {}
    queued: list[QueuedRefund] = []
    skipped = 0
    now = utcnow()
    for payment_id, mine in sorted(by_payment.items()):
        if payments[payment_id].channel == "department":
            continue          # a department bill's: its credit note owes it back instead
        method = method_of(payments[payment_id])
        if method is None:
            skipped += len(mine)
            continue
        amount = sum(line.remaining_fen for line in mine)
        refund_id = session.execute(insert(Refund).values(
            payment_id=payment_id, amount_fen=amount, reason=REASON,
            out_refund_no=new_refund_no(),
            status="queued" if method == "channel" else "awaiting_cash", method=method,
            requested_by=SYSTEM, requested_at=at, approved_by=SYSTEM, approved_at=at,
            created_at=now, updated_at=now).returning(col(Refund.id))).scalar_one()
        session.execute(insert(RefundLine), [
            {"refund_id": refund_id, "payment_line_id": line.id,
             "amount_fen": line.remaining_fen, "applied": True} for line in mine])
        if method == "channel":
            enqueue(session, "refund", {"refund_id": refund_id})
        queued.append(QueuedRefund(int(refund_id or 0), payment_id, mine[0].order_id, amount,
                                   method))
    return queued, skipped


# --------------------------------------------------------------------------- later money
@dataclass(frozen=True)
class _At:
    """A business clock stopped at one instant: the audit record of a payment is dated by
    the payment (``apply_payment`` has no runtime at hand)."""

    instant: datetime

    def now(self) -> datetime:
        return self.instant


def refund_late_payment(session: Session, order_id: int, year: int, payment_id: int,
                        at: datetime) -> int:
    """Money that came for a closed order (``apply_payment``, in its transaction): the items
    it just paid of residents who died before coverage ``year`` starts are refunded, as the
    death list would have; answer the fen queued. ``at``: when the payment was made."""
    start = coverage_year_start(year)
    rows = _paid_lines(session, [col(PaymentLine.payment_id) == payment_id,
                                 col(Death.died_on) < start])
    lines = [_Line(int(i), int(p), int(o), int(r)) for i, p, o, r, _, _ in rows if r > 0]
    if not lines:
        return 0
    queued, _ = queue_refunds(session, lines, at)
    if queued:
        audit.record(session, _At(at), None, "deaths.late_payment_refunded", "order", order_id,
                     details={"refund_ids": [q.refund_id for q in queued],
                              "refund_fen": sum(q.amount_fen for q in queued)})
    return sum(q.amount_fen for q in queued)


def close_for_death(rt: Runtime, order_id: int) -> str:
    """The outbox job: close a pending order of a deceased resident at the channel, then
    locally (as an expired order is closed); money the channel already had for it is applied
    by the query that comes with the close, and refunded here."""
    with unit_of_work(rt.sessions) as s:
        order = s.get(Order, order_id)
        if order is None:
            return "missing"
        live = [a for a in orders_repo.attempts_of(s, order_id)
                if a.status in LIVE_ATTEMPT_STATES]
    if order.status == "pending":
        close_attempts(rt, order, live)   # raises when the channel does not answer: retried
    with unit_of_work(rt.sessions) as s:
        queued, _ = refund_paid_items(rt, s, order_ids=[order_id], at=rt.clock.now())
        status = str(s.scalar(select(col(Order.status)).where(col(Order.id) == order_id)))
        if queued:
            audit.record(s, rt, None, "deaths.paid_before_close_refunded", "order", order_id,
                         details={"refund_ids": [q.refund_id for q in queued],
                                  "refund_fen": sum(q.amount_fen for q in queued)})
    return status
