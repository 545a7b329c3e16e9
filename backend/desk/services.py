"""What the finance desk asks of the domains: the one place its pages meet the services.

The pages only call the functions here and only read the view types here. A function whose
service is not built yet raises :class:`NotAvailable`; its page then says so ("尚未开放")
instead of failing. Wiring a service in is a change to this module alone: call the domain
function inside the function's body and translate its answer into the view type.

Every function runs inside the caller's transaction (``session``): the page routes open one
unit of work per request or action, so a refused action writes nothing. Errors are the
domains' own :class:`backend.errors.AppError`; the pages show their message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import BinaryIO

from sqlalchemy.orm import Session

from backend.runtime import Runtime
from backend.security.tokens import Principal

#: The channels whose statements can be uploaded, and whose statements the service can
#: fetch itself (WeChat Pay and Alipay publish theirs through an API).
STATEMENT_CHANNELS = ("wechat", "alipay", "unionpay", "pos")
FETCHABLE_CHANNELS = ("wechat", "alipay")
#: Which side of a discrepancy is right, as the resolve form offers it.
RESOLUTION_SIDES = ("channel", "local")


class NotAvailable(Exception):
    """This part of the desk has no service behind it yet."""

    def __init__(self, feature: str) -> None:
        super().__init__(f"{feature} is not available yet")
        self.feature = feature


@dataclass(frozen=True)
class RunSummary:
    """A reconciliation run (对账批次): one channel's statement of one day against ours."""

    run_id: int
    date: date
    channel: str
    matched: int
    discrepancies: int
    open_discrepancies: int
    created_at: datetime | None = None
    file_sha256: str | None = None
    created_by: str | None = None


@dataclass(frozen=True)
class Discrepancy:
    """One difference (差异) between a statement and what we recorded, and its resolution.

    ``status``: ``open`` (nobody resolved it), ``resolved`` (a side was chosen, waiting for
    a second person's approval) or ``approved`` (approved, the correcting entry posted).
    """

    id: int
    kind: str
    out_trade_no: str | None
    status: str
    local_amount_fen: int | None = None
    channel_amount_fen: int | None = None
    detail: str | None = None
    side: str | None = None
    reason: str | None = None
    resolved_by: str | None = None
    approved_by: str | None = None


@dataclass(frozen=True)
class RunDetail:
    run: RunSummary
    discrepancies: list[Discrepancy]
    totals: dict[str, int]                # e.g. amount_fen, fee_fen, refunded_fen


@dataclass(frozen=True)
class RefundView:
    """A refund (退款) and where it is in its approval.

    ``status``: ``requested`` (waiting for approval), ``approved``/``queued``/``processing``
    (on its way through the channel), ``succeeded``, ``rejected`` or ``failed``.
    """

    id: int
    order_no: str
    amount_fen: int
    channel: str
    status: str
    reason: str
    requested_at: datetime | None = None
    requested_by: str | None = None
    approved_by: str | None = None


@dataclass(frozen=True)
class DayCloseState:
    """Whether a business day is closed (日结), and what still stands in its way."""

    date: date
    closed: bool
    open_discrepancies: int
    closed_at: datetime | None = None
    closed_by: str | None = None


# ------------------------------------------------------------------ statements (对账单)

def upload_statement(session: Session, rt: Runtime, principal: Principal, *, channel: str,
                     day: date, filename: str, stream: BinaryIO) -> int:
    """Reconcile an uploaded statement file; the run's id. (What the API's
    ``POST /api/v1/reconciliation/{channel}/statements`` does.) ``stream`` is the upload,
    spooled to disk by the form parser and at most STATEMENT_MAX_BYTES long, at its start."""
    raise NotAvailable("statement upload")


def fetch_statement(session: Session, rt: Runtime, principal: Principal, *, channel: str,
                    day: date) -> int:
    """Fetch the day's statement from the channel (or the simulator) and reconcile it; the
    run's id."""
    raise NotAvailable("statement fetch")


# ------------------------------------------------------------ reconciliation (对账结果)

def list_runs(session: Session, rt: Runtime, principal: Principal, *,
              day: date | None = None) -> list[RunSummary]:
    """Reconciliation runs, newest first; of one business day when ``day`` is given."""
    raise NotAvailable("reconciliation runs")


def get_run(session: Session, rt: Runtime, principal: Principal, run_id: int) -> RunDetail:
    """A run with its discrepancies (``NotFound`` when there is no such run)."""
    raise NotAvailable("reconciliation runs")


def resolve_discrepancy(session: Session, rt: Runtime, principal: Principal,
                        discrepancy_id: int, *, side: str, reason: str) -> None:
    """Choose the side that is right (``channel`` or ``local``), with a reason."""
    raise NotAvailable("discrepancy resolution")


def approve_discrepancy(session: Session, rt: Runtime, principal: Principal,
                        discrepancy_id: int) -> None:
    """A second finance user approves a resolution; the ledger gets its correcting entry."""
    raise NotAvailable("discrepancy resolution")


# -------------------------------------------------------------------- refunds (退款审批)

def list_refunds(session: Session, rt: Runtime, principal: Principal, *,
                 status: str | None = None) -> list[RefundView]:
    """Refunds, newest first; only those of ``status`` when given (``requested``: the ones
    waiting for approval)."""
    raise NotAvailable("refunds")


def approve_refund(session: Session, rt: Runtime, principal: Principal, refund_id: int) -> None:
    """Approve a requested refund (by a finance user other than the requester)."""
    raise NotAvailable("refunds")


def reject_refund(session: Session, rt: Runtime, principal: Principal, refund_id: int, *,
                  reason: str) -> None:
    """Refuse a requested refund, with a reason."""
    raise NotAvailable("refunds")


# ------------------------------------------------------------------------ day close (日结)

def day_close_state(session: Session, rt: Runtime, principal: Principal,
                    day: date) -> DayCloseState:
    """Whether ``day`` is closed, and how many discrepancies of it are still open."""
    raise NotAvailable("day close")


def close_day(session: Session, rt: Runtime, principal: Principal, day: date) -> None:
    """Close (lock) business day ``day``; later corrections post into the next open day."""
    raise NotAvailable("day close")
