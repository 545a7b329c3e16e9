"""The worker loop: ``python -m backend worker``, or a thread inside ``serve`` when embedded."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from backend.outbox.service import run_due
from backend.receipts.sweep import issue_receipts
from backend.reconciliation.fetching import fetch_due_statements
from backend.runtime import Runtime
from backend.worker.jobs import expire_orders, recover_attempts

log = logging.getLogger(__name__)

# (name, every N seconds, job)
SCHEDULE: list[tuple[str, float, Callable[[Runtime], int]]] = [
    ("outbox", 2.0, run_due),
    # the receipts of payments that have none yet: within seconds of the payment, off its
    # path (see receipts.sweep)
    ("issue_receipts", 3.0, issue_receipts),
    ("recover_attempts", 20.0, recover_attempts),
    ("expire_orders", 30.0, expire_orders),
    # the channels' daily statements, once published (see reconciliation.fetching)
    ("fetch_statements", 300.0, fetch_due_statements),
]


def run_forever(rt: Runtime, stop: threading.Event, tick_s: float = 1.0) -> None:
    last: dict[str, float] = {}
    import time

    while not stop.is_set():
        now = time.monotonic()
        for name, every, job in SCHEDULE:
            if now - last.get(name, -every) >= every:
                last[name] = now
                try:
                    job(rt)
                except Exception:
                    log.exception("job %s failed", name)
        stop.wait(tick_s)


def start_in_thread(rt: Runtime) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(rt, stop), daemon=True, name="worker").start()
    return stop
