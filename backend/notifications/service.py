"""Channel notifications (支付回调): verified on the raw bytes, a row first, applied once.

The answer to the channel depends only on whether the notification was verified and
recorded: a repeat of an applied event gets the same success answer; anything that must
change nothing (bad signature, unknown order, wrong amount) is stored for audit in its own
transaction and gets the channel's failure answer, so the channel retries — which is what
turns "the notification came before our order commit was visible" into a success later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.clock import real_now
from backend.db import unit_of_work, utcnow
from backend.notifications.models import InboxNotification
from backend.orders.models import Refund
from backend.orders.payment_flow import (
    AmountMismatch,
    ChannelConfirmation,
    UnknownTrade,
    confirm_channel_payment,
)
from backend.refunds.service import complete_refund
from backend.runtime import Runtime
from backend.sql import Statement, Tx
from payment_adapters.base import Channel, HttpAnswer, Notification, VerificationFailed

log = logging.getLogger(__name__)

MAX_NOTIFICATION_BYTES = 64 * 1024
# Headers worth keeping for audit; cookies and the like are not.
KEPT_HEADERS = ("content-type", "user-agent", "wechatpay-serial", "wechatpay-timestamp",
                "wechatpay-nonce", "wechatpay-signature", "wechatpay-signature-type",
                "request-id")


class _Reject(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def _audit(rt: Runtime, channel: Channel, headers: Mapping[str, str], body: bytes,
           outcome: str, detail: str, out_trade_no: str | None = None) -> None:
    with unit_of_work(rt.sessions) as s:
        s.add(InboxNotification(
            channel=channel.value, dedupe_key=None, out_trade_no=out_trade_no, verified=False
            if outcome == "rejected" else True, outcome=outcome, detail=detail[:500],
            headers={k: v for k, v in headers.items() if k.lower() in KEPT_HEADERS},
            body=body.decode("utf-8", "replace")))


_RECORD_EVENT = Statement(
    """INSERT INTO notification_inbox (channel, dedupe_key, out_trade_no, verified, outcome,
                                       detail, headers, body, received_at)
       VALUES (:channel, :dedupe_key, :out_trade_no, true, :outcome, :detail, :headers, :body,
               :now)
       ON CONFLICT (channel, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
       RETURNING id""")


def _record_event(session: Session, channel: Channel, note: Notification,
                  headers: Mapping[str, str], body: bytes, outcome: str, detail: str) -> bool:
    """INSERT … ON CONFLICT DO NOTHING of the event with its outcome; False if seen before.

    Written last, in the same transaction as what it records: a repeat of an event that
    was applied finds the payment already there (and changes nothing) before it gets here.
    """
    return Tx(session).one(
        _RECORD_EVENT, channel=channel.value, dedupe_key=note.dedupe_key,
        out_trade_no=note.out_trade_no, outcome=outcome, detail=detail[:500],
        headers={k: v for k, v in headers.items() if k.lower() in KEPT_HEADERS},
        body=body.decode("utf-8", "replace"), now=utcnow()) is not None


def _apply(session: Session, channel: Channel, note: Notification,
           now: datetime) -> tuple[str, str]:
    """``now``: the business clock, for a channel that gives no time of its own."""
    if note.kind == "payment" and note.succeeded:
        if not note.transaction_id:
            raise _Reject("rejected", "a success without a transaction id")
        try:
            applied = confirm_channel_payment(session, ChannelConfirmation(
                channel=channel.value, out_trade_no=note.out_trade_no,
                transaction_id=note.transaction_id, amount_fen=note.amount_fen,
                paid_at=note.paid_at or now, source="notification"))
        except UnknownTrade:
            raise _Reject("unknown_order", f"no attempt {note.out_trade_no}") from None
        except AmountMismatch as exc:
            raise _Reject("amount_mismatch", str(exc)) from None
        detail = f"order {applied.order_no}"
        if applied.refund_queued_fen:
            detail += f"; {applied.refund_queued_fen} fen queued for refund"
        return applied.outcome, detail
    if note.kind == "refund" and note.out_refund_no:
        refund = session.scalar(select(Refund)
                                .where(col(Refund.out_refund_no) == note.out_refund_no)
                                .with_for_update())
        if refund is None or refund.id is None:
            raise _Reject("unknown_order", f"no refund {note.out_refund_no}")
        if note.succeeded:
            complete_refund(session, refund.id, channel_refund_id=note.refund_id,
                            refunded_at=note.paid_at or now)
            return "refund_succeeded", f"refund {note.out_refund_no}"
        # A refund the channel gave up on stays with the worker, which retries and, at the
        # end, leaves it dead in the outbox for staff: never silently dropped.
        return "refund_not_done", f"refund {note.out_refund_no}: {note.trade_state}"
    # A later status of a trade already reported (Alipay TRADE_FINISHED, TRADE_CLOSED):
    # recorded, never a new payment.
    return "ignored", f"{note.kind} {note.trade_state}"


def handle(rt: Runtime, channel: Channel, headers: Mapping[str, str], body: bytes) -> HttpAnswer:
    verifier = rt.channels.verifiers[channel]
    if len(body) > MAX_NOTIFICATION_BYTES:
        return verifier.failure_answer("body too large")
    try:
        note = verifier.verify(headers, body, real_now())
    except VerificationFailed as exc:
        log.warning("%s notification rejected: %s", channel.value, exc)
        _audit(rt, channel, headers, body, "rejected", str(exc))
        return verifier.failure_answer(str(exc))
    try:
        with unit_of_work(rt.sessions) as s:
            outcome, detail = _apply(s, channel, note, rt.clock.now())
            if outcome != "repeat":
                _record_event(s, channel, note, headers, body, outcome, detail)
    except _Reject as exc:
        log.warning("%s notification for %s not applied: %s", channel.value, note.out_trade_no,
                    exc.detail)
        _audit(rt, channel, headers, body, exc.outcome, exc.detail, note.out_trade_no)
        return verifier.failure_answer(exc.detail)
    log.log(logging.DEBUG if outcome in ("applied", "repeat") else logging.INFO,
            "%s notification for %s: %s", channel.value, note.out_trade_no, outcome)
    return verifier.success_answer()
