"""The worker's receipt sweep: every payment gets its receipt within seconds, off its path.

A payment by a channel (a notification, the worker's active query, a day's statement) is
written without its receipt: the notification's hot path (PostgreSQL's
``apply_channel_notification``, ``handle_async``, ``apply_payment``) stays as it is, and a
receipt can never fail or slow a payment. Every few seconds this job finds the payments
that have no receipt yet and issues theirs (``service.write_receipt``, as ``issue`` does:
the content as the registry is now, signed, ``issued_at`` the business clock's now).
Agents' collections and departments' bill covers issue theirs in their own transaction and
are not found; a read before the sweep still issues (the lazy path stays,
``service.order_receipt``), and the sweep then finds it issued. Two workers at once may
find the same payments: the insert is ``ON CONFLICT DO NOTHING`` on the unique
``payment_id``, so one row each, whoever was first (the other's work is wasted, not wrong).

**Finding them at a million payments.** The job keeps its place per process (on the
runtime, like the statement fetch's backoff): ``mark``, the lowest payment id not yet known
to have a receipt. Each run looks only at ids from ``mark`` up — a range of the primary key,
anti-joined with the receipts' unique ``payment_id`` index, in batches of ``BATCH`` — and
then moves ``mark`` up to the newest payment written more than ``SETTLE`` ago. Ids are
handed out when a payment is written, not when it commits: a payment whose transaction is
still open is invisible to a run and may commit below a newer one, so the mark trails by
``SETTLE`` and that range is looked at again each run (a few hundred ids at a district's
pace; the anti-join finds nothing there once issued). A transaction open longer than that
(a large statement's reconciliation) is still caught: each run also looks again at
``AUDIT_SPAN`` ids below the mark, from a cursor that walks from the first payment to the
mark and starts over, so every payment is looked at again within
``payments / AUDIT_SPAN`` runs (a million: 100 runs, about five minutes). A new process
starts with the mark at 0: its first run walks the whole table once (the primary key's
range with an index probe per payment; not measured at a million here).

One receipt that cannot be issued (a defect: the payment's content cannot be built) is
logged and tried again after ``RETRY_AFTER_S``, and holds up neither the others nor the
mark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select
from sqlmodel import col

from backend.db import unit_of_work, utcnow
from backend.orders.models import Payment
from backend.receipts.models import Receipt
from backend.receipts.service import write_receipt
from backend.runtime import Runtime

log = logging.getLogger(__name__)

#: Payments looked up and issued per batch (one transaction each on PostgreSQL).
BATCH = 200
#: At most this many batches a run: the worker's other jobs wait while it runs.
MAX_BATCHES = 5
#: How long a payment's transaction may take to commit after its id was handed out before
#: the mark passes its id (real time: ``payments.created_at`` is the real clock).
SETTLE = timedelta(seconds=30)
#: Ids below the mark looked at again each run (see the module).
AUDIT_SPAN = 10_000
RETRY_AFTER_S = 60.0


@dataclass
class Sweep:
    """The sweep's place in one process."""

    mark: int = 0                 # payments below it are known to have their receipts
    audit: int = 0                # where the look again below the mark is
    #: payment ids whose receipt failed, and when (monotonic) to try again
    failed: dict[int, float] = field(default_factory=dict)
    now: Callable[[], datetime] = utcnow
    monotonic: Callable[[], float] = time.monotonic


def issue_receipts(rt: Runtime, *, sweep: Sweep | None = None, batch: int = BATCH,
                   max_batches: int = MAX_BATCHES) -> int:
    """Issue the receipts of payments that have none yet; return how many were issued."""
    if sweep is None:
        # one per runtime (a worker process), kept on it: Runtime is not hashable
        sweep = rt.__dict__.setdefault("receipt_sweep", Sweep())
    issued = 0
    # The payments written long enough ago for every lower id to have committed: found
    # first, so that whatever it counts is visible to the anti-join that follows.
    with rt.sessions() as s:
        settled = s.scalar(select(func.max(col(Payment.id))).where(
            col(Payment.id) >= sweep.mark, col(Payment.created_at) < sweep.now() - SETTLE))
    # ids from the mark up, in batches
    after, done = sweep.mark - 1, True
    for n in range(max_batches):
        ids = _unissued(rt, after, None, batch)
        if ids:
            issued += _issue(rt, sweep, ids)
            after = ids[-1]
        if len(ids) < batch:
            break
        if n == max_batches - 1:
            done = False             # more are waiting: the next run goes on from here
    if settled is not None:         # never past a payment that may not have committed
        sweep.mark = max(sweep.mark, settled + 1 if done else min(settled + 1, after + 1))
    # a slice below the mark, looked at again
    if sweep.mark > 0:
        if sweep.audit >= sweep.mark:
            sweep.audit = 0
        end = min(sweep.audit + AUDIT_SPAN, sweep.mark)
        ids = _unissued(rt, sweep.audit - 1, end, batch)
        sweep.audit = ids[-1] + 1 if len(ids) == batch else end
        late = [pid for pid in ids if pid not in sweep.failed]   # those are retried below
        if late:
            log.warning("receipt sweep: %d payment(s) below the mark had no receipt (a "
                        "transaction that committed late): issuing", len(late))
            issued += _issue(rt, sweep, late)
    # receipts that failed before, when due
    due = [pid for pid, at in sweep.failed.items() if sweep.monotonic() >= at]
    if due:
        issued += _issue(rt, sweep, due)
    if issued:
        log.info("receipt sweep: %d receipt(s) issued", issued)
    return issued


def _unissued(rt: Runtime, after: int, before: int | None, limit: int) -> list[int]:
    """Ids of payments above ``after`` (and below ``before``) without a receipt, lowest
    first: the primary key's range, anti-joined with receipts' unique payment_id."""
    query = (select(col(Payment.id))
             .where(col(Payment.id) > after,
                    ~exists().where(col(Receipt.payment_id) == col(Payment.id)))
             .order_by(col(Payment.id)).limit(limit))
    if before is not None:
        query = query.where(col(Payment.id) < before)
    with rt.sessions() as s:
        return [int(i) for i in s.scalars(query) if i is not None]


def _issue(rt: Runtime, sweep: Sweep, ids: list[int]) -> int:
    """Issue these payments' receipts. On PostgreSQL a batch is one transaction (a receipt
    takes no lock a payment waits for); on SQLite, where a transaction holds the one write
    lock, each receipt is its own, so a notification waits for one receipt at most."""
    per_transaction = len(ids) if rt.postgres else 1
    issued = 0
    for group in _chunks(ids, per_transaction):
        try:
            with unit_of_work(rt.sessions) as s:
                now = rt.clock.now()
                # found without one: written without looking again (another worker's meanwhile
                # is kept, and not counted)
                written = sum(bool(write_receipt(s, rt.receipt_key, pid, now)) for pid in group)
        except Exception:
            if len(group) > 1:       # find the one that fails; the others are issued
                issued += sum(_issue(rt, sweep, [pid]) for pid in group)
                continue
            log.exception("receipt sweep: the receipt of payment %s could not be issued; "
                          "tried again in %.0f s", group[0], RETRY_AFTER_S)
            sweep.failed[group[0]] = sweep.monotonic() + RETRY_AFTER_S
            continue
        for pid in group:
            sweep.failed.pop(pid, None)
        issued += written
    return issued


def _chunks(ids: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]
