"""Reports of paper receipts (收据) the service does not know: a resident's check of the
receipt an agent wrote them, recorded for the town and for auditors.

A resident who paid an agent in cash types the village, the paper receipt's number, the
amount and the day into the public page (``/r/report``, no login). The service looks for a
collection with that receipt number by an agent of that village:

- none: the report is recorded, ``unknown_receipt`` (the agent may not have recorded it
  yet — late recording is normal — or never will);
- found, with another amount: recorded, ``amount_differs`` (the agent may have recorded less
  than the resident paid), linked to that collection;
- found, with that amount: nothing is recorded; the answer says it is known, the business
  day it was recorded on and its amount, nothing about who paid.

When an agent later records a collection with the number of an open ``unknown_receipt``
report of their village, in the same transaction the report becomes ``matched`` (the same
amount) or ``amount_differs`` (another amount, still open for the town). Every report and
every match is an audit event.

The resident's note is kept encrypted with the PII key (it may hold an ID or phone number)
and never goes to the logs or the audit trail. The town's staff (their town), finance,
auditors and admins list the reports with the note decrypted and masked (``listing``); the
town's staff, finance and admins close an open one with a reason (``close``: audited, and no
longer counted open on the progress page).

Both paths take a transaction-level lock on (village, paper receipt number) on PostgreSQL
before they look at the other's rows, so a report and the collection it names that arrive
together cannot miss each other; SQLite has one writer at a time.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session, aliased
from sqlmodel import col

from backend import metrics
from backend.agents.models import AgentCollection
from backend.audit import service as audit
from backend.audit.service import day_bounds
from backend.auth.models import StaffUser
from backend.cache import address_key
from backend.clock import SHANGHAI, business_date
from backend.db import unit_of_work
from backend.errors import Conflict, Forbidden, NotFound, RateLimited, ValidationFailed
from backend.logs import redact
from backend.orders.models import Order, Payment
from backend.receipts.report_models import NOTE_KIND, ReceiptReport
from backend.receipts.report_schemas import ReceiptKnownOut, ReceiptReportIn, ReceiptReportOut
from backend.residents.models import Town, Village
from backend.runtime import Runtime
from backend.security.tokens import Principal

#: who the audit trail names as the actor of a report: anyone, no login
PUBLIC = Principal(sub="public", role="public")
#: the oldest day a report may name: a paper receipt older than this is not the service's
MAX_AGE_DAYS = 3 * 366
WINDOW_S = 3600


# --------------------------------------------------------------------------- rate limit
def client_hash(rt: Runtime, client_ip: str) -> str:
    """The reporter's address as kept: a keyed hash (the PII key), never the address."""
    return rt.pii.hash(client_ip, kind="report-ip")


def take_turn(rt: Runtime, client_ip: str) -> None:
    """Count one report from this address (across processes, in Redis); past
    RECEIPT_REPORTS_PER_HOUR in the hour, 429 with Retry-After."""
    # an IPv6 client holds a /64 of addresses: counted as one, as the lookups count it
    key = f"receipt-report:ip:{client_hash(rt, address_key(client_ip))[:32]}"
    seen = rt.limiter.hit(key, WINDOW_S)
    limit = rt.settings.receipt_reports_per_hour
    if seen > limit:
        wait = rt.limiter.ttl(key) or WINDOW_S
        raise RateLimited(f"at most {limit} receipt reports an hour from one address: try "
                          f"again in {(wait + 59) // 60} minutes",
                          headers={"Retry-After": str(wait)})


# --------------------------------------------------------------------------- both paths
def _lock(session: Session, village_code: str, paper_receipt_no: str) -> None:
    """Serialise a report and a collection naming the same paper receipt (PostgreSQL)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"receipt-report:{village_code}:{paper_receipt_no}".encode())
    key = int.from_bytes(digest.digest()[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


@dataclass(frozen=True)
class Recorded:
    collection_id: int
    amount_fen: int
    business_date: date


def recorded(session: Session, village_code: str, paper_receipt_no: str) -> list[Recorded]:
    """The collections with this paper receipt number by the village's agents (one per
    agent at most: the number is unique per agent), oldest first."""
    rows = session.execute(
        select(col(AgentCollection.id), col(Payment.amount_fen), col(Payment.business_date))
        .join(StaffUser, col(StaffUser.id) == col(AgentCollection.agent_id))
        .join(Payment, col(Payment.id) == col(AgentCollection.payment_id))
        .where(col(StaffUser.village_code) == village_code,
               col(AgentCollection.receipt_no) == paper_receipt_no)
        .order_by(col(AgentCollection.id))).all()
    out = []
    for row in rows:
        collection_id, amount_fen, day = row
        assert collection_id is not None
        out.append(Recorded(collection_id, int(amount_fen), day))
    return out


# --------------------------------------------------------------------------- a report
def check_dates(rt: Runtime, body: ReceiptReportIn) -> None:
    today = rt.clock.today()
    if body.paid_on > today:
        raise ValidationFailed(f"paid_on: {body.paid_on} is after today ({today})",
                               fields=["paid_on"])
    oldest = today - timedelta(days=MAX_AGE_DAYS)
    if body.paid_on < oldest:
        raise ValidationFailed(f"paid_on: {body.paid_on} is more than 3 years ago (the "
                               f"oldest day taken is {oldest})", fields=["paid_on"])


def _out(report: ReceiptReport, village_name: str, *, repeat: bool) -> ReceiptReportOut:
    return ReceiptReportOut(
        report_no=report.report_no, kind=report.kind,  # type: ignore[arg-type]
        status=report.status,  # type: ignore[arg-type]
        known=report.kind == "amount_differs", repeat=repeat,
        village_code=report.village_code, village_name=village_name,
        paper_receipt_no=report.paper_receipt_no, amount_fen=report.amount_fen,
        paid_on=report.paid_on, reported_at=report.created_at.astimezone(SHANGHAI))


def report(rt: Runtime, body: ReceiptReportIn,
           client_ip: str) -> ReceiptReportOut | ReceiptKnownOut:
    """Check a resident's paper receipt; record a report unless it is known for that
    amount. ``ValidationFailed`` for a day out of range or an unknown village (nothing
    written); ``RateLimited`` past the hour's reports from the address."""
    check_dates(rt, body)
    with unit_of_work(rt.sessions) as s:
        village = s.get(Village, body.village_code)
    if village is None:     # a typo, like any other refused field, does not use a turn
        raise ValidationFailed(f"village_code: no village {body.village_code!r} in the "
                               "district", fields=["village_code"])
    take_turn(rt, client_ip)
    with unit_of_work(rt.sessions) as s:
        _lock(s, village.code, body.paper_receipt_no)
        found = recorded(s, village.code, body.paper_receipt_no)
        same = next((r for r in found if r.amount_fen == body.amount_fen), None)
        if same is not None:
            metrics.RECEIPT_REPORTS.labels(kind="matches").inc()
            return ReceiptKnownOut(recorded_on=same.business_date, amount_fen=same.amount_fen)
        kind = "amount_differs" if found else "unknown_receipt"
        earlier = s.scalars(select(ReceiptReport).where(
            col(ReceiptReport.village_code) == village.code,
            col(ReceiptReport.paper_receipt_no) == body.paper_receipt_no,
            col(ReceiptReport.amount_fen) == body.amount_fen,
            col(ReceiptReport.paid_on) == body.paid_on,
            col(ReceiptReport.kind) == kind,
            col(ReceiptReport.status) == "open").order_by(col(ReceiptReport.id))).first()
        if earlier is not None:
            metrics.RECEIPT_REPORTS.labels(kind="repeat").inc()
            return _out(earlier, village.name, repeat=True)
        now = rt.clock.now()
        note = rt.pii.encrypt(body.note, NOTE_KIND) if body.note is not None else None
        row = ReceiptReport(
            # a unique stand-in until the id is known (the number is derived from it)
            report_no="-" + secrets.token_hex(11), village_code=village.code,
            town_code=village.town_code, paper_receipt_no=body.paper_receipt_no,
            amount_fen=body.amount_fen, paid_on=body.paid_on, note_encrypted=note, kind=kind,
            status="open", client_hash=client_hash(rt, client_ip), created_at=now,
            matched_collection_id=found[0].collection_id if found else None)
        s.add(row)
        s.flush()
        row.report_no = f"J{business_date(now):%Y%m%d}{row.id:08d}"
        s.flush()
        audit.record(s, rt, PUBLIC, "receipt_report.record", "receipt_report", row.report_no,
                     details={"village_code": village.code, "town_code": village.town_code,
                              "kind": kind, "paper_receipt_no": body.paper_receipt_no,
                              "amount_fen": body.amount_fen, "paid_on": body.paid_on,
                              "collection_id": row.matched_collection_id})
        out = _out(row, village.name, repeat=False)
    metrics.RECEIPT_REPORTS.labels(kind=kind).inc()
    return out


# --------------------------------------------------------------------------- a collection
def match_collection(session: Session, rt: Runtime, principal: Principal, *,
                     village_code: str | None, paper_receipt_no: str, collection_id: int,
                     amount_fen: int, now: datetime) -> list[ReceiptReport]:
    """In an agent's collection transaction: the open ``unknown_receipt`` reports of the
    agent's village naming this paper receipt number now have their collection — ``matched``
    for the amount reported, else ``amount_differs`` and still open. Each is audited."""
    if village_code is None:
        return []
    _lock(session, village_code, paper_receipt_no)
    reports = list(session.scalars(select(ReceiptReport).where(
        col(ReceiptReport.village_code) == village_code,
        col(ReceiptReport.paper_receipt_no) == paper_receipt_no,
        col(ReceiptReport.kind) == "unknown_receipt",
        col(ReceiptReport.status) == "open").order_by(col(ReceiptReport.id))).all())
    for r in reports:
        r.matched_collection_id, r.matched_at = collection_id, now
        if r.amount_fen == amount_fen:
            r.status = "matched"
        else:
            r.kind = "amount_differs"
        session.add(r)
        audit.record(session, rt, principal, "receipt_report.match", "receipt_report",
                     r.report_no, details={
                         "village_code": village_code, "kind": r.kind, "status": r.status,
                         "paper_receipt_no": paper_receipt_no, "collection_id": collection_id,
                         "reported_fen": r.amount_fen, "recorded_fen": amount_fen})
    return reports


# --------------------------------------------------------------------------- progress
def counts(session: Session, town: str | None) -> dict[str, tuple[int, int]]:
    """village_code → (open reports, all reports), whatever the year."""
    stmt = (select(col(ReceiptReport.village_code),
                   func.sum(case((col(ReceiptReport.status) == "open", 1), else_=0)),
                   func.count())
            .group_by(col(ReceiptReport.village_code)))
    if town is not None:
        stmt = stmt.where(col(ReceiptReport.town_code) == town)
    return {v: (int(o or 0), int(n)) for v, o, n in session.execute(stmt)}


# --------------------------------------------------------------------------- for staff
#: who reads the reports of the whole district (town staff: their own town's)
DISTRICT_READERS = ("finance", "auditor", "admin")
#: who closes them (town staff: their own town's); auditors watch, they do not act
DISTRICT_CLOSERS = ("finance", "admin")


def reading_scope(session: Session, principal: Principal, town: str | None,
                  village: str | None) -> str | None:
    """The town a caller may list (None: the whole district); ``Forbidden`` for another
    role or another town, ``NotFound`` for an unknown town or village."""
    if principal.role == "town_staff":
        if town is not None and town != principal.town_code:
            raise Forbidden("town staff read the receipt reports of their own town only")
        town = principal.town_code
    elif principal.role not in DISTRICT_READERS:
        raise Forbidden("receipt reports are read by town staff, finance, auditors and admins")
    if town is not None and session.get(Town, town) is None:
        raise NotFound(f"town: no town {town!r}")
    if village is not None:
        v = session.get(Village, village)
        if v is None:
            raise NotFound(f"village: no village {village!r}")
        if principal.role == "town_staff" and v.town_code != principal.town_code:
            raise Forbidden("town staff read the receipt reports of their own town only")
    return town


@dataclass(frozen=True)
class Listed:
    report: ReceiptReport
    village_name: str
    order_no: str | None
    closed_by: str | None


def note_of(rt: Runtime, report: ReceiptReport) -> str | None:
    """The resident's note for staff: decrypted, ID and phone numbers masked."""
    if report.note_encrypted is None:
        return None
    return redact(rt.pii.decrypt(report.note_encrypted, NOTE_KIND))


def listing(session: Session, *, town: str | None = None, village: str | None = None,
            status: str | None = None, first: date | None = None, last: date | None = None,
            report_no: str | None = None, after_id: int = 0,
            limit: int = 100) -> list[Listed]:
    """The reports in id order after ``after_id``, at most ``limit``; ``town`` is the scope
    ``reading_scope`` gave."""
    closer = aliased(StaffUser)
    stmt = (select(ReceiptReport, col(Village.name), col(Order.order_no),
                   col(closer.username))
            .join(Village, col(Village.code) == col(ReceiptReport.village_code))
            .outerjoin(AgentCollection,
                       col(AgentCollection.id) == col(ReceiptReport.matched_collection_id))
            .outerjoin(Order, col(Order.id) == col(AgentCollection.order_id))
            .outerjoin(closer, col(closer.id) == col(ReceiptReport.closed_by))
            .where(col(ReceiptReport.id) > after_id)
            .order_by(col(ReceiptReport.id)).limit(limit))
    if town is not None:
        stmt = stmt.where(col(ReceiptReport.town_code) == town)
    if village is not None:
        stmt = stmt.where(col(ReceiptReport.village_code) == village)
    if status is not None:
        stmt = stmt.where(col(ReceiptReport.status) == status)
    if report_no is not None:
        stmt = stmt.where(col(ReceiptReport.report_no) == report_no)
    if first is not None:
        stmt = stmt.where(col(ReceiptReport.created_at) >= day_bounds(first, first)[0])
    if last is not None:
        stmt = stmt.where(col(ReceiptReport.created_at) < day_bounds(last, last)[1])
    return [Listed(r, name, order_no, username)
            for r, name, order_no, username in session.execute(stmt).all()]


def close(session: Session, rt: Runtime, principal: Principal, report_no: str,
          reason: str) -> ReceiptReport:
    """Close an open report with the reason (masked as the audit trail masks it), audited
    ``receipt_report.close``. ``NotFound`` for an unknown report; ``Forbidden`` for auditors
    and other roles, and for town staff a report of another town;
    ``Conflict`` (``receipt_report_not_open``) for a matched or closed one."""
    if principal.role != "town_staff" and principal.role not in DISTRICT_CLOSERS:
        raise Forbidden("receipt reports are closed by town staff, finance and admins "
                        "(auditors read them)")
    row = session.scalars(select(ReceiptReport).where(
        col(ReceiptReport.report_no) == report_no)).first()
    if row is None:
        raise NotFound(f"report_no: no receipt report {report_no!r}")
    if principal.role == "town_staff" and row.town_code != principal.town_code:
        raise Forbidden("town staff close the receipt reports of their own town only")
    # the lock a collection naming this paper receipt takes (match_collection): a report is
    # matched or closed, never both; then the row as it is now, held to the commit
    _lock(session, row.village_code, row.paper_receipt_no)
    session.refresh(row, with_for_update=True)
    if row.status != "open":
        raise Conflict(f"receipt report {report_no} is {row.status}, not open: only an open "
                       "report is closed", code="receipt_report_not_open")
    row.status, row.closed_at = "closed", rt.clock.now()
    row.closed_by = int(principal.sub.removeprefix("staff:"))
    row.close_reason = redact(reason)
    session.add(row)
    session.flush()
    audit.record(session, rt, principal, "receipt_report.close", "receipt_report",
                 row.report_no, reason=reason,
                 details={"village_code": row.village_code, "town_code": row.town_code,
                          "kind": row.kind, "paper_receipt_no": row.paper_receipt_no,
                          "amount_fen": row.amount_fen})
    return row
