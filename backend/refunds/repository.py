"""All SQL of the refunds domain."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.auth.models import StaffUser
from backend.orders.models import (
    REFUND_RELEASED,
    BillLine,
    Order,
    OrderLine,
    Payment,
    PaymentLine,
    Refund,
    RefundLine,
)


@dataclass(frozen=True)
class PaidLine:
    """A payment line of an order, with what is not yet given back (nor being given back)."""

    id: int
    payment_id: int
    bill_line_id: int
    amount_fen: int
    applied: bool
    remaining_fen: int


def payments_of(session: Session, order_id: int, *, lock: bool = False) -> list[Payment]:
    stmt = select(Payment).where(col(Payment.order_id) == order_id).order_by(col(Payment.id))
    if lock:
        stmt = stmt.with_for_update()
    return list(session.scalars(stmt))


def held_fen() -> Any:
    """A correlated subquery: the money of a payment line (``payment_lines``, in the outer
    query) that refunds not failed or rejected hold — no longer refundable."""
    return (select(func.coalesce(func.sum(col(RefundLine.amount_fen)), 0))
            .join(Refund, col(Refund.id) == col(RefundLine.refund_id))
            .where(col(RefundLine.payment_line_id) == col(PaymentLine.id),
                   col(Refund.status).not_in(REFUND_RELEASED))
            .correlate(PaymentLine).scalar_subquery())


def paid_lines(session: Session, order_id: int) -> list[PaidLine]:
    """Every payment line of the order's payments, with what remains refundable of it."""
    rows = session.execute(
        select(col(PaymentLine.id), col(PaymentLine.payment_id), col(PaymentLine.bill_line_id),
               col(PaymentLine.amount_fen), col(PaymentLine.applied), held_fen())
        .join(Payment, col(Payment.id) == col(PaymentLine.payment_id))
        .where(col(Payment.order_id) == order_id)
        .order_by(col(PaymentLine.id)))
    return [PaidLine(int(i), int(p), int(b), int(a), bool(ap), int(a) - int(h or 0))
            for i, p, b, a, ap, h in rows]


def refund_for_update(session: Session, refund_id: int) -> Refund | None:
    return session.scalar(select(Refund).where(col(Refund.id) == refund_id).with_for_update())


def refund_by_cash_receipt(session: Session, agent_id: int, receipt_no: str) -> int | None:
    return session.scalar(select(col(Refund.id)).where(col(Refund.cash_agent_id) == agent_id,
                                                       col(Refund.cash_receipt_no) == receipt_no))


def order_of_refund(session: Session, refund: Refund) -> Order:
    order = session.scalar(select(Order).join(Payment, col(Payment.order_id) == col(Order.id))
                           .where(col(Payment.id) == refund.payment_id))
    assert order is not None   # a refund is of a payment, a payment of an order
    return order


def order_villages(session: Session, order_id: int) -> set[str]:
    return {v for (v,) in session.execute(
        select(col(OrderLine.village_code)).where(col(OrderLine.order_id) == order_id))
        if v is not None}


def _in_scope(town: str | None, village: str | None) -> list[Any]:
    """Refunds of orders with an item in the town (or village)."""
    where: list[Any] = []
    if town is not None:
        where.append(exists().where(col(OrderLine.order_id) == col(Payment.order_id),
                                    col(OrderLine.town_code) == town))
    if village is not None:
        where.append(exists().where(col(OrderLine.order_id) == col(Payment.order_id),
                                    col(OrderLine.village_code) == village))
    return where


def list_refunds(session: Session, *, status: str | None, town: str | None,
                 village: str | None, limit: int, before_id: int | None) -> list[Refund]:
    stmt = (select(Refund).join(Payment, col(Payment.id) == col(Refund.payment_id))
            .where(*_in_scope(town, village)).order_by(col(Refund.id).desc()).limit(limit))
    if status is not None:
        stmt = stmt.where(col(Refund.status) == status)
    if before_id is not None:
        stmt = stmt.where(col(Refund.id) < before_id)
    return list(session.scalars(stmt))


def refund_in_scope(session: Session, refund_id: int, *, town: str | None,
                    village: str | None) -> Refund | None:
    return session.scalar(select(Refund).join(Payment, col(Payment.id) == col(Refund.payment_id))
                          .where(col(Refund.id) == refund_id, *_in_scope(town, village)))


def refund_facts(session: Session, refund_ids: Sequence[int]) -> tuple[
        dict[int, tuple[str, str]], dict[int, list[tuple[int, str, int]]]]:
    """For each refund: (order_no, payment channel), and its lines as (resident id,
    insurance, fen)."""
    heads = {int(r or 0): (str(no), str(ch)) for r, no, ch in session.execute(
        select(col(Refund.id), col(Order.order_no), col(Payment.channel))
        .join(Payment, col(Payment.id) == col(Refund.payment_id))
        .join(Order, col(Order.id) == col(Payment.order_id))
        .where(col(Refund.id).in_(refund_ids)))}
    lines: dict[int, list[tuple[int, str, int]]] = {}
    for r, resident, insurance, fen in session.execute(
            select(col(RefundLine.refund_id), col(BillLine.resident_id), col(BillLine.insurance),
                   col(RefundLine.amount_fen))
            .join(PaymentLine, col(PaymentLine.id) == col(RefundLine.payment_line_id))
            .join(BillLine, col(BillLine.id) == col(PaymentLine.bill_line_id))
            .where(col(RefundLine.refund_id).in_(refund_ids)).order_by(col(RefundLine.id))):
        lines.setdefault(int(r or 0), []).append((int(resident), str(insurance), int(fen)))
    return heads, lines


def usernames(session: Session, staff_ids: Sequence[int]) -> dict[int, str]:
    if not staff_ids:
        return {}
    return {int(i or 0): str(u) for i, u in session.execute(
        select(col(StaffUser.id), col(StaffUser.username))
        .where(col(StaffUser.id).in_(staff_ids)))}
