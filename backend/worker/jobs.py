"""Scheduled jobs: expiry of unpaid orders (more join in the outbox work).

Expiry closes at the channel, then queries, then closes locally — and a payment that
arrives after all that is still applied (see orders.payment_flow).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select

from backend.db import unit_of_work, utcnow
from backend.orders import repository as repo
from backend.orders.models import Order
from backend.orders.service import close_attempts
from backend.orders.states import LIVE_ATTEMPT_STATES
from backend.runtime import Runtime

log = logging.getLogger(__name__)
# Give a payer who is entering a password at the deadline time to finish.
EXPIRY_GRACE = timedelta(minutes=2)
BATCH = 100


def expire_orders(rt: Runtime) -> int:
    """Close pending orders past their expiry; return how many were looked at."""
    cutoff = utcnow() - EXPIRY_GRACE
    with unit_of_work(rt.sessions) as s:
        due = list(s.scalars(select(Order).where(Order.status == "pending",
                                                 Order.expires_at < cutoff)
                             .order_by(Order.expires_at).limit(BATCH)))
        work = [(o, [a for a in repo.attempts_of(s, o.id)  # type: ignore[arg-type]
                     if a.status in LIVE_ATTEMPT_STATES]) for o in due]
    for order, attempts in work:
        try:
            close_attempts(rt, order, attempts)
        except Exception as exc:  # one channel's trouble must not stop the others
            log.warning("expiry of order %s deferred: %s", order.order_no, exc)
    return len(work)
