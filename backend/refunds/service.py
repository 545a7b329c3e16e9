"""Refunds (退费): requested by finance, approved by another finance user, executed, posted.

Money received on an order's payment is given back through the payment's own channel
(WeChat Pay, Alipay, ChinaUMS: a ``channel`` refund, sent by the worker), or — for cash and
POS payments an agent took — as cash the village agent pays back (a ``cash`` refund, done
when the agent confirms it with a receipt). The automatic refund of a duplicate payment is a
channel refund made already approved (``queued``).

What remains refundable is the money paid less every refund that is not failed or rejected,
line by line; the order row is locked while that is read and the refund written, so two
requests can never both take the same money. Whatever says a refund is done — the channel's
answer, its notification, a query, the agent — ends in :func:`complete_refund`, which moves
the refund to ``succeeded`` once (a conditional UPDATE), posts the ledger, makes refunded
items unpaid again and moves the order to ``partially_refunded`` or ``refunded``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.agents.service import agent_id
from backend.audit import service as audit
from backend.clock import business_date
from backend.db import unit_of_work, utcnow
from backend.errors import Conflict, Forbidden, NotFound, ValidationFailed
from backend.ledger import service as ledger
from backend.ledger.daily import ledger_scope
from backend.ledger.models import REFUNDED
from backend.money import yuan
from backend.orders import repository as orders_repo
from backend.orders.models import (
    Attempt,
    BillLine,
    Order,
    OrderLine,
    Payment,
    PaymentLine,
    Refund,
    RefundLine,
)
from backend.orders.payment_flow import new_refund_no
from backend.orders.states import ORDER_TRANSITIONS
from backend.outbox.service import enqueue
from backend.refunds import repository as repo
from backend.refunds.schemas import RefundItemIn, RefundItemOut, RefundOut
from backend.residents.models import Resident, Village
from backend.runtime import Runtime
from backend.security.tokens import Principal, RefCodec
from payment_adapters.base import Channel, RefundRequest

SYSTEM = "system"                      # who requests and approves the automatic refunds
CHANNEL_STATES = ("queued", "approved", "processing")   # a channel refund not done yet
MAX_PAGE = 200
# What the payer's wallet shows for the automatic refunds; finance's own words otherwise.
CHANNEL_REASONS = {"duplicate": "重复缴费退款", "deceased": "参保人死亡退费"}


class RefundNotDone(Exception):
    """The channel has not (yet) confirmed the refund: try again later."""


def method_of(payment: Payment) -> str | None:
    """A channel trade is refunded through its channel; cash and POS, in cash by the agent."""
    if payment.attempt_id is not None:
        return "channel"
    if payment.channel in ("cash", "pos"):
        return "cash"
    return None


def _finance(principal: Principal, what: str) -> None:
    if principal.role != "finance":
        raise Forbidden(f"only finance staff {what}")


# --------------------------------------------------------------------------- completing
def complete_refund(session: Session, refund_id: int, *, channel_refund_id: str | None,
                    refunded_at: datetime, cash_agent_id: int | None = None,
                    cash_receipt_no: str | None = None) -> bool:
    """Mark a refund succeeded and post it, once; False if it already was (or is not one
    this completion may end: a channel's word ends a channel refund under way, an agent's
    receipt a cash refund awaiting the agent).

    The ledger: each refunded line debits what its money had been credited to — the
    contributions of its insurance and year for a line that paid its item, refunds payable
    for a duplicate — and credits where the money goes out: the channel's clearing account,
    or the cash in the hands of the agent who paid it back (measure ``refunded``).
    """
    cash = cash_agent_id is not None
    values: dict[str, Any] = dict(status="succeeded", refunded_at=refunded_at,
                                  updated_at=utcnow())
    if cash:
        values.update(cash_agent_id=cash_agent_id, cash_receipt_no=cash_receipt_no)
    else:
        values.update(channel_refund_id=channel_refund_id)
    moved = cast(CursorResult[Any], session.execute(
        update(Refund).where(col(Refund.id) == refund_id,
                             col(Refund.status).in_(("awaiting_cash",) if cash
                                                    else CHANNEL_STATES))
        .values(**values).execution_options(synchronize_session=False))).rowcount
    if not moved:
        return False
    refund = session.get(Refund, refund_id, populate_existing=True)
    payment = session.get(Payment, refund.payment_id) if refund else None
    assert refund is not None and payment is not None
    rows = session.execute(
        select(col(RefundLine.amount_fen), col(RefundLine.applied), col(PaymentLine.id),
               col(BillLine.id), col(BillLine.insurance), col(BillLine.year), col(Village.code),
               col(Village.town_code))
        .join(PaymentLine, col(PaymentLine.id) == col(RefundLine.payment_line_id))
        .join(BillLine, col(BillLine.id) == col(PaymentLine.bill_line_id))
        .join(Resident, col(Resident.id) == col(BillLine.resident_id))
        .join(Village, col(Village.code) == col(Resident.village_code))
        .where(col(RefundLine.refund_id) == refund_id)
        .order_by(col(RefundLine.id))).all()
    if sum(fen for fen, *_ in rows) != refund.amount_fen:
        raise ValueError(f"refund {refund.out_refund_no}: its lines do not add up to "
                         f"{refund.amount_fen} fen")
    credit = (ledger.agent_cash(cash_agent_id) if cash_agent_id is not None
              else ledger.channel_clearing(payment.channel))
    legs: list[ledger.Leg] = []
    for fen, applied, _, _, insurance, year, village, town in rows:
        where = {"village_code": village, "town_code": town, "channel": payment.channel}
        debit = ledger.contributions(insurance, year) if applied else ledger.REFUNDS
        legs += [ledger.Leg(debit, fen, **where),
                 ledger.Leg(credit, -fen, measure=REFUNDED, **where)]
    # The items whose money went back are unpaid again, payable by anyone: the payment line
    # stops being the one applied (the partial unique index frees the bill line).
    given_back = [(pl, bl) for _, applied, pl, bl, *_ in rows if applied]
    if given_back:
        session.execute(update(PaymentLine)
                        .where(col(PaymentLine.id).in_([pl for pl, _ in given_back]))
                        .values(applied=False).execution_options(synchronize_session=False))
        session.execute(update(BillLine)
                        .where(col(BillLine.id).in_([bl for _, bl in given_back]),
                               col(BillLine.paid_payment_id) == payment.id)
                        .values(status="unpaid", paid_payment_id=None, paid_at=None,
                                paid_tier_yuan=None, paid_fen=None)
                        .execution_options(synchronize_session=False))
    how = (f"paid back in cash by agent {cash_agent_id}, receipt {cash_receipt_no}" if cash
           else f"through {payment.channel}")
    ledger.post_entry(session, kind="refund", reason=f"{refund.reason} refund "
                      f"{refund.out_refund_no} of payment {payment.transaction_id} {how}",
                      business_date=business_date(refunded_at), occurred_at=refunded_at,
                      legs=legs, payment_id=payment.id, refund_id=refund.id)
    if given_back:
        _order_refund_status(session, payment.order_id)
    return True


def _order_refund_status(session: Session, order_id: int) -> None:
    """``refunded`` once all the money that paid the order's items is given back, else
    ``partially_refunded``. (Duplicates given back leave the order as it was: they never
    paid its items.)"""
    still_applied = session.scalar(
        select(func.coalesce(func.sum(col(PaymentLine.amount_fen)), 0))
        .join(Payment, col(Payment.id) == col(PaymentLine.payment_id))
        .where(col(Payment.order_id) == order_id, col(PaymentLine.applied))) or 0
    to = "partially_refunded" if still_applied else "refunded"
    orders_repo.move_order(session, order_id, ORDER_TRANSITIONS[to], to, updated_at=utcnow())


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
        if refund.method != "channel" or refund.status not in CHANNEL_STATES:
            return refund.status
        sent_before = refund.status == "processing"
        payment = s.get(Payment, refund.payment_id)
        attempt = s.get(Attempt, payment.attempt_id) if payment and payment.attempt_id else None
        if payment is None or attempt is None:
            raise LookupError(f"refund {refund_id} has no channel payment to refund")
        s.execute(update(Refund).where(col(Refund.id) == refund_id,
                                       col(Refund.status).in_(("queued", "approved")))
                  .values(status="processing", updated_at=utcnow()))
        req = RefundRequest(out_trade_no=attempt.out_trade_no,
                            out_refund_no=refund.out_refund_no,
                            total_fen=payment.amount_fen, refund_fen=refund.amount_fen,
                            reason=CHANNEL_REASONS.get(refund.reason, refund.reason),
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


# --------------------------------------------------------------------------- requesting
def _exceeds(order_no: str, requested: int, refundable: int) -> Conflict:
    return Conflict(f"a refund of {yuan(requested)} yuan on order {order_no} is more than the "
                    f"{yuan(refundable)} yuan that remains refundable (paid, less refunds done, "
                    "under way or awaiting approval)", code="refund_exceeds_refundable",
                    requested_fen=requested, refundable_fen=refundable)


def _lines_to_refund(rt: Runtime, principal: Principal, session: Session, order: Order,
                     lines: list[repo.PaidLine],
                     items: list[RefundItemIn] | None) -> list[tuple[repo.PaidLine, int]]:
    """The payment lines a refund gives back, each with its amount; refused when more is
    asked than remains."""
    if items is None:
        everything = [(line, line.remaining_fen) for line in lines if line.remaining_fen > 0]
        if not everything:
            raise _exceeds(order.order_no, sum(line.amount_fen for line in lines), 0)
        return everything
    assert order.id is not None
    refs = RefCodec(rt.pii.ref_key)
    by_item = {(ol.resident_id, ol.insurance): ol
               for ol in orders_repo.order_lines(session, order.id)}
    wanted: dict[int, OrderLine] = {}
    for n, item in enumerate(items):
        try:
            rid = refs.read(item.resident_ref, principal.sub)
        except NotFound:
            raise ValidationFailed(f"items[{n}].resident_ref: unknown for this caller; take "
                                   "it from the order's items") from None
        found = by_item.get((rid, item.insurance))
        if found is None:
            raise ValidationFailed(f"items[{n}]: this resident's {item.insurance} is not an "
                                   f"item of order {order.order_no}")
        if found.bill_line_id in wanted:
            raise ValidationFailed(f"items[{n}]: the same item twice")
        wanted[found.bill_line_id] = found
    chosen: list[tuple[repo.PaidLine, int]] = []
    requested = refundable = 0
    for bill_line_id, item_line in wanted.items():
        need = item_line.amount_fen
        requested += need
        # the line that paid the item first, then any other money for it
        for line in sorted((x for x in lines if x.bill_line_id == bill_line_id),
                           key=lambda x: (not x.applied, x.id)):
            take = min(line.remaining_fen, need)
            if take > 0:
                chosen.append((line, take))
                need -= take
                refundable += take
    if refundable < requested:
        held = sum(line.remaining_fen for line in lines if line.bill_line_id in wanted)
        raise _exceeds(order.order_no, requested, held)
    return chosen


def request_refund(rt: Runtime, principal: Principal, order_no: str,
                   items: list[RefundItemIn] | None, reason: str) -> RefundOut:
    """A finance user asks for a refund of an order: all that remains refundable, or the
    items named (each its paid amount). It waits for another finance user's approval."""
    _finance(principal, "request refunds")
    with unit_of_work(rt.sessions) as s:
        # The order's row serialises every refund of its money (and every payment of it).
        order = orders_repo.order_by_no(s, order_no, lock=True)
        if order is None or order.id is None:
            raise NotFound(f"no order {order_no}")
        payments = {p.id: p for p in repo.payments_of(s, order.id, lock=True)}
        lines = repo.paid_lines(s, order.id)
        if not payments or not lines:
            raise Conflict(f"order {order_no} is {order.status}: no money was received on it, "
                           "so there is nothing to refund", code="order_not_refundable")
        chosen = _lines_to_refund(rt, principal, s, order, lines, items)
        payment_ids = sorted({line.payment_id for line, _ in chosen})
        if len(payment_ids) > 1:
            raise Conflict(f"the money to refund on order {order_no} came in "
                           f"{len(payment_ids)} payments; refund the items of each payment "
                           "separately", code="order_not_refundable")
        payment = payments[payment_ids[0]]
        method = method_of(payment)
        if method is None:
            raise Conflict(f"a {payment.channel} payment is not refunded here",
                           code="order_not_refundable")
        now = rt.clock.now()
        refund = Refund(payment_id=payment_ids[0], out_refund_no=new_refund_no(),
                        amount_fen=sum(fen for _, fen in chosen), reason=reason,
                        status="requested", method=method, requested_by=principal.sub,
                        requested_at=now)
        s.add(refund)
        s.flush()
        assert refund.id is not None
        s.add_all([RefundLine(refund_id=refund.id, payment_line_id=line.id, amount_fen=fen,
                              applied=line.applied) for line, fen in chosen])
        s.flush()
        audit.record(s, rt, principal, "refund.request", "refund", refund.id, reason=reason,
                     details={"order_no": order_no, "amount_fen": refund.amount_fen,
                              "method": method, "out_refund_no": refund.out_refund_no})
        return render_refunds(rt, s, principal, [refund])[0]


def _refund_to_decide(session: Session, principal: Principal, refund_id: int,
                      action: str) -> Refund:
    refund = repo.refund_for_update(session, refund_id)
    if refund is None:
        raise NotFound(f"no refund {refund_id}")
    if refund.requested_by == principal.sub:
        raise Forbidden(f"refund {refund_id} was requested by this user; another finance "
                        f"user {action} it", code="same_approver")
    if refund.status != "requested":
        raise Conflict(f"refund {refund_id} is {refund.status}; only a requested refund can "
                       f"be {action}", code="refund_not_pending")
    return refund


def approve_refund(rt: Runtime, principal: Principal, refund_id: int) -> RefundOut:
    """Another finance user approves: a channel refund goes to the worker, which sends it
    through the payment's channel; a cash refund waits for the village agent."""
    _finance(principal, "approve refunds")
    with unit_of_work(rt.sessions) as s:
        refund = _refund_to_decide(s, principal, refund_id, "approves")
        refund.status = "approved" if refund.method == "channel" else "awaiting_cash"
        refund.approved_by, refund.approved_at = principal.sub, rt.clock.now()
        refund.updated_at = utcnow()
        s.flush()
        if refund.method == "channel":
            enqueue(s, "refund", {"refund_id": refund_id})
        audit.record(s, rt, principal, "refund.approve", "refund", refund_id,
                     details={"amount_fen": refund.amount_fen, "method": refund.method,
                              "requested_by": refund.requested_by})
        return render_refunds(rt, s, principal, [refund])[0]


def reject_refund(rt: Runtime, principal: Principal, refund_id: int,
                  reason: str) -> RefundOut:
    """Another finance user rejects, with a reason; the money is refundable again."""
    _finance(principal, "reject refunds")
    with unit_of_work(rt.sessions) as s:
        refund = _refund_to_decide(s, principal, refund_id, "rejects")
        refund.status = "rejected"
        refund.rejected_by, refund.rejected_at = principal.sub, rt.clock.now()
        refund.reject_reason = reason
        refund.updated_at = utcnow()
        s.flush()
        audit.record(s, rt, principal, "refund.reject", "refund", refund_id, reason=reason,
                     details={"amount_fen": refund.amount_fen, "method": refund.method,
                              "requested_by": refund.requested_by})
        return render_refunds(rt, s, principal, [refund])[0]


def confirm_cash_refund(rt: Runtime, principal: Principal, refund_id: int,
                        receipt_no: str) -> RefundOut:
    """The village agent paid an approved cash refund back, against a receipt: the refund
    succeeds and is posted out of the agent's cash. Said again with the same receipt, the
    same answer."""
    aid = agent_id(principal)
    try:
        with unit_of_work(rt.sessions) as s:
            refund = repo.refund_for_update(s, refund_id)
            if refund is None or refund.method != "cash" or (
                    principal.village_code not in _villages(s, refund)):
                raise NotFound(f"no cash refund {refund_id} in this agent's village")
            if (refund.status, refund.cash_agent_id, refund.cash_receipt_no) == (
                    "succeeded", aid, receipt_no):
                return render_refunds(rt, s, principal, [refund])[0]
            if refund.status != "awaiting_cash":
                raise Conflict(f"refund {refund_id} is {refund.status}, not awaiting the "
                               "agent's cash", code="refund_not_pending")
            if repo.refund_by_cash_receipt(s, aid, receipt_no) is not None:
                raise _receipt_taken(receipt_no)
            complete_refund(s, refund_id, channel_refund_id=None, refunded_at=rt.clock.now(),
                            cash_agent_id=aid, cash_receipt_no=receipt_no)
            s.refresh(refund)
            audit.record(s, rt, principal, "refund.cash_paid", "refund", refund_id,
                         details={"amount_fen": refund.amount_fen, "receipt_no": receipt_no})
            return render_refunds(rt, s, principal, [refund])[0]
    except IntegrityError as exc:
        if "uq_refund_cash_receipt" in str(exc) or "cash_receipt_no" in str(exc):
            raise _receipt_taken(receipt_no) from None
        raise


def _villages(session: Session, refund: Refund) -> set[str]:
    """The village of an agent's order (its cash or POS collection), else its items'."""
    order = repo.order_of_refund(session, refund)
    assert order.id is not None
    return {order.village_code} if order.village_code else repo.order_villages(session,
                                                                                order.id)


def _receipt_taken(receipt_no: str) -> Conflict:
    return Conflict(f"receipt {receipt_no} is already recorded for another refund; use the "
                    "number of the receipt the resident signed for this one",
                    code="receipt_no_taken")


# --------------------------------------------------------------------------- reading
def _scope(principal: Principal, town: str | None) -> tuple[str | None, str | None]:
    """(town, village) a caller may see: the ledger's scope rules."""
    return ledger_scope(principal, town, None,
                        refused="refunds are for finance, auditors, town staff and agents")


def list_refunds(rt: Runtime, session: Session, principal: Principal, *,
                 status: str | None = None, town: str | None = None, limit: int = 100,
                 before_id: int | None = None) -> list[RefundOut]:
    """Refunds newest first (``before_id``: the next page), in the caller's scope."""
    in_town, in_village = _scope(principal, town)
    refunds = repo.list_refunds(session, status=status, town=in_town, village=in_village,
                                limit=max(1, min(limit, MAX_PAGE)), before_id=before_id)
    return render_refunds(rt, session, principal, refunds)


def get_refund(rt: Runtime, session: Session, principal: Principal,
               refund_id: int) -> RefundOut:
    town, village = _scope(principal, None)
    refund = repo.refund_in_scope(session, refund_id, town=town, village=village)
    if refund is None:
        raise NotFound(f"no refund {refund_id} for this caller")
    return render_refunds(rt, session, principal, [refund])[0]


def render_refunds(rt: Runtime, session: Session, principal: Principal,
                   refunds: list[Refund]) -> list[RefundOut]:
    if not refunds:
        return []
    ids = [r.id for r in refunds if r.id is not None]
    heads, lines = repo.refund_facts(session, ids)
    staff = {int(sub.removeprefix("staff:")) for r in refunds
             for sub in (r.requested_by, r.approved_by, r.rejected_by)
             if sub and sub.startswith("staff:") and sub[6:].isdigit()}
    names = repo.usernames(session, sorted(staff))

    def who(sub: str | None) -> str | None:
        if sub and sub.startswith("staff:") and sub[6:].isdigit():
            return names.get(int(sub[6:]), sub)
        return sub

    refs = RefCodec(rt.pii.ref_key)
    out = []
    for r in refunds:
        assert r.id is not None
        order_no, channel = heads[r.id]
        out.append(RefundOut(
            refund_id=r.id, order_no=order_no, amount_fen=r.amount_fen,
            status=r.status, method=r.method, channel=channel,  # type: ignore[arg-type]
            items=[RefundItemOut(resident_ref=refs.make(resident, principal.sub),
                                 insurance=insurance, amount_fen=fen)
                   for resident, insurance, fen in lines.get(r.id, [])],
            reason=r.reason, requested_by=who(r.requested_by) or SYSTEM,
            requested_at=r.requested_at or r.created_at,
            approved_by=who(r.approved_by), approved_at=r.approved_at,
            rejected_by=who(r.rejected_by), rejected_at=r.rejected_at,
            reject_reason=r.reject_reason, refunded_at=r.refunded_at,
            channel_refund_id=r.channel_refund_id, cash_receipt_no=r.cash_receipt_no))
    return out
