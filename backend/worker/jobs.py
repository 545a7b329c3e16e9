"""Scheduled jobs: expiry of unpaid orders (more join in the outbox work).

Expiry closes at the channel, then queries, then closes locally — and a payment that
arrives after all that is still applied (see orders.payment_flow).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlmodel import col

from backend.db import unit_of_work, utcnow
from backend.orders import repository as repo
from backend.orders.models import Attempt, Order
from backend.orders.service import close_attempts, sync_attempt
from backend.orders.states import LIVE_ATTEMPT_STATES
from backend.runtime import Runtime

log = logging.getLogger(__name__)
# Give a payer who is entering a password at the deadline time to finish.
EXPIRY_GRACE = timedelta(minutes=2)
BATCH = 100


def expire_orders(rt: Runtime) -> int:
    """Close pending orders past their expiry; return how many were looked at."""
    cutoff = rt.clock.now() - EXPIRY_GRACE   # expiry is business time
    with unit_of_work(rt.sessions) as s:
        due = list(s.scalars(select(Order).where(col(Order.status) == "pending",
                                                 col(Order.expires_at) < cutoff)
                             .order_by(col(Order.expires_at)).limit(BATCH)))
        work = [(o, [a for a in repo.attempts_of(s, o.id)  # type: ignore[arg-type]
                     if a.status in LIVE_ATTEMPT_STATES]) for o in due]
    for order, attempts in work:
        try:
            close_attempts(rt, order, attempts)
        except Exception as exc:  # one channel's trouble must not stop the others
            log.warning("expiry of order %s deferred: %s", order.order_no, exc)
    return len(work)


# Active query (主动查单): seconds after an attempt was created at which to ask the channel,
# for trades whose notification has not come. After the last, expiry takes over.
QUERY_SCHEDULE_S = (60, 180, 300, 600, 900)


def recover_attempts(rt: Runtime) -> int:
    """Query the channel for live attempts that are due; a paid answer is applied."""
    now = utcnow()
    first = now - timedelta(seconds=QUERY_SCHEDULE_S[0])
    with unit_of_work(rt.sessions) as s:
        due = list(s.scalars(
            select(Attempt).where(col(Attempt.status).in_(("pending", "unknown")),
                                  col(Attempt.created_at) <= first,
                                  col(Attempt.queries) < len(QUERY_SCHEDULE_S),
                                  (col(Attempt.next_query_at).is_(None))
                                  | (col(Attempt.next_query_at) <= now))
            .order_by(col(Attempt.id)).limit(BATCH)))
    for attempt in due:
        try:
            sync_attempt(rt, attempt)
        except Exception as exc:  # the next round asks again
            log.info("active query of %s deferred: %s", attempt.out_trade_no, exc)
        n = attempt.queries + 1
        following = (attempt.created_at + timedelta(seconds=QUERY_SCHEDULE_S[n])
                     if n < len(QUERY_SCHEDULE_S) else None)
        with unit_of_work(rt.sessions) as s:
            s.execute(update(Attempt).where(col(Attempt.id) == attempt.id)
                      .values(queries=n, next_query_at=following))
    return len(due)
