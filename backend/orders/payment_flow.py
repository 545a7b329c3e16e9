"""Payment confirmed (支付确认): the one function that applies money a channel reports.

A notification and an active query both end here, so a payment is applied the same way
whoever saw it first. Everything happens in the caller's single transaction.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.clock import business_date
from backend.orders import repository as repo
from backend.orders.models import BillLine, Order, Payment, PaymentLine, Refund
from backend.orders.states import ATTEMPT_TRANSITIONS, ORDER_TRANSITIONS


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
        return Applied("repeat", order.order_no)

    payment = Payment(attempt_id=attempt.id, order_id=order.id, channel=c.channel,
                      transaction_id=c.transaction_id, amount_fen=c.amount_fen,
                      paid_at=c.paid_at, business_date=business_date(c.paid_at), source=c.source)
    session.add(payment)
    session.flush()
    repo.move_attempt(session, attempt.id, ATTEMPT_TRANSITIONS["paid"], "paid",
                      transaction_id=c.transaction_id, paid_at=c.paid_at)

    duplicate_fen = 0
    for line in repo.order_lines(session, order.id):
        # The conditional UPDATE is the race's referee; the partial unique index on applied
        # payment lines is the backstop if anything ever got past it.
        won = session.execute(
            update(BillLine).where(BillLine.id == line.bill_line_id, BillLine.status == "unpaid")
            .values(status="paid", paid_payment_id=payment.id, paid_tier_yuan=line.tier_yuan,
                    paid_fen=line.amount_fen, paid_at=c.paid_at)).rowcount
        session.add(PaymentLine(payment_id=payment.id, bill_line_id=line.bill_line_id,
                                amount_fen=line.amount_fen, applied=bool(won)))
        if not won:
            duplicate_fen += line.amount_fen
    if duplicate_fen:
        payment.refund_queued_fen = duplicate_fen
        session.add(Refund(payment_id=payment.id, amount_fen=duplicate_fen, reason="duplicate",
                           out_refund_no=new_refund_no()))

    if order.status in ORDER_TRANSITIONS["paid"]:
        repo.move_order(session, order.id, ORDER_TRANSITIONS["paid"], "paid",
                        paid_at=c.paid_at, channel_transaction_id=c.transaction_id)
    session.flush()
    if duplicate_fen == 0:
        outcome = "applied"
    elif duplicate_fen == c.amount_fen:
        outcome = "duplicate"
    else:
        outcome = "partly_duplicate"
    return Applied(outcome, order.order_no, duplicate_fen)


def new_refund_no() -> str:
    return "RF" + secrets.token_hex(12).upper()
