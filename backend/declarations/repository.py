"""All SQL of the declarations: two set-based reads of the day's rows, one of the ledger.

Rows follow the ledger: a payment's items are in the day its journal entry was posted into
(``journal_entries.business_date``: for money that came for a day already closed, the first
open day after it), and so is a refund. Each row's village and town are where the ledger
put its money: for a payment, the order line's copy (where the resident lived when the
order was made), else the resident registry (a department payment has no order line of
its own); for a refund, the registry, as the refund's posting does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import and_, case, exists, func, literal, or_, select
from sqlalchemy.orm import Session, aliased
from sqlmodel import col

from backend.agents.models import AgentCollection
from backend.departments.models import (
    DepartmentBill,
    DepartmentBillLine,
    DepartmentCreditLine,
    DepartmentCreditNote,
)
from backend.ledger.models import COLLECTED, CONTRIBUTIONS, JournalEntry, LedgerAccount, Posting
from backend.orders.models import (
    Attempt,
    BillLine,
    OrderLine,
    Payment,
    PaymentLine,
    Refund,
    RefundLine,
)
from backend.residents.models import Resident, Village

PAYMENT, REFUND = "payment", "refund"


@dataclass(frozen=True)
class Row:
    """One item paid (amount > 0) or one refund of an item paid (amount < 0)."""

    kind: str                 # payment | refund
    line_id: int              # the payment line, or the refund line
    id_enc: str
    name: str
    village_code: str | None
    village_name: str | None
    insurance: str
    year: int
    tier_yuan: int | None
    amount_fen: int
    channel: str
    reference: str
    at: datetime


def _order_line() -> type[OrderLine]:
    return aliased(OrderLine)  # type: ignore[return-value]


def payment_rows(session: Session, day: date, town: str) -> list[Row]:
    """The items paid whose payment's entry was posted into ``day``, in ``town``.

    A line paid its item when it was posted if it is still the applied one, or a refund
    line says it had been (``refund_lines.applied``: refunding an item unapplies its line).
    Duplicates — money for an item someone else had paid — never were: not declared.
    """
    ol = _order_line()
    home = aliased(Village)
    where = aliased(Village)
    village = func.coalesce(col(ol.village_code), col(Resident.village_code))
    town_of = func.coalesce(col(ol.town_code), col(home.town_code))
    was_applied = or_(col(PaymentLine.applied), exists().where(
        col(RefundLine.payment_line_id) == col(PaymentLine.id), col(RefundLine.applied)),
        _credited_back(col(PaymentLine.payment_id), col(PaymentLine.bill_line_id)))
    # the entry that applied the payment: the one with its ``collected`` postings
    applying = exists().where(col(Posting.entry_id) == col(JournalEntry.id),
                              col(Posting.measure) == COLLECTED)
    stmt = (
        select(col(PaymentLine.id), col(Resident.id_enc), col(Resident.name), village,
               col(where.name), col(BillLine.insurance), col(BillLine.year),
               func.coalesce(col(ol.tier_yuan), case(
                   (col(BillLine.paid_payment_id) == col(Payment.id),
                    col(BillLine.paid_tier_yuan)))),
               col(PaymentLine.amount_fen), col(Payment.channel),
               func.coalesce(col(Attempt.out_trade_no), col(AgentCollection.receipt_no),
                             col(Payment.transaction_id)),
               col(Payment.paid_at))
        .select_from(JournalEntry)
        .join(Payment, col(Payment.id) == col(JournalEntry.payment_id))
        .join(PaymentLine, col(PaymentLine.payment_id) == col(Payment.id))
        .join(BillLine, col(BillLine.id) == col(PaymentLine.bill_line_id))
        .join(Resident, col(Resident.id) == col(BillLine.resident_id))
        .join(home, col(home.code) == col(Resident.village_code))
        .outerjoin(ol, and_(col(ol.order_id) == col(Payment.order_id),
                            col(ol.bill_line_id) == col(PaymentLine.bill_line_id)))
        .outerjoin(where, col(where.code) == village)
        .outerjoin(Attempt, col(Attempt.id) == col(Payment.attempt_id))
        .outerjoin(AgentCollection, col(AgentCollection.payment_id) == col(Payment.id))
        .where(col(JournalEntry.business_date) == day, col(JournalEntry.refund_id).is_(None),
               applying, was_applied, town_of == town)
        .order_by(col(Payment.paid_at), col(PaymentLine.id)))
    return [Row(PAYMENT, cast(int, i), enc, name, v, vname, ins, int(y),
                int(tier) if tier is not None else None, int(fen), ch, str(ref), at)
            for i, enc, name, v, vname, ins, y, tier, fen, ch, ref, at in session.execute(stmt)]


def refund_rows(session: Session, day: date, town: str) -> list[Row]:
    """The refunds of items paid whose entry was posted into ``day``, in ``town``; the
    refunds of duplicates are left out with the duplicates."""
    ol = _order_line()
    stmt = (
        select(col(RefundLine.id), col(Resident.id_enc), col(Resident.name),
               col(Village.code), col(Village.name), col(BillLine.insurance),
               col(BillLine.year), col(ol.tier_yuan), col(RefundLine.amount_fen),
               col(Payment.channel),
               func.coalesce(col(Refund.cash_receipt_no), col(Refund.out_refund_no)),
               func.coalesce(col(Refund.refunded_at), col(JournalEntry.occurred_at)))
        .select_from(JournalEntry)
        .join(Refund, col(Refund.id) == col(JournalEntry.refund_id))
        .join(RefundLine, col(RefundLine.refund_id) == col(Refund.id))
        .join(PaymentLine, col(PaymentLine.id) == col(RefundLine.payment_line_id))
        .join(Payment, col(Payment.id) == col(PaymentLine.payment_id))
        .join(BillLine, col(BillLine.id) == col(PaymentLine.bill_line_id))
        .join(Resident, col(Resident.id) == col(BillLine.resident_id))
        .join(Village, col(Village.code) == col(Resident.village_code))
        .outerjoin(ol, and_(col(ol.order_id) == col(Payment.order_id),
                            col(ol.bill_line_id) == col(PaymentLine.bill_line_id)))
        .where(col(JournalEntry.business_date) == day, col(JournalEntry.kind) == "refund",
               col(RefundLine.applied), col(Village.town_code) == town)
        .order_by(col(Refund.refunded_at), col(RefundLine.id)))
    return [Row(REFUND, cast(int, i), enc, name, v, vname, ins, int(y),
                int(tier) if tier is not None else None, -int(fen), ch, str(ref), at)
            for i, enc, name, v, vname, ins, y, tier, fen, ch, ref, at in session.execute(stmt)]


def _credited_back(payment_id: Any, bill_line_id: Any) -> Any:
    """Whether a department credit note gave back what the bill's payment paid for this
    item: like a refund, it unapplied the payment line without a refund line."""
    return exists().where(
        col(DepartmentCreditLine.department_bill_line_id) == col(DepartmentBillLine.id),
        col(DepartmentBillLine.bill_id) == col(DepartmentBill.id),
        col(DepartmentBill.payment_id) == payment_id,
        col(DepartmentBillLine.bill_line_id) == bill_line_id)


def credit_rows(session: Session, day: date, town: str) -> list[Row]:
    """The items paid by a department bill that a credit note gave back (冲减: the money is
    owed back to the department), whose ``department_credit`` entry was posted into ``day``,
    in the bill's town (where the ledger put it), as refunds of items paid. The credit note
    names its entry (``entry_id``): there is no refund row here.
    Lines a credit note released before they were paid moved no contributions: left out."""
    paid = aliased(PaymentLine)
    stmt = (
        select(col(DepartmentCreditLine.id), col(Resident.id_enc), col(Resident.name),
               col(Village.code), col(Village.name), col(DepartmentBillLine.insurance),
               col(DepartmentBill.year), col(DepartmentBillLine.tier_yuan),
               col(DepartmentCreditLine.refund_fen), literal("department"),
               col(DepartmentCreditNote.credit_no), col(DepartmentCreditNote.issued_at))
        .select_from(JournalEntry)
        .join(DepartmentCreditNote, col(DepartmentCreditNote.entry_id) == col(JournalEntry.id))
        .join(DepartmentCreditLine,
              col(DepartmentCreditLine.credit_note_id) == col(DepartmentCreditNote.id))
        .join(DepartmentBillLine,
              col(DepartmentBillLine.id) == col(DepartmentCreditLine.department_bill_line_id))
        .join(DepartmentBill, col(DepartmentBill.id) == col(DepartmentBillLine.bill_id))
        .join(paid, and_(col(paid.payment_id) == col(DepartmentBill.payment_id),
                         col(paid.bill_line_id) == col(DepartmentBillLine.bill_line_id)))
        .join(Resident, col(Resident.id) == col(DepartmentBillLine.resident_id))
        .outerjoin(Village, col(Village.code) == col(DepartmentBillLine.village_code))
        .where(col(JournalEntry.business_date) == day,
               col(JournalEntry.kind) == "department_credit",
               col(DepartmentBill.town_code) == town)
        .order_by(col(DepartmentCreditNote.issued_at), col(DepartmentCreditLine.id)))
    return [Row(REFUND, cast(int, i), enc, name, v, vname, ins, int(y),
                int(tier) if tier is not None else None, -int(fen), ch, str(ref), at)
            for i, enc, name, v, vname, ins, y, tier, fen, ch, ref, at in session.execute(stmt)]


@dataclass(frozen=True)
class LedgerSide:
    """What the ledger holds for the town's day: the ``collected`` measure, and the
    movements of the contributions accounts (per insurance and year) — credited by each
    item paid, debited by each refund of one; duplicates and their refunds never touch them."""

    collected_fen: int
    credited: dict[tuple[str, int], int]     # (insurance, year) -> fen paid (> 0)
    debited: dict[tuple[str, int], int]      # (insurance, year) -> fen refunded (> 0)


def ledger_side(session: Session, day: date, town: str) -> LedgerSide:
    collected = session.scalar(
        select(func.coalesce(func.sum(col(Posting.amount_fen)), 0))
        .where(col(Posting.business_date) == day, col(Posting.town_code) == town,
               col(Posting.measure) == COLLECTED))
    credit = func.sum(case((col(Posting.amount_fen) < 0, -col(Posting.amount_fen)),
                           else_=literal(0)))
    debit = func.sum(case((col(Posting.amount_fen) > 0, col(Posting.amount_fen)),
                          else_=literal(0)))
    rows = session.execute(
        select(col(LedgerAccount.code), credit, debit)
        .join(LedgerAccount, col(LedgerAccount.id) == col(Posting.account_id))
        .where(col(Posting.business_date) == day, col(Posting.town_code) == town,
               col(LedgerAccount.kind) == CONTRIBUTIONS)
        .group_by(col(LedgerAccount.code)))
    credited: dict[tuple[str, int], int] = {}
    debited: dict[tuple[str, int], int] = {}
    for code, cr, dr in rows:
        _, insurance, year = str(code).split(":")      # contributions:{insurance}:{year}
        credited[(insurance, int(year))] = int(cr or 0)
        debited[(insurance, int(year))] = int(dr or 0)
    return LedgerSide(int(collected or 0), credited, debited)
