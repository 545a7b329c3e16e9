"""The outbox job handlers."""

from __future__ import annotations

import logging
from typing import Any

from backend.db import unit_of_work
from backend.deaths import service as deaths
from backend.orders import repository as repo
from backend.orders.models import Attempt, Order
from backend.orders.service import close_attempts, sync_attempt
from backend.orders.states import LIVE_ATTEMPT_STATES
from backend.outbox.service import handler
from backend.refunds.service import execute_refund

log = logging.getLogger(__name__)


@handler("refund")
def refund(rt: Any, payload: dict[str, Any]) -> None:
    execute_refund(rt, int(payload["refund_id"]))


@handler("sync_attempt")
def sync_one_attempt(rt: Any, payload: dict[str, Any]) -> None:
    """Ask the channel about one trade and apply what it reports (raises to retry)."""
    with unit_of_work(rt.sessions) as s:
        attempt = s.get(Attempt, int(payload["attempt_id"]))
    if attempt is None or attempt.status == "creating":
        # no trade at the channel yet (or no such attempt): nothing to ask about
        log.info("sync of attempt %s skipped: %s", payload["attempt_id"],
                 "unknown" if attempt is None else "still being created")
        return
    sync_attempt(rt, attempt)


@handler("close_for_death")
def close_for_death(rt: Any, payload: dict[str, Any]) -> None:
    """A pending order of a resident the death list names: closed at the channel, then
    here; money the channel already had for it is refunded (see backend/deaths)."""
    log.info("order %s of a deceased resident: %s", payload["order_id"],
             deaths.close_for_death(rt, int(payload["order_id"])))


@handler("close_siblings")
def close_siblings(rt: Any, payload: dict[str, Any]) -> None:
    with unit_of_work(rt.sessions) as s:
        order = s.get(Order, int(payload["order_id"]))
        if order is None:
            return
        live = [a for a in repo.attempts_of(s, order.id)  # type: ignore[arg-type]
                if a.status in LIVE_ATTEMPT_STATES]
    close_attempts(rt, order, live, close_order=False)
