"""Payment confirmed (支付确认): the one function that applies money that came in.

A channel notification, an active query and an agent's cash or POS collection all end in
:func:`apply_payment`, so money is applied the same way whoever saw it first: each bill
line marked paid at most once, any surplus kept as money received and queued for refund,
the order moved through its transition table, and one balanced ledger entry — all in the
caller's single transaction.

This is the hot path of every notification, so it speaks SQL (Core) rather than the ORM
and keeps round trips few: one statement locks the attempt with its order, the payment is
inserted with ``ON CONFLICT DO NOTHING`` (a repeat costs no extra look-up), and all bill
lines of an order are marked paid by one ``UPDATE … FROM order_lines``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.clock import business_date
from backend.db import utcnow
from backend.ledger import service as ledger
from backend.ledger.models import COLLECTED
from backend.orders import repository as repo
from backend.orders.models import Attempt, BillLine, Order, OrderLine, Payment, PaymentLine, Refund
from backend.orders.states import ATTEMPT_TRANSITIONS, ORDER_TRANSITIONS
from backend.outbox.service import enqueue

# Orders that may have several live attempts at once (a QR any wallet opens; an agent's
# refreshed code): only these need their other trades closed after a payment.
MULTI_ATTEMPT_CHANNELS = ("aggregate_qr",)


@dataclass(frozen=True)
class ChannelConfirmation:
    channel: str
    out_trade_no: str
    transaction_id: str
    amount_fen: int
    paid_at: datetime
    source: str                      # notification | query


@dataclass(frozen=True)
class OrderFacts:
    id: int
    order_no: str
    status: str
    year: int


@dataclass(frozen=True)
class PaymentFacts:
    id: int
    channel: str
    transaction_id: str
    amount_fen: int
    paid_at: datetime
    business_date: date


class UnknownTrade(Exception):
    """No attempt has this out_trade_no (yet: the order may not be committed)."""


class AmountMismatch(Exception):
    pass


class AlreadyPaid(Exception):
    """Money an agent is holding in hand for an item someone else paid: refuse, not refund."""


@dataclass(frozen=True)
class Applied:
    outcome: str                     # applied | duplicate | partly_duplicate | repeat
    order_no: str
    refund_queued_fen: int = 0
    payment_id: int | None = None


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


# The hot path's statements, built once: building and cache-keying a statement per call
# costs more Python than running it costs PostgreSQL.
_LOCK_ATTEMPT = (
    select(col(Attempt.id), col(Attempt.amount_fen), col(Order.id), col(Order.order_no),
           col(Order.status), col(Order.year), col(Order.channel), col(Order.payer_role))
    .join(Order, col(Order.id) == col(Attempt.order_id))
    .where(col(Attempt.out_trade_no) == bindparam("no"),
           col(Attempt.channel) == bindparam("ch"))
    .with_for_update())
_MARK_LINES_PAID = (
    update(BillLine)
    .where(col(BillLine.id) == col(OrderLine.bill_line_id),
           col(OrderLine.order_id) == bindparam("order_id"), col(BillLine.status) == "unpaid")
    .values(status="paid", paid_payment_id=bindparam("payment_id"),
            paid_at=bindparam("paid_at"), paid_tier_yuan=OrderLine.tier_yuan,
            paid_fen=OrderLine.amount_fen))
# PostgreSQL returns the joined order line's columns too; SQLite's RETURNING sees only the
# updated table, so there the lines are read after.
_MARK_LINES_PAID_PG = _MARK_LINES_PAID.returning(
    col(BillLine.id), col(OrderLine.insurance), col(OrderLine.amount_fen),
    col(OrderLine.village_code), col(OrderLine.town_code))
_MARK_LINES_PAID_SQLITE = _MARK_LINES_PAID.returning(col(BillLine.id))
_ORDER_LINES = (
    select(col(OrderLine.bill_line_id), col(OrderLine.insurance), col(OrderLine.amount_fen),
           col(OrderLine.village_code), col(OrderLine.town_code))
    .where(col(OrderLine.order_id) == bindparam("order_id"))
    .order_by(col(OrderLine.bill_line_id)))
_INSERT_PAYMENT_LINES = insert(PaymentLine)
_INSERT_PAYMENT: dict[str, Any] = {}


def _insert_payment(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect not in _INSERT_PAYMENT:
        ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
        _INSERT_PAYMENT[dialect] = (
            ins(Payment).values({c: bindparam(c) for c in (
                "attempt_id", "order_id", "channel", "transaction_id", "amount_fen", "paid_at",
                "business_date", "source", "refund_queued_fen", "created_at")})
            .on_conflict_do_nothing(index_elements=["channel", "transaction_id"])
            .returning(col(Payment.id)))
    return _INSERT_PAYMENT[dialect]


def confirm_channel_payment(session: Session, c: ChannelConfirmation) -> Applied:
    # Locks the attempt and its order together: every confirmation of one trade, and of
    # the other trades of the same order, queues here.
    row = session.execute(_LOCK_ATTEMPT, {"no": c.out_trade_no, "ch": c.channel}).first()
    if row is None:
        raise UnknownTrade(c.out_trade_no)
    attempt_id, attempt_fen, order_id, order_no, order_status, year, order_channel, role = row
    assert attempt_id is not None and order_id is not None
    if c.amount_fen != attempt_fen:
        raise AmountMismatch(f"the channel reports {c.amount_fen} fen, the attempt is for "
                             f"{attempt_fen} fen")
    day = business_date(c.paid_at)
    payment_id = session.execute(_insert_payment(session), {
        "attempt_id": attempt_id, "order_id": order_id, "channel": c.channel,
        "transaction_id": c.transaction_id, "amount_fen": c.amount_fen, "paid_at": c.paid_at,
        "business_date": day, "source": c.source, "refund_queued_fen": 0,
        "created_at": utcnow()}).scalar()
    if payment_id is None:
        return Applied("repeat", order_no)
    repo.move_attempt(session, attempt_id, ATTEMPT_TRANSITIONS["paid"], "paid",
                      transaction_id=c.transaction_id, paid_at=c.paid_at)
    if (order_channel in MULTI_ATTEMPT_CHANNELS or role == "agent") and \
            repo.has_other_live_attempts(session, order_id, attempt_id):
        # Two wallets opened one aggregate QR: close the other trade before it, too, is
        # paid (if it already was, closing finds that and the surplus is refunded).
        enqueue(session, "close_siblings", {"order_id": order_id, "paid_attempt": attempt_id})
    return apply_payment(
        session, OrderFacts(order_id, order_no, order_status, year),
        PaymentFacts(payment_id, c.channel, c.transaction_id, c.amount_fen, c.paid_at, day),
        debit=ledger.channel_clearing(c.channel), entry_kind="channel_payment")


def apply_payment(session: Session, order: OrderFacts, payment: PaymentFacts, *,
                  debit: ledger.Account, entry_kind: str, refundable: bool = True) -> Applied:
    """Mark the order's bill lines paid by ``payment`` and post the ledger entry."""
    # One statement marks every line that is still unpaid and says what they were; the
    # partial unique index on applied payment lines is the backstop if anything ever got
    # past it. Only when some line was paid already are all the lines read.
    params = {"order_id": order.id, "payment_id": payment.id, "paid_at": payment.paid_at}
    if session.get_bind().dialect.name == "postgresql":
        won = session.execute(_MARK_LINES_PAID_PG, params).all()
        won_ids = {line_id for line_id, *_ in won}
        complete = sum(fen for _, _, fen, _, _ in won) == payment.amount_fen
        lines = sorted(won) if complete else []
    else:
        won_ids = set(session.execute(_MARK_LINES_PAID_SQLITE, params).scalars())
        lines = []
    if not lines:
        lines = list(session.execute(_ORDER_LINES, {"order_id": order.id}).all())
    duplicate_fen = sum(fen for line_id, _, fen, _, _ in lines if line_id not in won_ids)
    if duplicate_fen and not refundable:
        raise AlreadyPaid(order.order_no)
    session.execute(_INSERT_PAYMENT_LINES, [
        {"payment_id": payment.id, "bill_line_id": line_id, "amount_fen": fen,
         "applied": line_id in won_ids} for line_id, _, fen, _, _ in lines])
    legs: list[ledger.Leg] = []
    for line_id, insurance, fen, village, town in lines:
        where = {"village_code": village, "town_code": town, "channel": payment.channel}
        legs.append(ledger.Leg(debit, fen, measure=COLLECTED, **where))
        credit = (ledger.contributions(insurance, order.year) if line_id in won_ids
                  else ledger.REFUNDS)
        legs.append(ledger.Leg(credit, -fen, **where))
    reason = f"order {order.order_no} paid by {payment.channel} {payment.transaction_id}"
    if duplicate_fen:
        session.execute(update(Payment).where(col(Payment.id) == payment.id)
                        .values(refund_queued_fen=duplicate_fen))
        refund_id = session.execute(insert(Refund).values(
            payment_id=payment.id, amount_fen=duplicate_fen, reason="duplicate",
            out_refund_no=new_refund_no(), status="queued", created_at=utcnow(),
            updated_at=utcnow()).returning(col(Refund.id))).scalar_one()
        enqueue(session, "refund", {"refund_id": refund_id})
        reason += f"; {duplicate_fen} fen already paid by others, to refund"
    ledger.post_entry(session, kind=entry_kind, reason=reason,
                      business_date=payment.business_date, occurred_at=payment.paid_at,
                      legs=legs, payment_id=payment.id)
    if order.status in ORDER_TRANSITIONS["paid"]:
        repo.move_order(session, order.id, ORDER_TRANSITIONS["paid"], "paid",
                        paid_at=payment.paid_at, channel_transaction_id=payment.transaction_id)
    if duplicate_fen == 0:
        outcome = "applied"
    elif duplicate_fen == payment.amount_fen:
        outcome = "duplicate"
    else:
        outcome = "partly_duplicate"
    return Applied(outcome, order.order_no, duplicate_fen, payment.id)


def new_refund_no() -> str:
    return "RF" + secrets.token_hex(12).upper()
