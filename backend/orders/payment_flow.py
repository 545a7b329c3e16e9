"""Payment confirmed (支付确认): the one function that applies money that came in.

A channel notification, an active query and an agent's cash or POS collection all end in
:func:`apply_payment`, so money is applied the same way whoever saw it first: each bill
line marked paid at most once, any surplus kept as money received and queued for refund,
the order moved through its transition table, and one balanced ledger entry — all in the
caller's single transaction.

This is the hot path of every notification, so its statements are SQL text run at the
driver (``backend/sql.py``) and round trips are few: one statement locks the attempt with
its order, the payment is inserted with ``ON CONFLICT DO NOTHING`` (a first delivery costs
no extra look-up; only a repeat is looked at, to tell it from an anomaly), and all bill lines
of an order are marked paid by one ``UPDATE … FROM order_lines``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlmodel import col

from backend.clock import business_date
from backend.db import utcnow
from backend.ledger import service as ledger
from backend.ledger.models import COLLECTED, DUPLICATE
from backend.orders.models import Attempt, Order, Refund
from backend.orders.states import ATTEMPT_TRANSITIONS, LIVE_ATTEMPT_STATES, ORDER_TRANSITIONS
from backend.outbox.service import enqueue
from backend.sql import Statement, Tx

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


class TransactionConflict(Exception):
    """The channel reports a payment under a transaction id we already hold for another
    trade, or another transaction id for a trade we hold as paid: not a repeat, an anomaly.

    A notification that says so is refused (the channel retries) and the trade is queried;
    what the channel answers about this out_trade_no settles it."""

    def __init__(self, detail: str, attempt_id: int) -> None:
        super().__init__(detail)
        self.detail, self.attempt_id = detail, attempt_id


class AlreadyPaid(Exception):
    """Money an agent is holding in hand for an item someone else paid: refuse, not refund."""


@dataclass(frozen=True)
class Applied:
    outcome: str                     # applied | duplicate | partly_duplicate | repeat
    order_no: str
    refund_queued_fen: int = 0
    payment_id: int | None = None
    # a queried payment whose transaction id another trade holds too (applied; for staff)
    shared_transaction: bool = False


def _in(states: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


# The hot path's statements (see backend/sql.py for why they are text).
_LOCK_SQL = """SELECT attempts.id, attempts.amount_fen, orders.id, orders.order_no,
                     orders.status, orders.year, orders.channel, orders.payer_role
              FROM attempts JOIN orders ON orders.id = attempts.order_id
              WHERE attempts.out_trade_no = :no AND attempts.channel = :ch"""
# SQLite has no FOR UPDATE: its transactions begin IMMEDIATE, one writer at a time.
_LOCK_ATTEMPT = Statement(_LOCK_SQL, postgresql=_LOCK_SQL + " FOR UPDATE")
# A trade is paid once (unique attempt_id), and a transaction id is one trade's (unique
# channel + transaction_id, but for payments marked shared_transaction). A notification's
# payment is not written when its transaction id is already another trade's — told apart
# after, from the rows; two such notifications at once meet the unique index instead. What
# the channel answers to a query about the out_trade_no is written all the same, marked
# shared. (The casts give PostgreSQL one type for a parameter used twice.)
_INSERT_SQL = """INSERT INTO payments (attempt_id, order_id, channel, transaction_id, amount_fen,
                                      paid_at, business_date, source, shared_transaction,
                                      created_at)
                 SELECT :attempt_id, :order_id, CAST(:channel AS VARCHAR(16)),
                        CAST(:transaction_id AS VARCHAR(64)), :amount_fen, :paid_at,
                        :business_date, :source, :shared, :now
                 WHERE {guard}
                 ON CONFLICT (attempt_id) WHERE attempt_id IS NOT NULL DO NOTHING RETURNING id"""
_INSERT_PAYMENT = Statement(_INSERT_SQL.format(guard="""NOT EXISTS (
    SELECT 1 FROM payments WHERE channel = :channel AND transaction_id = :transaction_id
    AND NOT shared_transaction AND attempt_id <> :attempt_id)"""))
_INSERT_QUERIED_PAYMENT = Statement(_INSERT_SQL.format(guard="1 = 1"))
_PAYMENTS_LIKE = Statement(
    """SELECT attempt_id, transaction_id FROM payments
       WHERE attempt_id = :attempt_id OR (channel = :channel AND transaction_id = :transaction_id
                                          AND NOT shared_transaction)
       ORDER BY id""")
TXN_INDEX = "uq_payment_txn_once"
_SAVEPOINT = Statement("SAVEPOINT queried_payment", prepare=False)
_ROLLBACK_TO_SAVEPOINT = Statement("ROLLBACK TO SAVEPOINT queried_payment", prepare=False)
_ATTEMPT_PAID = Statement(
    f"""UPDATE attempts SET status = 'paid', transaction_id = :transaction_id,
               paid_at = :paid_at, updated_at = :now
        WHERE id = :id AND status IN {_in(ATTEMPT_TRANSITIONS["paid"])}""")
_OTHER_LIVE_ATTEMPT = Statement(
    f"""SELECT id FROM attempts WHERE order_id = :order_id AND id <> :id
        AND status IN {_in(LIVE_ATTEMPT_STATES)} LIMIT 1""")
_ORDER_PAID = Statement(
    f"""UPDATE orders SET status = 'paid', paid_at = :paid_at,
               channel_transaction_id = :transaction_id, updated_at = :now
        WHERE id = :id AND status IN {_in(ORDER_TRANSITIONS["paid"])}""")
# One statement marks every line of the order that is still unpaid. PostgreSQL returns the
# joined order line's columns too; SQLite's RETURNING sees only the updated table, so there
# the lines are read after.
_MARK_SQL = """UPDATE bill_lines SET status = 'paid', paid_payment_id = :payment_id,
                     paid_at = :paid_at, paid_tier_yuan = order_lines.tier_yuan,
                     paid_fen = order_lines.amount_fen
              FROM order_lines
              WHERE bill_lines.id = order_lines.bill_line_id
                AND order_lines.order_id = :order_id AND bill_lines.status = 'unpaid'
              RETURNING bill_lines.id"""
_MARK_LINES_PAID = Statement(_MARK_SQL, postgresql=_MARK_SQL + """, order_lines.insurance,
    order_lines.amount_fen, order_lines.village_code, order_lines.town_code""")
_ORDER_LINES = Statement(
    """SELECT bill_line_id, insurance, amount_fen, village_code, town_code
       FROM order_lines WHERE order_id = :order_id ORDER BY bill_line_id""")
_PAYMENT_LINE_COLUMNS = ("payment_id", "bill_line_id", "amount_fen", "applied")
_DUPLICATE_REFUND_LINES = Statement(
    """INSERT INTO refund_lines (refund_id, payment_line_id, amount_fen, applied)
       SELECT :refund_id, id, amount_fen, false FROM payment_lines
       WHERE payment_id = :payment_id AND NOT applied""")


def _in_step(session: Session, model: type[Any], id_: int, **values: Any) -> None:
    """What an ORM UPDATE's synchronize_session did: a caller's copy of a row changed here
    shows the new values, without a reload (and still after commit)."""
    obj = session.identity_map.get(identity_key(model, id_))
    if obj is not None:
        for name, value in values.items():
            set_committed_value(obj, name, value)


def confirm_channel_payment(session: Session, c: ChannelConfirmation) -> Applied:
    tx = Tx(session)
    # Locks the attempt and its order together: every confirmation of one trade, and of
    # the other trades of the same order, queues here.
    row = tx.one(_LOCK_ATTEMPT, no=c.out_trade_no, ch=c.channel)
    if row is None:
        raise UnknownTrade(c.out_trade_no)
    attempt_id, attempt_fen, order_id, order_no, order_status, year, order_channel, role = row
    if c.amount_fen != attempt_fen:
        raise AmountMismatch(f"the channel reports {c.amount_fen} fen, the attempt is for "
                             f"{attempt_fen} fen")
    day = business_date(c.paid_at)
    now = utcnow()
    queried = c.source == "query"
    shared = queried and shared_transaction(session, c.channel, c.transaction_id, attempt_id)
    values = dict(attempt_id=attempt_id, order_id=order_id, channel=c.channel,
                  transaction_id=c.transaction_id, amount_fen=c.amount_fen, paid_at=c.paid_at,
                  business_date=day, source=c.source, now=now)
    # The trade's unique payment is the repeat check: no look-up before the insert.
    if queried:
        # a savepoint: another trade's payment under this id may commit meanwhile
        tx.rowcount(_SAVEPOINT)
    try:
        inserted = tx.one(_INSERT_QUERIED_PAYMENT if queried else _INSERT_PAYMENT,
                          shared=shared, **values)
    except IntegrityError as exc:
        if TXN_INDEX not in str(exc.orig) and "transaction_id" not in str(exc.orig):
            raise
        if not queried:
            raise TransactionConflict(
                f"{c.channel} transaction {c.transaction_id} was applied to another trade at "
                f"the same moment; {c.out_trade_no} is not a repeat of it", attempt_id) from None
        # what the channel answers for this trade is applied all the same: shared
        tx.rowcount(_ROLLBACK_TO_SAVEPOINT)
        shared = True
        inserted = tx.one(_INSERT_QUERIED_PAYMENT, shared=True, **values)
    if inserted is None:
        _repeat_or_conflict(tx, c, attempt_id)
        return Applied("repeat", order_no)
    payment_id = int(inserted[0])
    if tx.rowcount(_ATTEMPT_PAID, id=attempt_id, transaction_id=c.transaction_id,
                   paid_at=c.paid_at, now=now):
        _in_step(session, Attempt, attempt_id, status="paid", transaction_id=c.transaction_id,
                 paid_at=c.paid_at, updated_at=now)
    if (order_channel in MULTI_ATTEMPT_CHANNELS or role == "agent") and \
            tx.one(_OTHER_LIVE_ATTEMPT, order_id=order_id, id=attempt_id) is not None:
        # Two wallets opened one aggregate QR: close the other trade before it, too, is
        # paid (if it already was, closing finds that and the surplus is refunded).
        enqueue(session, "close_siblings", {"order_id": order_id, "paid_attempt": attempt_id})
    applied = apply_payment(
        session, OrderFacts(order_id, order_no, order_status, year),
        PaymentFacts(payment_id, c.channel, c.transaction_id, c.amount_fen, c.paid_at, day),
        debit=ledger.channel_clearing(c.channel), entry_kind="channel_payment")
    return replace(applied, shared_transaction=True) if shared else applied


def _repeat_or_conflict(tx: Tx, c: ChannelConfirmation, attempt_id: int) -> None:
    """Nothing was written: a repeat of this trade's payment, or an anomaly (raised)."""
    rows = tx.all(_PAYMENTS_LIKE, attempt_id=attempt_id, channel=c.channel,
                  transaction_id=c.transaction_id)
    mine = [txn for attempt, txn in rows if attempt == attempt_id]
    if mine and mine[0] == c.transaction_id:
        return
    if mine:
        raise TransactionConflict(
            f"{c.channel} reports {c.out_trade_no} paid under transaction {c.transaction_id}, "
            f"but it was paid under {mine[0]}", attempt_id)
    raise TransactionConflict(
        f"{c.channel} transaction {c.transaction_id} is already applied to another trade; "
        f"{c.out_trade_no} is not a repeat of it", attempt_id)


def shared_transaction(session: Session, channel: str, transaction_id: str,
                       attempt_id: int) -> bool:
    """Whether another trade holds a payment under this transaction id."""
    rows = Tx(session).all(_PAYMENTS_LIKE, attempt_id=attempt_id, channel=channel,
                           transaction_id=transaction_id)
    return any(attempt != attempt_id for attempt, _ in rows)


def apply_payment(session: Session, order: OrderFacts, payment: PaymentFacts, *,
                  debit: ledger.Account, entry_kind: str, refundable: bool = True) -> Applied:
    """Mark the order's bill lines paid by ``payment`` and post the ledger entry."""
    tx = Tx(session)
    # The partial unique index on applied payment lines is the backstop if anything ever
    # got past the UPDATE. Only when some line was paid already are all the lines read.
    won = tx.all(_MARK_LINES_PAID, order_id=order.id, payment_id=payment.id,
                 paid_at=payment.paid_at)
    won_ids = {line_id for line_id, *_ in won}
    lines: list[tuple[Any, ...]] = []
    if tx.postgres and sum(row[2] for row in won) == payment.amount_fen:
        lines = sorted(won)
    if not lines:
        lines = tx.all(_ORDER_LINES, order_id=order.id)
    duplicate_fen = sum(fen for line_id, _, fen, _, _ in lines if line_id not in won_ids)
    if duplicate_fen and not refundable:
        raise AlreadyPaid(order.order_no)
    tx.insert_rows("payment_lines", _PAYMENT_LINE_COLUMNS, [
        (payment.id, line_id, fen, line_id in won_ids) for line_id, _, fen, _, _ in lines])
    legs: list[ledger.Leg] = []
    for line_id, insurance, fen, village, town in lines:
        where = {"village_code": village, "town_code": town, "channel": payment.channel}
        if line_id in won_ids:
            legs += [ledger.Leg(debit, fen, measure=COLLECTED, **where),
                     ledger.Leg(ledger.contributions(insurance, order.year), -fen, **where)]
        else:
            legs += [ledger.Leg(debit, fen, measure=DUPLICATE, **where),
                     ledger.Leg(ledger.REFUNDS, -fen, **where)]
    reason = f"order {order.order_no} paid by {payment.channel} {payment.transaction_id}"
    if duplicate_fen:
        # refunded automatically: approved when made, through the payment's own channel
        now = utcnow()
        refund_id = session.execute(insert(Refund).values(
            payment_id=payment.id, amount_fen=duplicate_fen, reason="duplicate",
            out_refund_no=new_refund_no(), status="queued", method="channel",
            requested_by="system", requested_at=payment.paid_at, approved_by="system",
            approved_at=payment.paid_at, created_at=now,
            updated_at=now).returning(col(Refund.id))).scalar_one()
        tx.rowcount(_DUPLICATE_REFUND_LINES, refund_id=refund_id, payment_id=payment.id)
        enqueue(session, "refund", {"refund_id": refund_id})
        reason += f"; {duplicate_fen} fen already paid by others, to refund"
    ledger.post_entry(session, kind=entry_kind, reason=reason,
                      business_date=payment.business_date, occurred_at=payment.paid_at,
                      legs=legs, payment_id=payment.id)
    deceased_fen = 0
    if order.status == "closed" and won_ids:
        # Money for a closed order may pay an item of a resident who has died since: a
        # deceased resident is not charged, so that is refunded too (rare: not the hot path).
        from backend.deaths.service import refund_late_payment  # (deaths imports this)
        deceased_fen = refund_late_payment(session, order.id, order.year, payment.id,
                                           payment.paid_at)
    if order.status in ORDER_TRANSITIONS["paid"]:
        now = utcnow()
        if tx.rowcount(_ORDER_PAID, id=order.id, paid_at=payment.paid_at,
                       transaction_id=payment.transaction_id, now=now):
            _in_step(session, Order, order.id, status="paid", paid_at=payment.paid_at,
                     channel_transaction_id=payment.transaction_id, updated_at=now)
    if duplicate_fen == 0:
        outcome = "applied"
    elif duplicate_fen == payment.amount_fen:
        outcome = "duplicate"
    else:
        outcome = "partly_duplicate"
    return Applied(outcome, order.order_no, duplicate_fen + deceased_fen, payment.id)


def new_refund_no() -> str:
    return "RF" + secrets.token_hex(10).upper()   # 22: ChinaUMS's refundOrderId is ≤ 27
