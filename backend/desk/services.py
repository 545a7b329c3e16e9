"""What the finance desk asks of the domains: the one place its pages meet the services.

The pages only call the functions here and only read the view types here; this module alone
knows the reconciliation, refund and day-close services and translates their answers.

Units of work follow the services:
- functions taking a ``session`` run inside the caller's transaction (the page routes open
  one unit of work per request or action, so a refused action writes nothing): reading,
  resolving and approving a discrepancy, closing a day;
- functions without one run their own transaction, as the service does (loading or fetching
  a statement, requesting, approving and rejecting a refund): call them outside any unit of
  work.

Errors are the domains' own :class:`backend.errors.AppError` (with their ``code``); the pages
show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import BinaryIO

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.auth.models import StaffUser
from backend.errors import Forbidden, ValidationFailed
from backend.ledger import closing
from backend.ledger.daily import daily_ledger
from backend.progress import service as progress_service
from backend.progress.schemas import Progress, VillageProgress
from backend.reconciliation import service as recon
from backend.reconciliation.models import Discrepancy as DiscrepancyRow
from backend.reconciliation.models import ReconciliationRun
from backend.reconciliation.schemas import DiscrepancyOut
from backend.refunds import service as refunds
from backend.refunds.schemas import RefundCreate, RefundOut
from backend.residents.service import policy_for
from backend.runtime import Runtime
from backend.security.tokens import Principal

#: The channels whose statements can be uploaded, and whose statements the service can
#: fetch itself (WeChat Pay and Alipay publish theirs through an API).
STATEMENT_CHANNELS = ("wechat", "alipay", "unionpay", "pos")
FETCHABLE_CHANNELS = recon.FETCHABLE
#: Which side of a discrepancy is right, as the resolve form offers it.
RESOLUTION_SIDES = ("channel", "local")
#: Discrepancies that still wait for a person (``held`` ones wait for the next statement).
WAITING = recon.OPEN_STATUSES


class NotAvailable(Exception):
    """This part of the desk has no service behind it (kept for pages not wired yet)."""

    def __init__(self, feature: str) -> None:
        super().__init__(f"{feature} is not available yet")
        self.feature = feature


def staff_id(principal: Principal) -> int:
    """The staff account acting (finance acts in its own name)."""
    if principal.role != "finance" or not principal.sub.startswith("staff:"):
        raise Forbidden("only finance staff do this")
    return int(principal.sub.removeprefix("staff:"))


def _names(session: Session, ids: set[int | None]) -> dict[int, str]:
    wanted = sorted(i for i in ids if i is not None)
    if not wanted:
        return {}
    return {int(i or 0): str(u) for i, u in session.execute(
        select(col(StaffUser.id), col(StaffUser.username)).where(col(StaffUser.id).in_(wanted)))}


# ------------------------------------------------------------------------------ views

@dataclass(frozen=True)
class RunSummary:
    """A reconciliation run (对账批次): one channel's statement of one day against ours."""

    run_id: int
    date: date
    channel: str
    matched: int
    discrepancies: int
    open_discrepancies: int           # open or proposed: waiting for someone
    held: int = 0                     # ours near midnight, waiting for the next statement
    created_at: datetime | None = None
    created_by: str | None = None


@dataclass(frozen=True)
class Discrepancy:
    """One difference (差异) between a statement and what we recorded, and its resolution.

    ``status``: ``open`` (nobody proposed a side), ``held`` (ours near midnight, waiting for
    the next day's statement), ``proposed`` (a side was chosen, waiting for a second finance
    user's approval), ``resolved`` (approved; the correction made) or ``auto_resolved``
    (found on the next day's statement).
    """

    id: int
    kind: str
    status: str
    out_trade_no: str | None = None
    out_refund_no: str | None = None
    transaction_id: str | None = None
    our_amount_fen: int | None = None
    channel_amount_fen: int | None = None
    expected_fee_fen: int | None = None
    channel_fee_fen: int | None = None
    detail: str | None = None
    side: str | None = None
    reason: str | None = None
    proposed_by_id: int | None = None
    proposed_by: str | None = None
    proposed_at: datetime | None = None
    approved_by: str | None = None
    approved_at: datetime | None = None
    ledger_entry_id: int | None = None


@dataclass(frozen=True)
class RunTotals:
    """What the statement says and what we recorded, for the run's channel and day."""

    statement_payments: int
    statement_payment_fen: int
    statement_refunds: int
    statement_refund_fen: int
    fee_fen: int                      # the fees the statement charges (returned fees netted)
    expected_fee_fen: int             # Σ amount × the channel's rate
    our_payments: int
    our_payment_fen: int
    our_refunds: int
    our_refund_fen: int
    paired: int
    matched: int
    held: int


@dataclass(frozen=True)
class RunDetail:
    run: RunSummary
    discrepancies: list[Discrepancy]
    totals: RunTotals
    filename: str
    source: str                       # upload | fetch
    size: int
    file_sha256: str
    truncated: bool                   # more discrepancies than listed


@dataclass(frozen=True)
class RefundView:
    """A refund (退款) and where it is in its approval.

    ``status``: ``requested`` (waiting for approval), ``approved``/``queued``/``processing``
    (on its way back through the channel), ``awaiting_cash`` (the village agent pays it back),
    ``succeeded``, ``rejected`` or ``failed``.
    """

    id: int
    order_no: str
    amount_fen: int
    channel: str
    method: str
    status: str
    reason: str
    requested_at: datetime | None = None
    requested_by: str | None = None
    approved_by: str | None = None
    rejected_by: str | None = None
    reject_reason: str | None = None


@dataclass(frozen=True)
class DayCloseState:
    """Whether a business day is closed (日结), and what still stands in its way."""

    date: date
    closed: bool
    open_discrepancies: int
    runs: list[RunSummary]
    closed_at: datetime | None = None
    closed_by: str | None = None
    note: str = ""


# ------------------------------------------------------------------ statements (对账单)

def upload_statement(rt: Runtime, principal: Principal, *, channel: str, day: date,
                     filename: str, stream: BinaryIO) -> int:
    """Reconcile an uploaded statement file (its own transaction); the run's id. (What the
    API's ``POST /api/v1/reconciliation/{channel}/statements`` does.) The same file again
    gives its run."""
    return int(recon.reconcile_statement(rt, channel=channel, day=day, fileobj=stream,
                                         filename=filename, source="upload",
                                         user_id=staff_id(principal)).run.run_id)


def fetch_statement(rt: Runtime, principal: Principal, *, channel: str, day: date) -> int:
    """Fetch the day's statement from the channel (or the simulator) and reconcile it (its
    own transaction); the run's id."""
    return int(recon.fetch_and_reconcile(rt, channel=channel, day=day,
                                         user_id=staff_id(principal)).run.run_id)


# ------------------------------------------------------------ reconciliation (对账结果)

def _waiting_by_run(session: Session, run_ids: list[int]) -> dict[int, int]:
    if not run_ids:
        return {}
    return {int(r): int(n) for r, n in session.execute(
        select(col(DiscrepancyRow.run_id), func.count())
        .where(col(DiscrepancyRow.run_id).in_(run_ids),
               col(DiscrepancyRow.status).in_(WAITING))
        .group_by(col(DiscrepancyRow.run_id)))}


def _summaries(session: Session, runs: list[ReconciliationRun]) -> list[RunSummary]:
    waiting = _waiting_by_run(session, [r.id for r in runs if r.id is not None])
    names = _names(session, {r.created_by for r in runs})
    return [RunSummary(run_id=r.id or 0, date=r.business_date, channel=r.channel,
                       matched=r.matched, discrepancies=r.discrepancies,
                       open_discrepancies=waiting.get(r.id or 0, 0), held=r.held,
                       created_at=r.created_at,
                       created_by=names.get(r.created_by) if r.created_by else None)
            for r in runs]


def list_runs(session: Session, rt: Runtime, principal: Principal, *,
              day: date | None = None) -> list[RunSummary]:
    """Reconciliation runs, newest day first; of one business day when ``day`` is given."""
    return _summaries(session, recon.list_runs(session, day=day, channel=None))


def waiting_discrepancies(session: Session, rt: Runtime, principal: Principal) -> int:
    """Discrepancies of any day still waiting for someone (open or proposed)."""
    return int(session.scalar(select(func.count()).select_from(DiscrepancyRow)
                              .where(col(DiscrepancyRow.status).in_(WAITING))) or 0)


def _discrepancy(d: DiscrepancyOut, names: dict[int, str]) -> Discrepancy:
    return Discrepancy(
        id=d.id, kind=d.kind, status=d.status, out_trade_no=d.out_trade_no,
        out_refund_no=d.out_refund_no, transaction_id=d.transaction_id,
        our_amount_fen=d.our_amount_fen, channel_amount_fen=d.channel_amount_fen,
        expected_fee_fen=d.expected_fee_fen, channel_fee_fen=d.channel_fee_fen,
        detail=d.detail or None, side=d.side, reason=d.reason, proposed_by_id=d.proposed_by,
        proposed_by=names.get(d.proposed_by) if d.proposed_by else None,
        proposed_at=d.proposed_at,
        approved_by=names.get(d.approved_by) if d.approved_by else None,
        approved_at=d.approved_at, ledger_entry_id=d.ledger_entry_id)


def get_run(session: Session, rt: Runtime, principal: Principal, run_id: int) -> RunDetail:
    """A run with its discrepancies (``NotFound`` when there is no such run)."""
    out = recon.run_view(session, run_id)
    row = session.get(ReconciliationRun, run_id)
    assert row is not None
    names = _names(session, {row.created_by, *(d.proposed_by for d in out.discrepancies),
                             *(d.approved_by for d in out.discrepancies)})
    summary = _summaries(session, [row])[0]
    t = out.totals
    return RunDetail(
        run=summary, discrepancies=[_discrepancy(d, names) for d in out.discrepancies],
        totals=RunTotals(
            statement_payments=t.statement.payments,
            statement_payment_fen=t.statement.payment_fen,
            statement_refunds=t.statement.refunds, statement_refund_fen=t.statement.refund_fen,
            fee_fen=t.statement.fee_fen, expected_fee_fen=t.statement.expected_fee_fen,
            our_payments=t.ours.payments, our_payment_fen=t.ours.payment_fen,
            our_refunds=t.ours.refunds, our_refund_fen=t.ours.refund_fen,
            paired=t.paired, matched=t.matched, held=t.held),
        filename=out.statement.filename, source=out.statement.source,
        size=out.statement.size, file_sha256=out.statement.sha256,
        truncated=out.discrepancies_truncated)


def resolve_discrepancy(session: Session, rt: Runtime, principal: Principal,
                        discrepancy_id: int, *, side: str, reason: str) -> None:
    """Propose the side that is right (``channel`` or ``local``), with a reason (→ proposed)."""
    recon.resolve_discrepancy(rt, session, discrepancy_id, user_id=staff_id(principal),
                              side=side, reason=reason)


def approve_discrepancy(session: Session, rt: Runtime, principal: Principal,
                        discrepancy_id: int) -> None:
    """A second finance user approves a proposal (→ resolved); the correction is made in the
    same transaction (403 ``same_approver`` for the proposer)."""
    recon.approve_discrepancy(rt, session, discrepancy_id, user_id=staff_id(principal))


# -------------------------------------------------------------------- refunds (退款审批)

def _refund(r: RefundOut) -> RefundView:
    return RefundView(id=r.refund_id, order_no=r.order_no, amount_fen=r.amount_fen,
                      channel=r.channel, method=r.method, status=r.status, reason=r.reason,
                      requested_at=r.requested_at, requested_by=r.requested_by,
                      approved_by=r.approved_by, rejected_by=r.rejected_by,
                      reject_reason=r.reject_reason)


def list_refunds(session: Session, rt: Runtime, principal: Principal, *,
                 status: str | None = None) -> list[RefundView]:
    """Refunds, newest first (the latest 200); only those of ``status`` when given
    (``requested``: the ones waiting for approval)."""
    return [_refund(r) for r in refunds.list_refunds(rt, session, principal, status=status,
                                                     limit=refunds.MAX_PAGE)]


def request_refund(rt: Runtime, principal: Principal, *, order_no: str,
                   reason: str) -> RefundView:
    """Ask for a refund of everything still refundable on an order (its own transaction);
    another finance user approves it."""
    try:
        body = RefundCreate(order_no=order_no, reason=reason)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValidationFailed(f"{field}: {first['msg']}", fields=[field]) from None
    return _refund(refunds.request_refund(rt, principal, body.order_no, None, body.reason))


def approve_refund(rt: Runtime, principal: Principal, refund_id: int) -> None:
    """Approve a requested refund, by a finance user other than the requester (its own
    transaction)."""
    refunds.approve_refund(rt, principal, refund_id)


def reject_refund(rt: Runtime, principal: Principal, refund_id: int, *, reason: str) -> None:
    """Refuse a requested refund, with a reason (its own transaction)."""
    refunds.reject_refund(rt, principal, refund_id, reason)


# ------------------------------------------------------------------------ day close (日结)

def day_close_state(session: Session, rt: Runtime, principal: Principal,
                    day: date) -> DayCloseState:
    """Whether ``day`` is closed, its runs, and how many of its discrepancies still wait."""
    runs = list_runs(session, rt, principal, day=day)
    waiting = recon.open_discrepancies(session, day)
    found = closing.closed_days(session, day, day).get(day)
    if found is None:
        return DayCloseState(date=day, closed=False, open_discrepancies=waiting, runs=runs)
    closed, username = found
    return DayCloseState(date=day, closed=True, open_discrepancies=waiting, runs=runs,
                         closed_at=closed.closed_at, closed_by=username, note=closed.note)


def close_day(session: Session, rt: Runtime, principal: Principal, day: date,
              note: str = "") -> None:
    """Close (lock) business day ``day`` in the caller's transaction; refused with
    ``day_not_over``, ``day_closed`` or ``open_discrepancies``."""
    closing.close_day(session, rt.clock, day, staff_id(principal), note)


# ----------------------------------------------------------------------- progress (进度)

#: How many business days (ending today) the progress page's money chart shows.
PROGRESS_DAYS = 14


@dataclass(frozen=True)
class BehindVillage:
    town_code: str
    town_name: str
    village: VillageProgress


@dataclass(frozen=True)
class ProgressView:
    """The progress of a coverage year in the caller's scope (``town``: None for the
    district), the villages furthest behind first over every town shown, and the money
    collected on each of the last days (fen, oldest first)."""

    progress: Progress
    town: str | None
    villages: list[BehindVillage]
    days: list[tuple[date, int]]


def progress_view(session: Session, rt: Runtime, principal: Principal, *, year: int,
                  town: str | None) -> ProgressView:
    """``GET /api/v1/progress``'s answer for the page, and the daily ledger's money
    (``Forbidden`` for another town's staff, ``NotFound`` for an unknown town,
    ``ValidationFailed`` for a year without a policy)."""
    scoped = progress_service.scope(principal, town)
    answer = progress_service.progress(session, policy_for(rt, year), rt.clock.now(), scoped)
    villages = [BehindVillage(t.town_code, t.name, v) for t in answer.towns for v in t.villages]
    # the service's order within a town, over all the towns shown
    villages.sort(key=lambda b: (-b.village.gap_bp,
                                 -sum(m.shortfall for m in b.village.measures),
                                 b.village.village_code))
    today = rt.clock.today()
    days = [today - timedelta(days=back) for back in range(PROGRESS_DAYS - 1, -1, -1)]
    money = [(day, daily_ledger(session, day, today=today, town=scoped).totals.amount_fen)
             for day in days]
    return ProgressView(progress=answer, town=scoped, villages=villages, days=money)
