"""Payment confirmed (支付确认): the one function that applies money that came in.

A channel notification, an active query and an agent's cash or POS collection all end in
:func:`apply_payment`, so money is applied the same way whoever saw it first: each bill
line marked paid at most once, any surplus kept as money received and queued for refund,
the order moved through its transition table, and one balanced ledger entry — all in the
caller's single transaction.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.clock import business_date
from backend.ledger import service as ledger
from backend.ledger.models import COLLECTED
from backend.orders import repository as repo
from backend.orders.models import BillLine, Order, OrderLine, Payment, PaymentLine, Refund
from backend.orders.states import ATTEMPT_TRANSITIONS, ORDER_TRANSITIONS
from backend.outbox.service import enqueue
from backend.residents.models import Resident, Village


@dataclass(frozen=True)
class ChannelConfirmation:
    channel: str
    out_trade_no: str
    transaction_id: str
    amount_fen: int
    paid_at: datetime
    source: str                      # notification | query


class UnknownTrade(Exception):
    """No attempt has this out_trade_no (yet: the order may not be committed)."""


class AmountMismatch(Exception):
    pass


@dataclass(frozen=True)
class Applied:
    outcome: str                     # applied | duplicate | partly_duplicate | repeat
    order_no: str
    refund_queued_fen: int = 0
    payment_id: int | None = None


def confirm_channel_payment(session: Session, c: ChannelConfirmation) -> Applied:
    attempt = repo.attempt_by_out_trade_no(session, c.channel, c.out_trade_no, lock=True)
    if attempt is None or attempt.id is None:
        raise UnknownTrade(c.out_trade_no)
    if c.amount_fen != attempt.amount_fen:
        raise AmountMismatch(f"the channel reports {c.amount_fen} fen, the attempt is for "
                             f"{attempt.amount_fen} fen")
    order = session.get(Order, attempt.order_id, with_for_update=True)
    assert order is not None and order.id is not None
    seen = session.scalar(select(Payment.id).where(Payment.channel == c.channel,
                                                   Payment.transaction_id == c.transaction_id))
    if seen is not None:
        return Applied("repeat", order.order_no, payment_id=seen)
    payment = Payment(attempt_id=attempt.id, order_id=order.id, channel=c.channel,
                      transaction_id=c.transaction_id, amount_fen=c.amount_fen,
                      paid_at=c.paid_at, business_date=business_date(c.paid_at), source=c.source)
    session.add(payment)
    session.flush()
    repo.move_attempt(session, attempt.id, ATTEMPT_TRANSITIONS["paid"], "paid",
                      transaction_id=c.transaction_id, paid_at=c.paid_at)
    if repo.has_other_live_attempts(session, order.id, attempt.id):
        # An aggregate QR scanned by two wallets: close the other trade before it, too, is
        # paid (if it already was, closing finds that and the surplus is refunded).
        enqueue(session, "close_siblings", {"order_id": order.id, "paid_attempt": attempt.id})
    return apply_payment(session, order, payment, debit=ledger.channel_clearing(c.channel),
                         entry_kind="channel_payment")


def apply_payment(session: Session, order: Order, payment: Payment, *, debit: ledger.Account,
                  entry_kind: str, refundable: bool = True) -> Applied:
    """Mark the order's bill lines paid by ``payment`` and post the ledger entry."""
    assert order.id is not None and payment.id is not None
    lines = session.execute(
        select(OrderLine, Village.code, Village.town_code)
        .join(Resident, Resident.id == OrderLine.resident_id)
        .join(Village, Village.code == Resident.village_code)
        .where(OrderLine.order_id == order.id)
        .order_by(OrderLine.bill_line_id)).all()   # bill lines are locked in id order, always
    legs: list[ledger.Leg] = []
    duplicate_fen = 0
    for line, village, town in lines:
        # The conditional UPDATE is the race's referee; the partial unique index on applied
        # payment lines is the backstop if anything ever got past it.
        won = session.execute(
            update(BillLine).where(BillLine.id == line.bill_line_id, BillLine.status == "unpaid")
            .values(status="paid", paid_payment_id=payment.id, paid_tier_yuan=line.tier_yuan,
                    paid_fen=line.amount_fen, paid_at=payment.paid_at)).rowcount
        session.add(PaymentLine(payment_id=payment.id, bill_line_id=line.bill_line_id,
                                amount_fen=line.amount_fen, applied=bool(won)))
        where = {"village_code": village, "town_code": town, "channel": payment.channel}
        legs.append(ledger.Leg(debit, line.amount_fen, measure=COLLECTED, **where))
        if won:
            legs.append(ledger.Leg(ledger.contributions(line.insurance, order.year),
                                   -line.amount_fen, **where))
        else:
            duplicate_fen += line.amount_fen
            legs.append(ledger.Leg(ledger.REFUNDS, -line.amount_fen, **where))
    if duplicate_fen and not refundable:
        raise AlreadyPaid(order.order_no)
    reason = f"order {order.order_no} paid by {payment.channel} {payment.transaction_id}"
    if duplicate_fen:
        payment.refund_queued_fen = duplicate_fen
        refund = Refund(payment_id=payment.id, amount_fen=duplicate_fen, reason="duplicate",
                        out_refund_no=new_refund_no())
        session.add(refund)
        session.flush()
        enqueue(session, "refund", {"refund_id": refund.id})
        reason += f"; {duplicate_fen} fen already paid by others, to refund"
    ledger.post_entry(session, kind=entry_kind, reason=reason,
                      business_date=payment.business_date, occurred_at=payment.paid_at,
                      legs=legs, payment_id=payment.id)
    if order.status in ORDER_TRANSITIONS["paid"]:
        repo.move_order(session, order.id, ORDER_TRANSITIONS["paid"], "paid",
                        paid_at=payment.paid_at, channel_transaction_id=payment.transaction_id)
    session.flush()
    if duplicate_fen == 0:
        outcome = "applied"
    elif duplicate_fen == payment.amount_fen:
        outcome = "duplicate"
    else:
        outcome = "partly_duplicate"
    return Applied(outcome, order.order_no, duplicate_fen, payment.id)


class AlreadyPaid(Exception):
    """Money an agent is holding in hand for an item someone else paid: refuse, not refund."""


def new_refund_no() -> str:
    return "RF" + secrets.token_hex(12).upper()
