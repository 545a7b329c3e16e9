"""All SQL of the orders domain."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.db import utcnow
from backend.orders.models import Attempt, BillLine, Order, OrderLine, Payment, Refund


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def bill_lines_for(session: Session, keys: Sequence[tuple[int, int, str]]) -> dict[
        tuple[int, str], BillLine]:
    """Get or create the bill lines for (resident, year, insurance), locked for this tx.

    One statement: the no-op ``DO UPDATE`` makes an existing row come back, locked, just
    like a new one.
    """
    if not keys:
        return {}
    values = sorted(({"resident_id": r, "year": y, "insurance": i, "status": "unpaid",
                      "created_at": utcnow()} for r, y, i in keys),
                    key=lambda v: (v["resident_id"], v["insurance"]))
    stmt = _insert(session)(BillLine).values(values)
    stmt = stmt.on_conflict_do_update(index_elements=["resident_id", "year", "insurance"],
                                      set_={"status": col(BillLine.status)})
    rows = session.execute(stmt.returning(col(BillLine.id), col(BillLine.resident_id),
                                          col(BillLine.insurance), col(BillLine.status)))
    return {(r, i): BillLine(id=bid, resident_id=r, year=keys[0][1], insurance=i, status=st)
            for bid, r, i, st in rows}


def live_orders_of_others(session: Session, bill_line_ids: Sequence[int], payer_sub: str,
                          now: datetime) -> set[int]:
    """Bill lines that sit in someone else's unexpired pending order."""
    rows = session.execute(
        select(col(OrderLine.bill_line_id))
        .join(Order, col(Order.id) == col(OrderLine.order_id))
        .where(col(OrderLine.bill_line_id).in_(bill_line_ids), col(Order.status) == "pending",
               col(Order.expires_at) > now, col(Order.payer_sub) != payer_sub))
    return {r for (r,) in rows}


def order_by_no(session: Session, order_no: str, *, lock: bool = False) -> Order | None:
    stmt = select(Order).where(col(Order.order_no) == order_no)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def order_by_qr_token(session: Session, token: str) -> Order | None:
    return session.scalar(select(Order).where(col(Order.qr_token) == token))


def order_lines(session: Session, order_id: int) -> list[OrderLine]:
    return list(session.scalars(select(OrderLine).where(col(OrderLine.order_id) == order_id)
                                .order_by(col(OrderLine.id))))


def attempts_of(session: Session, order_id: int) -> list[Attempt]:
    return list(session.scalars(select(Attempt).where(col(Attempt.order_id) == order_id)
                                .order_by(col(Attempt.id))))


def attempt_count(session: Session, order_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(Attempt)
                              .where(col(Attempt.order_id) == order_id)) or 0)


def attempt_by_out_trade_no(session: Session, channel: str, out_trade_no: str, *,
                            lock: bool = False) -> Attempt | None:
    stmt = select(Attempt).where(col(Attempt.out_trade_no) == out_trade_no,
                                 col(Attempt.channel) == channel)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def move_attempt(session: Session, attempt_id: int, allowed_from: Sequence[str], to: str,
                 **values: object) -> bool:
    """The attempt's transition table, applied: UPDATE … WHERE state = ANY(allowed)."""
    result = cast(CursorResult[Any], session.execute(
        update(Attempt)
        .where(col(Attempt.id) == attempt_id, col(Attempt.status).in_(allowed_from))
        .values(status=to, **values)))
    return bool(result.rowcount)


def move_order(session: Session, order_id: int, allowed_from: Sequence[str], to: str,
               **values: object) -> bool:
    result = cast(CursorResult[Any], session.execute(
        update(Order)
        .where(col(Order.id) == order_id, col(Order.status).in_(allowed_from))
        .values(status=to, **values)))
    return bool(result.rowcount)


def refunds_of(session: Session, order_id: int) -> list[Refund]:
    """The refunds of the money paid on an order (duplicates, and those finance approves)."""
    return list(session.scalars(
        select(Refund).join(Payment, col(Payment.id) == col(Refund.payment_id))
        .where(col(Payment.order_id) == order_id).order_by(col(Refund.id))))


def item_states(session: Session, resident_id: int, year: int, now: datetime) -> dict[str, str]:
    """insurance → "paid", "government_paid" (a department bill claims or paid it) or
    "pending" (in an unexpired pending order) for one resident."""
    lines = session.execute(
        select(col(BillLine.insurance), col(BillLine.status), col(BillLine.claim_bill_id))
        .where(col(BillLine.resident_id) == resident_id, col(BillLine.year) == year))
    pending = session.execute(
        select(col(OrderLine.insurance)).join(Order, col(Order.id) == col(OrderLine.order_id))
        .where(col(OrderLine.resident_id) == resident_id, col(Order.year) == year,
               col(Order.status) == "pending", col(Order.expires_at) > now))
    return line_states(((i, st, c) for i, st, c in lines), (i for (i,) in pending))


def line_states(lines: Iterable[tuple[str, str, int | None]],
                pending: Iterable[str]) -> dict[str, str]:
    """``item_states`` from a resident's bill lines of the year ((insurance, status,
    claim_bill_id)) and the insurances of its unexpired pending orders' lines."""
    states: dict[str, str] = {}
    for insurance, status, claim in lines:
        if claim is not None and status in ("claimed", "paid"):
            states[insurance] = "government_paid"
        elif status == "paid":
            states[insurance] = "paid"
    for insurance in pending:
        states.setdefault(insurance, "pending")
    return states


def department_items(session: Session, resident_ids: Any, year: int
                     ) -> dict[tuple[int, str], tuple[str, str, str]]:
    """(resident, insurance) → (department, bill_no, bill status) for every item a
    department bill claims or has paid: what the lookup and the roster show."""
    from backend.departments.models import DepartmentBill

    out: dict[tuple[int, str], tuple[str, str, str]] = {}
    for rid, insurance, department, bill_no, status in session.execute(
            select(col(BillLine.resident_id), col(BillLine.insurance),
                   col(DepartmentBill.department), col(DepartmentBill.bill_no),
                   col(DepartmentBill.status))
            .join(DepartmentBill, col(DepartmentBill.id) == col(BillLine.claim_bill_id))
            .where(col(BillLine.resident_id).in_(resident_ids), col(BillLine.year) == year,
                   col(BillLine.status).in_(("claimed", "paid")))):
        out[(int(rid), str(insurance))] = (str(department), str(bill_no), str(status))
    return out
