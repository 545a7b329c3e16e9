"""Refunds (退费) through the original channel; each completed one posted to the ledger.

Here: the automatic refund of a duplicate payment (the same item paid twice). The approval
workflow for other refunds builds on :func:`complete_refund`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.clock import business_date
from backend.db import unit_of_work, utcnow
from backend.ledger import service as ledger
from backend.ledger.models import REFUNDED
from backend.orders.models import Attempt, BillLine, Payment, PaymentLine, Refund
from backend.residents.models import Resident, Village
from backend.runtime import Runtime
from payment_adapters.base import Channel, RefundRequest


class RefundNotDone(Exception):
    """The channel has not (yet) confirmed the refund: try again later."""


def complete_refund(session: Session, refund_id: int, *, channel_refund_id: str | None,
                    refunded_at: datetime) -> bool:
    """Mark a refund succeeded and post it, once; False if it already was."""
    moved = cast(CursorResult[Any], session.execute(
        update(Refund).where(col(Refund.id) == refund_id,
                             col(Refund.status).in_(("queued", "processing")))
        .values(status="succeeded", channel_refund_id=channel_refund_id,
                refunded_at=refunded_at, updated_at=utcnow()))).rowcount
    if not moved:
        return False
    refund = session.get(Refund, refund_id)
    payment = session.get(Payment, refund.payment_id) if refund else None
    assert refund is not None and payment is not None
    # Which villages the refunded money belongs to: the payment's duplicate lines.
    rows = session.execute(
        select(col(PaymentLine.amount_fen), col(Village.code), col(Village.town_code))
        .join(BillLine, col(BillLine.id) == col(PaymentLine.bill_line_id))
        .join(Resident, col(Resident.id) == col(BillLine.resident_id))
        .join(Village, col(Village.code) == col(Resident.village_code))
        .where(col(PaymentLine.payment_id) == payment.id, ~col(PaymentLine.applied))
        .order_by(col(PaymentLine.id))).all()
    legs: list[ledger.Leg] = []
    left = refund.amount_fen
    for amount, village, town in rows:
        part = min(amount, left)
        if part <= 0:
            break
        left -= part
        where = {"village_code": village, "town_code": town, "channel": payment.channel}
        legs += [ledger.Leg(ledger.REFUNDS, part, **where),
                 ledger.Leg(ledger.channel_clearing(payment.channel), -part, measure=REFUNDED,
                            **where)]
    if left:
        raise ValueError(f"refund {refund.out_refund_no} is larger than the duplicate lines")
    ledger.post_entry(session, kind="refund", reason=f"{refund.reason} refund "
                      f"{refund.out_refund_no} of payment {payment.transaction_id}",
                      business_date=business_date(refunded_at), occurred_at=refunded_at,
                      legs=legs, payment_id=payment.id, refund_id=refund.id)
    return True


def execute_refund(rt: Runtime, refund_id: int) -> str:
    """Ask the payment's channel to refund; record the outcome. Raises to retry later.

    A refund already sent once (``processing``) may have been done even though no answer
    came back: the channel's refund query is asked first, and the refund is sent again (with
    the same number) only when the channel has none under that number.
    """
    with unit_of_work(rt.sessions) as s:
        refund = s.get(Refund, refund_id)
        if refund is None:
            raise LookupError(f"no refund {refund_id}")
        if refund.status in ("succeeded", "failed"):
            return refund.status
        sent_before = refund.status == "processing"
        payment = s.get(Payment, refund.payment_id)
        attempt = s.get(Attempt, payment.attempt_id) if payment and payment.attempt_id else None
        if payment is None or attempt is None:
            raise LookupError(f"refund {refund_id} has no channel payment to refund")
        s.execute(update(Refund).where(col(Refund.id) == refund_id,
                                       col(Refund.status) == "queued")
                  .values(status="processing", updated_at=utcnow()))
        req = RefundRequest(out_trade_no=attempt.out_trade_no,
                            out_refund_no=refund.out_refund_no,
                            total_fen=payment.amount_fen, refund_fen=refund.amount_fen,
                            reason=("重复缴费退款" if refund.reason == "duplicate"
                                    else refund.reason),
                            notify_url=rt.channels.notify_url(Channel(payment.channel)))
        channel = Channel(payment.channel)
    client = rt.channels.clients[channel]
    result = client.query_refund(req) if sent_before else None
    if result is None or result.state == "not_found":
        result = client.refund(req)
    if result.state == "success":
        with unit_of_work(rt.sessions) as s:
            complete_refund(s, refund_id, channel_refund_id=result.refund_id,
                            refunded_at=rt.clock.now())
        return "succeeded"
    if result.state == "failed":
        raise RefundNotDone(f"{channel.value} refused refund {req.out_refund_no}")
    raise RefundNotDone(f"{channel.value} is still processing refund {req.out_refund_no}")
