"""All SQL of the orders domain."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.db import utcnow
from backend.orders.models import Attempt, BillLine, Order, OrderLine, Payment, Refund
from backend.sql import Statement, Tx

# Making an order is a hot path (bench/README.md, "Order creation"): its statements are SQL
# text run at the driver in the session's transaction (backend/sql.py), as the payment
# path's are; through Core or the ORM each was built, cache-keyed (a multi-row VALUES is
# not cached: compiled anew every time) and, for the inserts, flushed object by object.
_BILL_LINES: dict[int, Statement] = {}


def _bill_lines_statement(n: int) -> Statement:
    """Get or create ``n`` bill lines; the no-op ``DO UPDATE`` makes an existing row come
    back, locked, just like a new one."""
    stmt = _BILL_LINES.get(n)
    if stmt is None:
        values = ", ".join(f"(:r{k}, :year, :i{k}, 'unpaid', :now)" for k in range(n))
        stmt = Statement(
            f"""INSERT INTO bill_lines (resident_id, year, insurance, status, created_at)
                VALUES {values}
                ON CONFLICT (resident_id, year, insurance)
                DO UPDATE SET status = bill_lines.status
                RETURNING id, resident_id, insurance, status""", prepare=n <= 4)
        if n <= 16:
            _BILL_LINES[n] = stmt
    return stmt


def bill_lines_for(session: Session, keys: Sequence[tuple[int, int, str]]) -> dict[
        tuple[int, str], BillLine]:
    """Get or create the bill lines for (resident, year, insurance), locked for this tx.

    One statement; rows are taken in (resident, insurance) order, the order every writer of
    bill lines takes them in (see ``departments.service._MAKE_LINES``).
    """
    if not keys:
        return {}
    year = keys[0][1]
    assert all(y == year for _, y, _ in keys)
    ordered = sorted({(r, i) for r, _, i in keys})
    params: dict[str, Any] = {"year": year, "now": utcnow()}
    for k, (r, i) in enumerate(ordered):
        params[f"r{k}"], params[f"i{k}"] = r, i
    rows = Tx(session).all(_bill_lines_statement(len(ordered)), **params)
    return {(r, i): BillLine(id=bid, resident_id=r, year=year, insurance=i, status=st)
            for bid, r, i, st in rows}


_LIVE_ELSEWHERE = """SELECT ol.bill_line_id FROM order_lines ol
    JOIN orders o ON o.id = ol.order_id
    WHERE ol.bill_line_id IN ({ids}) AND o.status = 'pending' AND o.expires_at > :now
      AND o.payer_sub <> :payer"""
# the ids as one text parameter "1,2,3": one statement text however many there are
_LIVE_ORDERS_OF_OTHERS = Statement(
    _LIVE_ELSEWHERE.format(ids="SELECT value FROM json_each('[' || :ids || ']')"),
    postgresql=_LIVE_ELSEWHERE.replace("IN ({ids})",
                                       "= ANY(string_to_array(:ids, ',')::bigint[])"))


def live_orders_of_others(session: Session, bill_line_ids: Sequence[int], payer_sub: str,
                          now: datetime) -> set[int]:
    """Bill lines that sit in someone else's unexpired pending order."""
    if not bill_line_ids:
        return set()
    rows = Tx(session).all(_LIVE_ORDERS_OF_OTHERS, ids=",".join(str(int(b))
                                                                for b in bill_line_ids),
                           now=now, payer=payer_sub)
    return {int(r) for (r,) in rows}


_INSERT_ORDER = Statement(
    """INSERT INTO orders (order_no, payer_sub, payer_role, year, channel, status, amount_fen,
           expires_at, qr_token, village_code, created_at, updated_at)
       VALUES (:order_no, :payer_sub, :payer_role, :year, :channel, :status, :amount_fen,
           :expires_at, :qr_token, :village_code, :created_at, :updated_at)
       RETURNING id""")
_ORDER_LINE_COLUMNS = ("order_id", "bill_line_id", "resident_id", "insurance", "tier_yuan",
                       "amount_fen", "village_code", "town_code")
_INSERT_ATTEMPT = Statement(
    """INSERT INTO attempts (order_id, channel, kind, out_trade_no, amount_fen, status,
           expires_at, queries, created_at, updated_at)
       VALUES (:order_id, :channel, :kind, :out_trade_no, :amount_fen, :status, :expires_at,
           :queries, :created_at, :updated_at)
       RETURNING id""")


def insert_order(session: Session, order: Order, lines: Sequence[OrderLine]) -> None:
    """Write a new order and its lines (two statements); sets their ids. The objects stay
    outside the session: what the caller reads from them is what was written."""
    tx = Tx(session)
    now = utcnow()
    order.created_at = order.updated_at = now
    row = tx.one(_INSERT_ORDER, order_no=order.order_no, payer_sub=order.payer_sub,
                 payer_role=order.payer_role, year=order.year, channel=order.channel,
                 status=order.status, amount_fen=order.amount_fen,
                 expires_at=order.expires_at, qr_token=order.qr_token,
                 village_code=order.village_code, created_at=now, updated_at=now)
    assert row is not None
    order.id = int(row[0])
    for line in lines:
        line.order_id = order.id
    tx.insert_rows("order_lines", _ORDER_LINE_COLUMNS,
                   [[getattr(line, c) for c in _ORDER_LINE_COLUMNS] for line in lines])


def insert_attempt(session: Session, attempt: Attempt) -> None:
    """Write a new attempt (one statement); sets its id."""
    now = utcnow()
    attempt.created_at = attempt.updated_at = now
    row = Tx(session).one(_INSERT_ATTEMPT, order_id=attempt.order_id, channel=attempt.channel,
                          kind=attempt.kind, out_trade_no=attempt.out_trade_no,
                          amount_fen=attempt.amount_fen, status=attempt.status,
                          expires_at=attempt.expires_at, queries=attempt.queries,
                          created_at=now, updated_at=now)
    assert row is not None
    attempt.id = int(row[0])


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
