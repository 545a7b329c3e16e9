"""Channel notifications (支付回调): verified on the raw bytes, a row first, applied once.

The answer to the channel depends only on whether the notification was verified and
recorded: a repeat of an applied event gets the same success answer; anything that must
change nothing (bad signature, unknown order, wrong amount, a field no channel sends, a
transaction id another trade holds) is stored for audit in its own transaction and gets the
channel's failure answer, so the channel retries — which is what turns "the notification came
before our order commit was visible" into a success later. Whatever the bytes, the answer is
the channel's success or failure answer, never a 500, and the audit row is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import anyio.to_thread
import psycopg
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend import metrics
from backend.clock import business_date, real_now
from backend.db import unit_of_work, utcnow
from backend.notifications.models import InboxNotification
from backend.orders.models import Refund
from backend.orders.payment_flow import (
    AmountMismatch,
    ChannelConfirmation,
    TransactionConflict,
    UnknownTrade,
    confirm_channel_payment,
)
from backend.outbox.service import enqueue
from backend.refunds.service import complete_refund
from backend.runtime import Runtime
from backend.sql import Statement, Tx
from payment_adapters.base import (
    Channel,
    HttpAnswer,
    Notification,
    NotificationVerifier,
    VerificationFailed,
)

log = logging.getLogger(__name__)

MAX_NOTIFICATION_BYTES = 64 * 1024
# Headers worth keeping for audit; cookies and the like are not.
KEPT_HEADERS = ("content-type", "user-agent", "wechatpay-serial", "wechatpay-timestamp",
                "wechatpay-nonce", "wechatpay-signature", "wechatpay-signature-type",
                "request-id")


# What the columns hold, and what the channels send at most (WeChat out_trade_no ≤ 32 and
# transaction_id 28, Alipay ≤ 64, ChinaUMS billNo ≤ 27; WeChat event ids are 36).
MAX_TRADE_NO, MAX_EVENT_KEY, MAX_REFUND_NO = 64, 128, 64
# A payment time outside these years is no channel's: refused before it reaches a date
# computation (9999-12-31T23:59:59-14:00 is past the last datetime once in UTC).
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


class _Reject(Exception):
    def __init__(self, outcome: str, detail: str, attempt_id: int | None = None) -> None:
        super().__init__(detail)
        self.outcome, self.detail, self.attempt_id = outcome, detail, attempt_id


def storable(text: str, limit: int | None = None) -> str:
    """Text a database column can hold: no NUL (PostgreSQL text cannot), cut to ``limit``."""
    text = text.replace("\x00", "\\x00")
    return text[:limit] if limit else text


def _body_text(body: bytes) -> str:
    # Invalid UTF-8 and NUL bytes are kept visibly (\xNN), not dropped: this is the audit copy.
    return storable(body.decode("utf-8", "backslashreplace"))


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: storable(v, 500) for k, v in headers.items() if k.lower() in KEPT_HEADERS}


# Rejected notifications — not verified, or signed but malformed: what a forger or a broken
# sender makes — are capped: the first NOTIFY_REJECTED_KEPT_PER_MINUTE per channel and minute
# are inbox rows (body cut to REJECTED_BODY_BYTES), the rest only counted in
# notification_rejections. Verified ones (applied, unknown order, anomalies) and our own
# errors are always kept in full.
CAPPED_OUTCOMES = frozenset({"rejected", "malformed"})
REJECTED_BODY_BYTES = 4096

_COUNT_REJECTION = Statement(
    """INSERT INTO notification_rejections (channel, minute, outcome, count, first_detail,
                                           first_headers, first_body, last_at)
       VALUES (:channel, :minute, :outcome, :count, :detail, :headers, :body, :now)
       ON CONFLICT (channel, minute, outcome)
       DO UPDATE SET count = notification_rejections.count + excluded.count,
                     last_at = excluded.last_at""")


_ASYNC_COMMIT = Statement("SET LOCAL synchronous_commit TO OFF", prepare=False)


def flush_rejections(rt: Runtime) -> None:
    """Write the counts of rejected notifications this process has gathered (at most a
    second's: a flood costs one write a second, not one per forgery; the Runtime's close
    writes the last ones)."""
    counts = rt.rejections.take()
    if not counts:
        return
    try:
        with unit_of_work(rt.sessions) as s:
            if rt.postgres:
                # a count of forged notifications: not worth waiting for the WAL flush (a
                # crash may lose the last few milliseconds' counts, nothing else)
                Tx(s).rowcount(_ASYNC_COMMIT)
            for (channel, minute, outcome), c in counts.items():
                Tx(s).rowcount(_COUNT_REJECTION, channel=channel, minute=minute,
                               outcome=outcome, count=c.count, detail=c.sample[0],
                               headers=c.sample[1], body=c.sample[2], now=c.last_at)
    except Exception:
        rt.rejections.put_back(counts)      # written with the next ones
        raise


def _audit(rt: Runtime, channel: Channel, headers: Mapping[str, str], body: bytes,
           outcome: str, detail: str, out_trade_no: str | None = None) -> bool:
    """The audit copy of a notification that changed nothing: True if kept in full (an inbox
    row), False if only counted (a rejected one over the minute's allowance)."""
    if outcome in CAPPED_OUTCOMES:
        if len(body) > REJECTED_BODY_BYTES:
            detail = f"[body of {len(body)} bytes, the first {REJECTED_BODY_BYTES} kept] {detail}"
            body = body[:REJECTED_BODY_BYTES]
        now = real_now()
        minute = now.replace(second=0, microsecond=0)
        allowed = rt.settings.notify_rejected_kept_per_minute
        seen = rt.limiter.hit(f"notify-rejected:{channel.value}:{int(minute.timestamp())}", 120)
        if seen > allowed:
            if seen == allowed + 1:
                log.warning("%s: over %d rejected notifications this minute; the rest of the "
                            "minute's are counted in notification_rejections, not kept",
                            channel.value, allowed)
            key = (channel.value, minute, outcome)
            if rt.rejections.add(key, (storable(detail, 500), _kept_headers(headers),
                                       _body_text(body)), now):
                flush_rejections(rt)
            return False
    with unit_of_work(rt.sessions) as s:
        s.add(InboxNotification(
            channel=channel.value, dedupe_key=None,
            out_trade_no=storable(out_trade_no, MAX_TRADE_NO) if out_trade_no else None,
            verified=outcome not in ("rejected", "error"), outcome=outcome,
            detail=storable(detail, 500), headers=_kept_headers(headers),
            body=_body_text(body)))
    return True


def _check_fields(note: Notification) -> None:
    """Refuse what no channel sends, before it reaches a column or a date computation."""
    for name, value, limit in (("out_trade_no", note.out_trade_no, MAX_TRADE_NO),
                               ("transaction_id", note.transaction_id, MAX_TRADE_NO),
                               ("event id", note.dedupe_key, MAX_EVENT_KEY),
                               ("out_refund_no", note.out_refund_no, MAX_REFUND_NO),
                               ("refund_id", note.refund_id, MAX_REFUND_NO)):
        if value is None:
            continue
        if len(value) > limit:
            raise _Reject("malformed", f"{name} is {len(value)} characters, more than {limit}")
        if not value.isprintable():
            raise _Reject("malformed", f"{name} has control characters")
    if note.paid_at is not None:
        try:
            inside = EARLIEST <= note.paid_at.astimezone(UTC) < LATEST
        except (OverflowError, ValueError):
            inside = False
        if not inside:
            raise _Reject("malformed", f"time {note.paid_at.isoformat()} is out of range")


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
        headers=_kept_headers(headers), body=_body_text(body), now=utcnow()) is not None


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
        except TransactionConflict as exc:
            raise _Reject("transaction_conflict", exc.detail, exc.attempt_id) from None
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


# PostgreSQL: migration 0015's function, in autocommit: one round trip, one transaction.
_APPLY_AT_ONCE = (
    "SELECT apply_channel_notification(%s::text, %s::text, %s::text, %s::bigint, "
    "%s::timestamptz, %s::date, %s::timestamptz, %s::text, %s::json, %s::text, "
    "'notification')")
GENERAL_PATH = "PF001"     # the function's answer for anything but the common case
NOTIFY_POOL_WAIT_S = 3.0


def _at_once_params(rt: Runtime, channel: Channel, note: Notification,
                    headers: Mapping[str, str], body: bytes) -> tuple[Any, ...] | None:
    """The function's arguments, or None where it does not apply."""
    if not (rt.postgres and note.kind == "payment" and note.succeeded and note.transaction_id):
        return None
    paid_at = note.paid_at or rt.clock.now()
    return (channel.value, note.out_trade_no, note.transaction_id, note.amount_fen, paid_at,
            business_date(paid_at), utcnow(), note.dedupe_key, Json(_kept_headers(headers)),
            _body_text(body))


def _at_once_answer(row: tuple[Any, ...] | None) -> tuple[str, str]:
    assert row is not None
    outcome, _, order_no = str(row[0]).partition(" ")
    return outcome, f"order {order_no}"


def _apply_at_once(rt: Runtime, channel: Channel, note: Notification,
                   headers: Mapping[str, str], body: bytes) -> tuple[str, str] | None:
    """The common case of a payment notification on PostgreSQL — a first delivery of a
    pending order's trade, every line still unpaid, or a repeat of one applied — in one
    statement: ``apply_channel_notification`` (migration 0015) runs the statements of
    :func:`_apply` and :func:`_record_event` in the database, in the same order and under
    the same locks. For anything else it raises ``PF001`` having written nothing, and this
    returns None: the caller takes the general path. (On a connection of the engine's pool:
    the request threads' path; :func:`handle_async` is the event loop's.)"""
    params = _at_once_params(rt, channel, note, headers, body)
    if params is None:
        return None
    pooled = rt.engine.raw_connection()
    try:
        conn = cast(psycopg.Connection[Any], pooled.driver_connection)
        conn.autocommit = True
        try:
            row = conn.execute(_APPLY_AT_ONCE, params).fetchone()
        except psycopg.Error as exc:
            if exc.sqlstate != GENERAL_PATH:
                # As on the event loop: the general path looks at it afresh (a transaction
                # id another trade's payment took meanwhile is a transaction conflict there,
                # audited and queried, not an internal error). The statement is all or
                # nothing, so what it may have committed is a repeat there.
                log.warning("%s notification: the one-statement path failed (%s); trying "
                            "the general path", channel.value, exc.sqlstate)
            return None
        finally:
            conn.autocommit = False
    finally:
        pooled.close()
    return _at_once_answer(row)


class NotifyPool(AsyncConnectionPool):
    """The notification pool, which checks its idle connections as soon as one is found
    dead: after a PostgreSQL restart every connection it held is dead, and without the
    check each would fail a notification of its own (the general path then takes it, but
    with one ERROR and a wasted round trip each) before the pool replaced it."""

    _checking: asyncio.Task[None] | None = None

    def check_soon(self) -> None:
        """Test every idle connection now, in the background (one check at a time),
        replacing the dead ones."""
        if self._checking is not None and not self._checking.done():
            return

        async def check() -> None:
            try:
                await self.check()
            except Exception as exc:  # the next dead connection asks again
                log.warning("the notification pool's check failed: %s", exc)

        self._checking = asyncio.get_running_loop().create_task(check())


async def open_notify_pool(rt: Runtime) -> NotifyPool:
    """The event loop's own connections for :func:`handle_async` (autocommit; opened in the
    background, so a database that is down does not stop the service from starting)."""
    pool = NotifyPool(
        rt.engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
        min_size=rt.settings.notify_threads, max_size=rt.settings.notify_threads, open=False,
        name="notifications", kwargs={"autocommit": True},
        # a connection not to be had soon (the database down or out of connections): the
        # general path takes the notification, well within the channel's own timeout
        timeout=NOTIFY_POOL_WAIT_S)
    await pool.open(wait=False)
    return pool


async def _apply_at_once_async(pool: NotifyPool, rt: Runtime, channel: Channel,
                               note: Notification, headers: Mapping[str, str],
                               body: bytes) -> tuple[str, str] | None:
    params = _at_once_params(rt, channel, note, headers, body)
    if params is None:
        return None
    async with pool.connection() as conn:
        try:
            cur = await conn.execute(_APPLY_AT_ONCE, params)
        except psycopg.Error as exc:
            if exc.sqlstate == GENERAL_PATH:
                return None
            raise
        row = await cur.fetchone()
    return _at_once_answer(row)


async def handle_async(rt: Runtime, pool: NotifyPool | None, channel: Channel,
                       headers: Mapping[str, str], body: bytes) -> HttpAnswer:
    """A notification, answered on the event loop when it is the common case (verified,
    then one statement on ``pool``: no thread, one round trip); anything else — not
    verified, not a payment, not the common case, our own failure — goes to :func:`handle`
    in a thread, which looks at it afresh and answers and records it."""
    if pool is not None and len(body) <= MAX_NOTIFICATION_BYTES:
        verifier = rt.channels.verifiers[channel]
        applied = None
        try:
            note = verifier.verify(headers, body, real_now())
            _check_fields(note)
            applied = await _apply_at_once_async(pool, rt, channel, note, headers, body)
        except (VerificationFailed, _Reject):
            pass
        except PoolTimeout:
            log.warning("%s notification: no connection of the notification pool within %s s; "
                        "the general path takes it", channel.value, NOTIFY_POOL_WAIT_S)
        except psycopg.OperationalError as exc:
            # the connection is gone (PostgreSQL restarted, or the network cut it): the pool
            # drops it; its other idle connections are most likely dead too
            log.warning("%s notification: a connection of the notification pool was lost "
                        "(%s); the general path takes it, and the pool checks the others",
                        channel.value, str(exc).strip().splitlines()[0][:200] if str(exc)
                        else type(exc).__name__)
            pool.check_soon()
        except Exception:
            log.exception("%s notification: the one-statement path failed; trying the "
                          "general path", channel.value)
        if applied is not None:
            _count(channel, applied[0])
            log.debug("%s notification for %s: %s", channel.value, note.out_trade_no,
                      applied[0])
            return verifier.success_answer()
    # (the one statement is not tried twice)
    return await anyio.to_thread.run_sync(
        partial(handle, rt, channel, headers, body, at_once=pool is None),
        limiter=rt.notify_limiter)


def handle(rt: Runtime, channel: Channel, headers: Mapping[str, str], body: bytes, *,
           at_once: bool = True) -> HttpAnswer:
    """Every input gets the channel's success or failure answer; never an exception.
    ``at_once``: try the one-statement path first (PostgreSQL)."""
    verifier = rt.channels.verifiers[channel]
    try:
        return _handle(rt, channel, verifier, headers, body, at_once)
    except Exception:
        _count(channel, "error")
        # A defect of ours, or the database gone: the channel retries; the audit row is
        # kept if the database still takes it.
        log.exception("%s notification failed", channel.value)
        try:
            _audit(rt, channel, headers, body, "error", "failed while handling; see the log")
        except Exception:
            log.exception("%s notification could not be stored for audit", channel.value)
        return verifier.failure_answer("internal error")


def _handle(rt: Runtime, channel: Channel, verifier: NotificationVerifier,
            headers: Mapping[str, str], body: bytes, at_once: bool) -> HttpAnswer:
    if len(body) > MAX_NOTIFICATION_BYTES:
        _count(channel, "rejected")
        _audit(rt, channel, headers, body, "rejected",
               f"body of {len(body)} bytes is over {MAX_NOTIFICATION_BYTES}")
        return verifier.failure_answer("body too large")
    try:
        note = verifier.verify(headers, body, real_now())
    except VerificationFailed as exc:
        _count(channel, "rejected")
        if _audit(rt, channel, headers, body, "rejected", str(exc)):
            log.warning("%s notification rejected: %s", channel.value, exc)
        return verifier.failure_answer(str(exc))
    try:
        _check_fields(note)
        applied = _apply_at_once(rt, channel, note, headers, body) if at_once else None
        if applied is not None:
            outcome, detail = applied
        else:
            with unit_of_work(rt.sessions) as s:
                outcome, detail = _apply(s, channel, note, rt.clock.now())
                if outcome != "repeat":
                    _record_event(s, channel, note, headers, body, outcome, detail)
    except _Reject as exc:
        _count(channel, exc.outcome)
        level = logging.ERROR if exc.outcome == "transaction_conflict" else logging.WARNING
        if _audit(rt, channel, headers, body, exc.outcome, exc.detail, note.out_trade_no):
            log.log(level, "%s notification for %s not applied (%s): %s", channel.value,
                    storable(note.out_trade_no, MAX_TRADE_NO), exc.outcome, exc.detail)
        if exc.attempt_id is not None:
            _query_soon(rt, exc.attempt_id)
        return verifier.failure_answer(exc.detail)
    _count(channel, outcome)
    log.log(logging.DEBUG if outcome in ("applied", "repeat") else logging.INFO,
            "%s notification for %s: %s", channel.value, note.out_trade_no, outcome)
    return verifier.success_answer()



def _count(channel: Channel, outcome: str) -> None:
    metrics.NOTIFICATIONS.labels(channel.value, outcome).inc()


def _query_soon(rt: Runtime, attempt_id: int) -> None:
    """Have the worker ask the channel about this trade, whatever its state here (an
    expired order's code may still be paid): what the channel answers about the
    out_trade_no itself settles it (orders.service.sync_attempt), retried until it does."""
    with unit_of_work(rt.sessions) as s:
        enqueue(s, "sync_attempt", {"attempt_id": attempt_id})
