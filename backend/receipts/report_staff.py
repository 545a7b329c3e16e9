"""Residents' reports of paper receipts, for staff: ``GET /api/v1/receipt-reports`` (town
staff their town, finance, auditors and admins the district) and
``POST /api/v1/receipt-reports/{report_no}/close`` (town staff of its town, finance, admins:
auditors watch, they do not act)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query

from backend.audit.endpoints import EARLIEST, LATEST
from backend.clock import SHANGHAI
from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import JSON_BODY, LOGGED_IN, MAX_ID, ValidationFailed, errors
from backend.receipts import reports
from backend.receipts.report_schemas import (
    CODE,
    ReceiptReportCloseIn,
    ReceiptReportItem,
    ReceiptReportPage,
    ReportStatus,
)
from backend.runtime import Runtime

router = APIRouter(prefix="/api/v1", tags=["receipt reports"])
# J + the business date + the id, 8 digits and more
REPORT_NO = r"^J[0-9]{16,20}$"


def _item(rt: Runtime, listed: reports.Listed) -> ReceiptReportItem:
    r = listed.report
    assert r.id is not None
    return ReceiptReportItem(
        id=r.id, report_no=r.report_no, village_code=r.village_code,
        village_name=listed.village_name, town_code=r.town_code,
        paper_receipt_no=r.paper_receipt_no, amount_fen=r.amount_fen, paid_on=r.paid_on,
        kind=r.kind, status=r.status,  # type: ignore[arg-type]
        created_at=r.created_at.astimezone(SHANGHAI), note=reports.note_of(rt, r),
        matched_order_no=listed.order_no,
        matched_at=r.matched_at.astimezone(SHANGHAI) if r.matched_at else None,
        closed_at=r.closed_at.astimezone(SHANGHAI) if r.closed_at else None,
        closed_by=listed.closed_by, close_reason=r.close_reason)


def _days(first: date | None, last: date | None) -> None:
    for name, day in (("from", first), ("to", last)):
        if day is not None and not EARLIEST <= day <= LATEST:
            raise ValidationFailed(f"{name}: {day} is outside {EARLIEST} to {LATEST}",
                                   fields=[name])
    if first is not None and last is not None and last < first:
        raise ValidationFailed(f"to: {last} is before from: {first}", fields=["to"])


@router.get("/receipt-reports", response_model=ReceiptReportPage,
            responses=errors(*LOGGED_IN, "validation_error", "forbidden", "not_found"))
def list_reports(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
                 village: Annotated[str | None, Query(pattern=CODE)] = None,
                 town: Annotated[str | None, Query(pattern=CODE)] = None,
                 status: ReportStatus | None = None,
                 first: Annotated[date | None, Query(alias="from")] = None,
                 last: Annotated[date | None, Query(alias="to")] = None,
                 after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                 limit: Annotated[int, Query(ge=1, le=500)] = 100) -> ReceiptReportPage:
    """Residents' reports of paper receipts (`POST /r/report`), oldest first, `limit` at a
    time (`next_after_id` → `after_id`), optionally of one `town`, one `village`, one
    `status` (`open`: not yet matched or closed), reported from `from` to `to` (business
    dates, both included).

    Each has the collection's order when one is known (`matched_order_no`) and the
    resident's note with ID and phone numbers masked (it is kept encrypted).

    Scope: finance, auditors and admins read the district; town staff their own town (another
    town, or a village of another town: 403). Agents, departments and residents: 403. An
    unknown `town` or `village`: 404.
    """
    town = reports.reading_scope(session, principal, town, village)
    _days(first, last)
    rows = reports.listing(session, town=town, village=village, status=status, first=first,
                           last=last, after_id=after_id, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return ReceiptReportPage(reports=[_item(rt, r) for r in rows],
                             next_after_id=rows[-1].report.id if more and rows else None)


@router.post("/receipt-reports/{report_no}/close", response_model=ReceiptReportItem,
             responses=errors(*LOGGED_IN, *JSON_BODY, "forbidden", "not_found",
                              "receipt_report_not_open"))
def close_report(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
                 report_no: Annotated[str, Path(pattern=REPORT_NO)],
                 body: ReceiptReportCloseIn) -> ReceiptReportItem:
    """Close an open report, saying why (`reason`, 1–500 characters): spam, a mistaken
    report, settled with the resident. It becomes `closed` (who, when on the business clock,
    why) and is no longer counted in the progress page's `receipt_reports_open`; the audit
    trail records `receipt_report.close` with the reason.

    Town staff close their own town's reports (another town's: 403), finance and admins any.
    Auditors, agents, departments and residents: 403. A report that is `matched` or `closed`
    already: 409 `receipt_report_not_open`. An unknown `report_no`: 404.
    """
    reports.close(session, rt, principal, report_no, body.reason)
    [listed] = reports.listing(session, report_no=report_no)
    return _item(rt, listed)
