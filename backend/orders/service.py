"""Orders (订单): check items against the assessment, open channel trades, close, sync.

Creating an order is three short steps so that no database transaction stays open across
a network call: (1) check and write the order with an attempt in state ``creating``;
(2) ask the channel; (3) record its answer. A timeout in (2) leaves the attempt ``unknown``
and the order pending, to be settled by a query — the channel may have the trade.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from backend.channels import API_CHANNELS
from backend.clock import SHANGHAI
from backend.db import unit_of_work, utcnow
from backend.errors import AppError, Conflict, Forbidden, NotFound, ValidationFailed
from backend.notifications.models import InboxNotification
from backend.orders import repository as repo
from backend.orders.models import REFUND_UNDER_WAY, Attempt, Order, OrderLine, Refund
from backend.orders.payment_flow import (
    AmountMismatch,
    ChannelConfirmation,
    TransactionConflict,
    confirm_channel_payment,
)
from backend.orders.schemas import (
    OrderCreate,
    OrderItemIn,
    OrderItemOut,
    OrderOut,
    OrderRefundOut,
    PaymentOut,
)
from backend.orders.states import ATTEMPT_TRANSITIONS, LIVE_ATTEMPT_STATES, ORDER_TRANSITIONS
from backend.policy import Assessment, assess
from backend.receipts import service as receipts
from backend.residents import repository as residents_repo
from backend.residents.models import Resident
from backend.residents.service import facts_of, in_scope, policy_for
from backend.runtime import Runtime
from backend.security.tokens import Principal, RefCodec
from payment_adapters.base import (
    Channel,
    ChannelError,
    CreateRequest,
    CreateResult,
    OutcomeUnknown,
)

log = logging.getLogger(__name__)

RESIDENT_ORDER_TTL = timedelta(minutes=15)
AGENT_QR_TTL = timedelta(minutes=3)
#: Orders whose money came in: their answer carries the receipt.
PAID_STATES = ("paid", "partially_refunded", "refunded")
DESCRIPTIONS = {"pension": "城乡居民基本养老保险", "medical": "城乡居民基本医疗保险"}


class ChannelUnavailable(AppError):
    status, code = 502, "channel_error"


class ChannelTimedOut(AppError):
    status, code = 504, "channel_timeout"


# --------------------------------------------------------------------------- checking items
@dataclass(frozen=True)
class PricedItem:
    resident: Resident
    ref: str
    insurance: str
    tier_yuan: int | None
    amount_fen: int
    town_code: str

    @property
    def key(self) -> tuple[int, str]:
        assert self.resident.id is not None
        return self.resident.id, self.insurance


def _price(rt: Runtime, resident: Resident, a: Assessment, insurance: str,
           tier_yuan: int | None, ref: str, town: str) -> PricedItem:
    label = f"{insurance} for resident {resident.id_masked}"
    if insurance == "pension":
        p = a.pension
        if not p.eligible:
            raise Conflict(f"{label} is not eligible ({p.reason})", code="not_eligible",
                           reason=p.reason)
        if not p.payable:
            if p.not_payable_reason in ("window_closed", "window_not_open"):
                when = "closed" if p.not_payable_reason == "window_closed" else "not open yet"
                raise Conflict(f"{label}: the collection window is {when}; back-payments "
                               "(补缴) are made by staff", code="window_closed")
            raise Conflict(f"{label} can not be paid ({p.not_payable_reason})",
                           code="not_eligible", reason=p.not_payable_reason)
        tier = tier_yuan if tier_yuan is not None else p.default_tier_yuan
        policy = policy_for(rt, a.year)
        if tier not in policy.tiers_yuan:
            raise ValidationFailed(f"items.tier_yuan: {tier} is not a pension tier; tiers are "
                                   f"{', '.join(map(str, policy.tiers_yuan))}")
        option = p.tier(tier) if tier is not None else None
        if option is None:
            raise Conflict(f"{label}: tier {tier} is only for the hardship groups",
                           code="not_eligible", reason="tier_not_allowed")
        if option.amount_due_fen <= 0:
            raise Conflict(f"{label}: {p.paying_department} pays tier {tier}; choose a higher "
                           "tier to pay the difference", code="not_eligible",
                           reason="government_paid")
        return PricedItem(resident, ref, insurance, tier, option.amount_due_fen, town)
    m = a.medical
    if tier_yuan is not None:
        raise ValidationFailed("items.tier_yuan: only pension items have a tier")
    if not m.eligible:
        raise Conflict(f"{label} is not eligible ({m.reason})", code="not_eligible",
                       reason=m.reason)
    if not m.payable:
        if m.not_payable_reason in ("window_closed", "window_not_open"):
            raise Conflict(f"{label}: the collection window is not open", code="window_closed")
        if m.not_payable_reason == "government_paid":
            raise Conflict(f"{label}: {m.paying_department} pays all of it (代缴)",
                           code="not_eligible", reason="government_paid")
        raise Conflict(f"{label} can not be paid by the resident ({m.not_payable_reason})",
                       code="not_eligible", reason=m.not_payable_reason)
    return PricedItem(resident, ref, insurance, None, m.amount_due_fen, town)


def _priced_items(rt: Runtime, session: Session, principal: Principal, year: int,
                  wanted: list[OrderItemIn]) -> list[PricedItem]:
    refs = RefCodec(rt.pii.ref_key)
    policy = policy_for(rt, year)
    now = rt.clock.now()
    seen: set[tuple[int, str]] = set()
    rids: list[int] = []
    for n, item in enumerate(wanted):
        try:
            rid = refs.read(item.resident_ref, principal.sub)
        except NotFound:
            raise ValidationFailed(f"items[{n}].resident_ref: unknown for this caller; look "
                                   "the resident up first") from None
        if (rid, item.insurance) in seen:
            raise ValidationFailed(f"items[{n}]: the same resident and insurance twice")
        seen.add((rid, item.insurance))
        rids.append(rid)
    found = residents_repo.for_assessment(session, sorted(set(rids)), policy.coverage_year)
    assessed: dict[int, Assessment] = {}
    priced: list[PricedItem] = []
    for n, (item, rid) in enumerate(zip(wanted, rids, strict=True)):
        if rid not in found or not in_scope(session, principal, found[rid][0], year):
            raise ValidationFailed(f"items[{n}].resident_ref: unknown for this caller")
        resident, died, town, listings = found[rid]
        if rid not in assessed:
            assessed[rid] = assess(policy, facts_of(resident, died, listings), now)
        priced.append(_price(rt, resident, assessed[rid], item.insurance, item.tier_yuan,
                             item.resident_ref, town))
    return priced


# --------------------------------------------------------------------------- creating
def new_order_no(now: datetime) -> str:
    """``YYYYMMDDHHMMSS`` Beijing time + 7 random characters: 21, safe on every channel."""
    alphabet = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    return now.astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S") + "".join(
        secrets.choice(alphabet) for _ in range(7))


def write_lines(rt: Runtime, session: Session, principal: Principal, year: int,
                wanted: list[OrderItemIn], *, channel: str, village_code: str | None = None,
                ttl: timedelta = timedelta(0)) -> tuple[Order, list[OrderLine]]:
    """Check the items against the assessment and the bill lines; write order and lines."""
    items = _priced_items(rt, session, principal, year, wanted)
    now = rt.clock.now()   # the business clock: order numbers and expiry
    lines = repo.bill_lines_for(session, [(i.key[0], year, i.insurance) for i in items])
    for i in items:
        if lines[i.key].status == "claimed":
            raise Conflict(f"{i.insurance} {year} for {i.resident.id_masked} is on a "
                           "department's bill (代缴通知单): the department pays it",
                           code="not_eligible", reason="government_paid",
                           resident_ref=i.ref, insurance=i.insurance)
        if lines[i.key].status == "paid":
            raise Conflict(f"{i.insurance} {year} for {i.resident.id_masked} is already paid",
                           code="item_already_paid", resident_ref=i.ref, insurance=i.insurance)
    busy = repo.live_orders_of_others(session, [b.id for b in lines.values() if b.id],
                                      principal.sub, now)
    for i in items:
        if lines[i.key].id in busy:
            raise Conflict(f"{i.insurance} {year} for {i.resident.id_masked} is in another "
                           "payer's unpaid order; try again when it expires",
                           code="item_in_pending_order", resident_ref=i.ref,
                           insurance=i.insurance)
    order = Order(order_no=new_order_no(now), payer_sub=principal.sub,
                  payer_role=principal.role, year=year, channel=channel,
                  amount_fen=sum(i.amount_fen for i in items), expires_at=now + ttl,
                  village_code=village_code,
                  qr_token=(secrets.token_urlsafe(24) if channel in API_CHANNELS
                            and channel != "wechat_jsapi" else None))
    written = []
    for i in items:
        line_id = lines[i.key].id
        assert line_id is not None
        written.append(OrderLine(order_id=0, bill_line_id=line_id, resident_id=i.key[0],
                                 insurance=i.insurance, tier_yuan=i.tier_yuan,
                                 amount_fen=i.amount_fen, village_code=i.resident.village_code,
                                 town_code=i.town_code))
    repo.insert_order(session, order, written)     # sets the ids
    return order, written


def _write_order(rt: Runtime, session: Session, principal: Principal, body: OrderCreate,
                 ttl: timedelta, village_code: str | None) -> tuple[
                     Order, list[OrderLine], Attempt | None]:
    order, lines = write_lines(rt, session, principal, body.year, body.items,
                               channel=body.channel, village_code=village_code, ttl=ttl)
    attempt = None
    target = API_CHANNELS[body.channel]
    if target is not None:
        attempt = _new_attempt(rt, session, order, target[0], target[1], first=True)
    return order, lines, attempt


def _new_attempt(rt: Runtime, session: Session, order: Order, channel: Channel,
                 kind: str, *, first: bool = False) -> Attempt:
    assert order.id is not None
    n = 1 if first else repo.attempt_count(session, order.id) + 1
    client = rt.channels.clients[channel]
    attempt = Attempt(order_id=order.id, channel=channel.value, kind=kind,
                      out_trade_no=client.new_out_trade_no(f"{order.order_no}{n:02d}"),
                      amount_fen=order.amount_fen, expires_at=order.expires_at)
    repo.insert_attempt(session, attempt)     # sets its id
    return attempt


def _open_at_channel(rt: Runtime, order: Order, attempt: Attempt, description: str,
                     payer_openid: str | None, *,
                     then: Callable[[Session], None] | None = None) -> CreateResult | None:
    """Steps (2) and (3): ask the channel, then record its answer in a new transaction
    (with ``then``'s writes, given the attempt as it is now: pending, with the channel's
    QR content or payment parameters)."""
    channel = Channel(attempt.channel)
    req = CreateRequest(out_trade_no=attempt.out_trade_no, amount_fen=attempt.amount_fen,
                        description=description, expires_at=attempt.expires_at,
                        notify_url=rt.channels.notify_url(channel), kind=attempt.kind,  # type: ignore[arg-type]
                        payer_openid=payer_openid)
    try:
        result = rt.channels.clients[channel].create(req)
    except OutcomeUnknown as exc:
        with unit_of_work(rt.sessions) as s:
            repo.move_attempt(s, attempt.id, ATTEMPT_TRANSITIONS["unknown"], "unknown",  # type: ignore[arg-type]
                              last_error=str(exc)[:500], updated_at=utcnow())
        raise ChannelTimedOut(f"{channel.value} gave no final answer ({exc.code}); the order "
                              "stays pending and is checked with the channel",
                              order_no=order.order_no) from None
    except ChannelError as exc:
        with unit_of_work(rt.sessions) as s:
            repo.move_attempt(s, attempt.id, ATTEMPT_TRANSITIONS["failed"], "failed",  # type: ignore[arg-type]
                              last_error=f"{exc.code}: {exc}"[:500], updated_at=utcnow())
            if not any(a.status in LIVE_ATTEMPT_STATES for a in repo.attempts_of(s, order.id)):  # type: ignore[arg-type]
                repo.move_order(s, order.id, ORDER_TRANSITIONS["closed"], "closed",  # type: ignore[arg-type]
                                updated_at=utcnow())
        raise ChannelUnavailable(f"{channel.value} refused the payment: {exc}",
                                 order_no=order.order_no) from None
    attempt.status = "pending"
    attempt.qr_content = result.qr_content
    attempt.request_payment = result.request_payment
    with unit_of_work(rt.sessions) as s:
        repo.move_attempt(s, attempt.id, ATTEMPT_TRANSITIONS["pending"], "pending",  # type: ignore[arg-type]
                          qr_content=result.qr_content, request_payment=result.request_payment,
                          updated_at=utcnow())
        if then is not None:
            then(s)
    return result


def _description(session: Session, order: Order,
                 lines: list[OrderLine] | None = None) -> str:
    if lines is None:
        assert order.id is not None
        lines = repo.order_lines(session, order.id)
    kinds = {line.insurance for line in lines}
    return f"{order.year}年度" + "、".join(DESCRIPTIONS[k] for k in sorted(kinds, reverse=True))


def create_order(rt: Runtime, principal: Principal, body: OrderCreate, *,
                 ttl: timedelta = RESIDENT_ORDER_TTL, village_code: str | None = None,
                 on_answer: Callable[[Session, OrderOut], None] | None = None) -> OrderOut:
    """``on_answer``: called with the answer inside the last transaction that makes it true
    (the order's; with a channel trade, the one recording the channel's answer) — the
    idempotency key's answer is stored there (``idempotency.service.Finish``)."""
    if principal.role not in ("resident", "agent"):
        raise Forbidden("orders are made by residents (and by agents, as QR codes)")
    if body.channel == "wechat_jsapi" and not principal.sub.startswith("wx:"):
        raise ValidationFailed("channel: wechat_jsapi is for residents logged in with WeChat")

    def answer() -> OrderOut:
        # Everything the answer holds was just written: no need to read it back.
        return render(rt, None, principal, order, lines=lines,
                      attempts=[attempt] if attempt else [], refunds=[])

    out: list[OrderOut] = []

    def then(s: Session) -> None:
        out.append(answer())
        if on_answer is not None:
            on_answer(s, out[0])

    with unit_of_work(rt.sessions) as s:
        order, lines, attempt = _write_order(rt, s, principal, body, ttl, village_code)
        description = _description(s, order, lines)
        if attempt is None:
            then(s)
    if attempt is not None:
        openid = principal.sub.removeprefix("wx:") if attempt.kind == "jsapi" else None
        _open_at_channel(rt, order, attempt, description, openid, then=then)
    return out[0]


# --------------------------------------------------------------------------- reading
def qr_image_url(rt: Runtime, order: Order) -> str | None:
    if not order.qr_token:
        return None
    return f"{rt.settings.public_base_url.rstrip('/')}/api/v1/qr/{order.qr_token}.png"


def landing_url(rt: Runtime, order: Order) -> str:
    return f"{rt.settings.public_base_url.rstrip('/')}/pay/{order.qr_token}"


def current_attempt(attempts: list[Attempt]) -> Attempt | None:
    live = [a for a in attempts if a.status in LIVE_ATTEMPT_STATES or a.status == "paid"]
    pool = live or attempts
    return pool[-1] if pool else None


def qr_content_of(rt: Runtime, order: Order, attempts: list[Attempt]) -> str | None:
    if order.channel == "aggregate_qr":
        return landing_url(rt, order)
    a = current_attempt(attempts)
    return a.qr_content if a else None


def render(rt: Runtime, session: Session | None, principal: Principal, order: Order, *,
           lines: list[OrderLine] | None = None, attempts: list[Attempt] | None = None,
           refunds: list[Refund] | None = None) -> OrderOut:
    refs = RefCodec(rt.pii.ref_key)
    assert order.id is not None
    if session is not None:
        lines = repo.order_lines(session, order.id) if lines is None else lines
        attempts = repo.attempts_of(session, order.id) if attempts is None else attempts
        refunds = repo.refunds_of(session, order.id) if refunds is None else refunds
    assert lines is not None and attempts is not None and refunds is not None
    paid = [a for a in attempts if a.status == "paid"]
    current = paid[0] if paid else current_attempt(attempts)
    receipt = None
    if session is not None and order.status in PAID_STATES:
        receipt = receipts.order_receipt(rt, session, order.id, order.channel_transaction_id)
    return OrderOut(
        order_no=order.order_no, status=order.status, year=order.year,
        amount_fen=order.amount_fen, expires_at=order.expires_at,
        items=[OrderItemOut(resident_ref=refs.make(line.resident_id, principal.sub),
                            insurance=line.insurance, tier_yuan=line.tier_yuan,
                            amount_fen=line.amount_fen)
               for line in lines],
        payment=PaymentOut(
            channel=order.channel,
            out_trade_no=current.out_trade_no if current else None,
            request_payment=(current.request_payment if current and current.kind == "jsapi"
                             else None),
            qr_content=None if order.channel == "wechat_jsapi" else qr_content_of(rt, order,
                                                                                  attempts),
            qr_image_url=None if order.channel == "wechat_jsapi" else qr_image_url(rt, order),
        ),
        paid_at=order.paid_at, channel_transaction_id=order.channel_transaction_id,
        refund_queued_fen=sum(r.amount_fen for r in refunds if r.status in REFUND_UNDER_WAY),
        refunded_fen=sum(r.amount_fen for r in refunds if r.status == "succeeded"),
        refunds=[OrderRefundOut(refund_id=r.id, amount_fen=r.amount_fen, status=r.status,  # type: ignore[arg-type]
                                reason=r.reason, requested_at=r.requested_at or r.created_at,
                                refunded_at=r.refunded_at) for r in refunds],
        receipt_no=receipt.receipt_no if receipt else None,
        receipt_url=(receipts.verify_url(rt.settings.public_base_url, receipts.token_of(receipt))
                     if receipt else None),
    )


def _visible(session: Session, principal: Principal, order: Order) -> bool:
    if order.payer_sub == principal.sub or principal.role in ("finance", "auditor", "admin"):
        return True
    if principal.role == "agent":
        return order.village_code is not None and order.village_code == principal.village_code
    return False


def get_order(rt: Runtime, session: Session, principal: Principal, order_no: str) -> OrderOut:
    order = repo.order_by_no(session, order_no)
    if order is None or not _visible(session, principal, order):
        raise NotFound(f"no order {order_no} for this caller")
    return render(rt, session, principal, order)


# --------------------------------------------------------------------------- query and close
def sync_attempt(rt: Runtime, attempt: Attempt) -> str:
    """Ask the channel about one attempt; apply a payment it reports, exactly as a notification.

    A paid answer for another amount than the attempt's is an anomaly: recorded for staff,
    the attempt taken out of the live ones, nothing applied.
    """
    channel = Channel(attempt.channel)
    status = rt.channels.clients[channel].query(attempt.out_trade_no)
    if status.state in ("paid", "refunded") and status.transaction_id:
        try:
            with unit_of_work(rt.sessions) as s:
                applied = confirm_channel_payment(s, ChannelConfirmation(
                    channel=channel.value, out_trade_no=attempt.out_trade_no,
                    transaction_id=status.transaction_id,
                    amount_fen=status.amount_fen if status.amount_fen is not None
                    else attempt.amount_fen,
                    paid_at=status.paid_at or rt.clock.now(), source="query"))
        except AmountMismatch as exc:
            record_anomaly(rt, attempt, str(exc), dict(status.raw))
            return "anomaly"
        except TransactionConflict as exc:
            # The trade holds a payment under another transaction id: it is paid (counted
            # once); the channel's second word about it is for staff.
            record_anomaly(rt, attempt, exc.detail, dict(status.raw),
                           outcome="transaction_conflict", set_aside=False)
            return status.state
        if applied.shared_transaction:
            record_anomaly(rt, attempt, f"{channel.value} reports {attempt.out_trade_no} paid "
                           f"under transaction {status.transaction_id}, which another trade "
                           "holds too; applied as the channel answered for this trade",
                           dict(status.raw), outcome="shared_transaction", set_aside=False)
    elif status.state == "pending" and attempt.status == "unknown":
        with unit_of_work(rt.sessions) as s:
            repo.move_attempt(s, attempt.id, ("unknown",), "pending", updated_at=utcnow())  # type: ignore[arg-type]
    return status.state


def close_order(rt: Runtime, principal: Principal, order_no: str) -> OrderOut:
    with unit_of_work(rt.sessions) as s:
        order = _order_to_change(s, principal, order_no, "close")
        attempts = [a for a in repo.attempts_of(s, order.id)  # type: ignore[arg-type]
                    if a.status in LIVE_ATTEMPT_STATES]
    if order.status != "pending":
        raise Conflict(f"order {order_no} is {order.status}; only a pending order can be closed",
                       code="order_not_payable")
    close_attempts(rt, order, attempts)
    with unit_of_work(rt.sessions) as s:
        now = repo.order_by_no(s, order_no)
        assert now is not None   # it was there above; orders are never deleted
        if now.status == "paid":
            raise Conflict(f"order {order_no} was paid meanwhile", code="order_not_payable")
        return render(rt, s, principal, now)


def close_attempts(rt: Runtime, order: Order, attempts: list[Attempt], *,
                   close_order: bool = True) -> None:
    """Close at the channel, then query, then close locally; "not found" never means closed."""
    for attempt in attempts:
        client = rt.channels.clients[Channel(attempt.channel)]
        if attempt.status != "creating":
            try:
                client.close(attempt.out_trade_no)
            except OutcomeUnknown as exc:
                raise ChannelTimedOut(f"{attempt.channel} gave no final answer to the close "
                                      f"({exc.code}); try again") from exc
            except ChannelError as exc:
                log.info("close of %s at %s: %s", attempt.out_trade_no, attempt.channel,
                         exc.code)
            try:
                state = sync_attempt(rt, attempt)
            except OutcomeUnknown as exc:
                raise ChannelTimedOut(f"{attempt.channel} gave no final answer to the query "
                                      f"({exc.code}); try again") from exc
            except ChannelError as exc:
                raise ChannelUnavailable(f"{attempt.channel} query failed: {exc}") from exc
            if state in ("paid", "refunded") and close_order:
                return
            if state in ("paid", "refunded", "anomaly"):
                continue
        with unit_of_work(rt.sessions) as s:
            repo.move_attempt(s, attempt.id, ATTEMPT_TRANSITIONS["closed"], "closed",  # type: ignore[arg-type]
                              updated_at=utcnow())
    if close_order:
        with unit_of_work(rt.sessions) as s:
            repo.move_order(s, order.id, ORDER_TRANSITIONS["closed"], "closed",  # type: ignore[arg-type]
                            updated_at=utcnow())


def record_anomaly(rt: Runtime, attempt: Attempt, detail: str, raw: dict[str, object], *,
                   outcome: str = "amount_mismatch", set_aside: bool = True) -> None:
    """A channel's word that disagrees with ours: kept for staff (and alerted); with
    ``set_aside`` the attempt is taken out of the live ones."""
    import json

    with unit_of_work(rt.sessions) as s:
        s.add(InboxNotification(channel=attempt.channel, out_trade_no=attempt.out_trade_no,
                                verified=True, outcome=outcome, detail=detail[:500],
                                headers={"source": "query"},
                                body=json.dumps(raw, ensure_ascii=False, default=str)))
        if set_aside:
            repo.move_attempt(s, attempt.id, ATTEMPT_TRANSITIONS["anomaly"], "anomaly",  # type: ignore[arg-type]
                              last_error=f"{outcome}: {detail}"[:500], updated_at=utcnow())
    log.error("anomaly (%s) on %s %s: %s", outcome, attempt.channel, attempt.out_trade_no,
              detail)


def may_change(principal: Principal, order: Order) -> bool:
    """Auditors read everything and change nothing; finance and admin may act on any order."""
    return order.payer_sub == principal.sub or principal.role in ("finance", "admin")


def _order_to_change(session: Session, principal: Principal, order_no: str,
                     action: str) -> Order:
    """The order a caller means to close or sync, or why not: one rule for both, checked
    before anything is asked of a channel (a sync can settle the order and post to the
    ledger)."""
    order = repo.order_by_no(session, order_no)
    if order is None or not _visible(session, principal, order):
        raise NotFound(f"no order {order_no} for this caller")
    if not may_change(principal, order):
        raise Forbidden(f"only the payer or finance staff may {action} an order")
    return order


def sync_order(rt: Runtime, principal: Principal, order_no: str) -> OrderOut:
    """Query the channel for each live attempt of an order and apply what it reports."""
    with unit_of_work(rt.sessions) as s:
        order = _order_to_change(s, principal, order_no, "sync")
        attempts = [a for a in repo.attempts_of(s, order.id)  # type: ignore[arg-type]
                    if a.status in LIVE_ATTEMPT_STATES or a.status == "closed"]
    for attempt in attempts:
        if attempt.status == "creating":
            continue
        try:
            sync_attempt(rt, attempt)
        except OutcomeUnknown as exc:
            raise ChannelTimedOut(f"{attempt.channel} gave no final answer to the query "
                                  f"({exc.code}); try again", order_no=order_no) from None
        except ChannelError as exc:
            raise ChannelUnavailable(f"{attempt.channel} query failed: {exc}",
                                     order_no=order_no) from None
    with unit_of_work(rt.sessions) as s:
        return render(rt, s, principal, repo.order_by_no(s, order_no))  # type: ignore[arg-type]
