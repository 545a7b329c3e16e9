"""Department bills (代缴通知单): issue and claim, record transfers, cover, credit.

Every step is one transaction. Issuing locks the bill lines it claims the way an order does
(``orders.repository.bill_lines_for``), so a claim and a resident's order for the same item
queue on the row: whichever commits first wins, the other sees it and is refused. A
resident's payment that still arrives for a claimed item (an expired order's QR code paid
late) finds the line not ``unpaid`` and is kept as money received and refunded, as any
duplicate. Covering a bill marks its lines paid through one department payment, so the
partial unique index on applied payment lines backs this path too.

The ledger gets aggregates: one entry per transfer (the town's account debited, the
department's receivable credited) and one when the bill is covered (the receivable debited,
each insurance's contributions credited), with postings per town, never per resident.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.audit.service import record
from backend.clock import SHANGHAI
from backend.db import unit_of_work, utcnow
from backend.departments.models import (
    DepartmentBill,
    DepartmentBillLine,
    DepartmentCreditLine,
    DepartmentCreditNote,
    DepartmentListing,
    DepartmentTransfer,
)
from backend.departments.schemas import (
    BillLineOut,
    BillOut,
    CreditNoteOut,
    ExcludedOut,
    TransferOut,
)
from backend.errors import Conflict, Forbidden, NotFound, ValidationFailed
from backend.ledger import service as ledger
from backend.ledger.models import COLLECTED
from backend.orders.models import BillLine, Order, Payment
from backend.orders.repository import bill_lines_for
from backend.policy import DEPARTMENTS, Policy, assess
from backend.residents import repository as residents_repo
from backend.residents.models import Death, Resident, Town, Village
from backend.residents.service import facts_of, policy_for
from backend.runtime import Runtime
from backend.security.pii import mask_name
from backend.security.tokens import Principal, RefCodec
from backend.sql import Statement, Tx

log = logging.getLogger(__name__)

#: Short codes in bill numbers (扶贫办, 民政, 残联, 卫健, 财政).
ABBREVIATIONS = {"poverty_office": "FP", "civil_affairs": "MZ", "disabled_federation": "CL",
                 "health": "WJ", "finance": "CZ"}
NAMES = {"poverty_office": "扶贫办", "civil_affairs": "民政局", "disabled_federation": "残联",
         "health": "卫健局", "finance": "财政局"}
DISTRICT_ROLES = ("finance", "auditor", "admin")
# How many bill lines one claiming statement names (well under SQLite's parameter limit).
CLAIM_BATCH = 5000


# --------------------------------------------------------------------------- scope
def _issuer(principal: Principal, town_code: str) -> None:
    """Town staff issue their town's bills and record its transfers; finance any town's."""
    if principal.role == "finance":
        return
    if principal.role == "town_staff":
        if principal.town_code != town_code:
            raise Forbidden("town staff issue bills and record transfers for their own town")
        return
    raise Forbidden("department bills are issued, and transfers recorded, by town staff "
                    "and finance")


def _reader(principal: Principal, bill: DepartmentBill) -> None:
    if principal.role in DISTRICT_ROLES:
        return
    if principal.role == "town_staff" and principal.town_code == bill.town_code:
        return
    if principal.role == "department" and principal.department == bill.department:
        return
    # the same answer as for a bill that does not exist: nothing to learn from trying
    raise NotFound(f"no department bill {bill.bill_no}")


# --------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    resident: Resident
    town_code: str
    insurance: str
    tier_yuan: int | None
    amount_fen: int
    reason: str | None        # why it is left out, or None


def _candidates(session: Session, policy: Policy, department: str, town_code: str,
                now: datetime) -> list[Candidate]:
    """The department's list for the town, each listed item assessed against the registry:
    what the department owes for it, or why it is left out. Three queries for the town."""
    year = policy.coverage_year
    listed_ids = (select(col(DepartmentListing.resident_id))
                  .join(Resident, col(Resident.id) == col(DepartmentListing.resident_id))
                  .join(Village, col(Village.code) == col(Resident.village_code))
                  .where(col(DepartmentListing.department) == department,
                         col(DepartmentListing.year) == year,
                         col(Village.town_code) == town_code))
    rows = session.execute(
        select(Resident, col(Death.died_on))
        .outerjoin(Death, col(Death.id_hash) == col(Resident.id_hash))
        .where(col(Resident.id).in_(listed_ids)).order_by(col(Resident.id))).all()
    listings = residents_repo.listings_of(session, listed_ids, year)
    out: list[Candidate] = []
    for resident, died in rows:
        rid = resident.id
        assert rid is not None
        mine = listings.get(rid, set())
        a = assess(policy, facts_of(resident, died, frozenset(mine)), now)
        for insurance in ("pension", "medical"):
            if (department, insurance) not in mine:
                continue
            tier: int | None = None
            amount = 0
            reason: str | None = None
            if insurance == "pension":
                p = a.pension
                payer = p.paying_department
                if not p.eligible:
                    reason = "deceased" if p.reason == "deceased" else "not_eligible"
                else:
                    tier = policy.sponsored_tier_yuan
                    option = p.tier(tier)
                    amount = option.government_pays_fen if option else 0
            else:
                m = a.medical
                payer = m.paying_department
                if not m.eligible:
                    reason = "deceased" if m.reason == "deceased" else "not_eligible"
                else:
                    amount = m.government_pays_fen if m.amount_due_fen == 0 else 0
            if reason is None and payer != department:
                reason = "claimed_by_other_department"
            elif reason is None and amount <= 0:
                reason = "not_eligible"
            out.append(Candidate(resident, town_code, insurance, tier, amount, reason))
    return out


_LIVE_ORDER_LINES = """SELECT DISTINCT order_lines.bill_line_id FROM order_lines
    JOIN orders ON orders.id = order_lines.order_id
    WHERE orders.status = 'pending' AND orders.expires_at > :now
      AND order_lines.bill_line_id IN ({ids})"""


def _in_live_orders(session: Session, ids: list[int], now: datetime) -> set[int]:
    busy: set[int] = set()
    tx = Tx(session)
    for k in range(0, len(ids), CLAIM_BATCH):
        part = ids[k:k + CLAIM_BATCH]
        stmt = Statement(_LIVE_ORDER_LINES.format(ids=", ".join(map(str, part))),
                         prepare=False)
        busy.update(int(r[0]) for r in tx.all(stmt, now=now))
    return busy


def _locked_lines(session: Session, year: int, keys: list[tuple[int, str]]
                  ) -> dict[tuple[int, str], BillLine]:
    """Get or create the bill lines, locked for this transaction, in batches."""
    found: dict[tuple[int, str], BillLine] = {}
    for k in range(0, len(keys), CLAIM_BATCH):
        found.update(bill_lines_for(session, [(r, year, i) for r, i in keys[k:k + CLAIM_BATCH]]))
    return found


def _claims(session: Session, ids: list[int]) -> dict[int, tuple[int, str]]:
    """bill line → (claiming bill id, its department) for the claimed lines among ``ids``."""
    claims: dict[int, tuple[int, str]] = {}
    for k in range(0, len(ids), CLAIM_BATCH):
        for line_id, bill_id, department in session.execute(
                select(col(BillLine.id), col(DepartmentBill.id), col(DepartmentBill.department))
                .join(DepartmentBill, col(DepartmentBill.id) == col(BillLine.claim_bill_id))
                .where(col(BillLine.id).in_(ids[k:k + CLAIM_BATCH]))):
            claims[int(line_id or 0)] = (int(bill_id or 0), str(department))
    return claims


# --------------------------------------------------------------------------- issuing
def new_bill_no(session: Session, department: str, year: int) -> str:
    """``DJ2021FP`` + the department's sequence number of the year + 4 random characters,
    so two issuers at the same moment never collide."""
    n = session.scalar(select(func.count()).select_from(DepartmentBill).where(
        col(DepartmentBill.department) == department, col(DepartmentBill.year) == year)) or 0
    return f"DJ{year}{ABBREVIATIONS[department]}{int(n) + 1:05d}{secrets.token_hex(2).upper()}"


def issue_bill(rt: Runtime, principal: Principal, department: str, year: int,
               town_code: str) -> BillOut:
    if department not in DEPARTMENTS:
        raise ValidationFailed(f"department: {department!r} is not one of "
                               f"{', '.join(DEPARTMENTS)}")
    _issuer(principal, town_code)
    policy = policy_for(rt, year)
    now = rt.clock.now()
    with unit_of_work(rt.sessions) as session:
        if session.get(Town, town_code) is None:
            raise NotFound(f"no town {town_code}")
        candidates = _candidates(session, policy, department, town_code, now)
        wanted = [c for c in candidates if c.reason is None]
        keys = [(c.resident.id, c.insurance) for c in wanted]
        lines = _locked_lines(session, year, keys)  # type: ignore[arg-type]
        line_ids = [lines[k].id for k in keys]  # type: ignore[index]
        claims = _claims(session, line_ids)  # type: ignore[arg-type]
        busy = _in_live_orders(session, line_ids, now)  # type: ignore[arg-type]
        taken: list[tuple[Candidate, int]] = []
        for c, key in zip(wanted, keys, strict=True):
            line = lines[key]  # type: ignore[index]
            assert line.id is not None
            claim = claims.get(line.id)
            if claim is not None and claim[1] == department:
                continue      # on this department's earlier bill: nothing new
            if line.status == "paid":
                c.reason = "already_paid"
            elif line.status == "claimed":
                c.reason = "claimed_by_other_department"
            elif line.id in busy:
                c.reason = "in_pending_order"
            else:
                taken.append((c, line.id))
        excluded = [c for c in candidates if c.reason is not None]
        if not taken:
            raise Conflict(f"nothing to bill: {NAMES[department]}'s {year} list for town "
                           f"{town_code} has no one who is not billed already"
                           + (f" ({len(excluded)} left out)" if excluded else ""),
                           code="nothing_to_bill")
        earlier = session.scalar(select(func.count()).select_from(DepartmentBill).where(
            col(DepartmentBill.department) == department, col(DepartmentBill.year) == year,
            col(DepartmentBill.town_code) == town_code)) or 0
        bill = DepartmentBill(
            bill_no=new_bill_no(session, department, year), department=department,
            town_code=town_code, year=year, kind="supplement" if earlier else "bill",
            total_fen=sum(c.amount_fen for c, _ in taken), lines=len(taken),
            late_list=_late_list(session, policy, department, town_code),
            issued_by=principal.sub, issued_at=now, issued_on=rt.clock.today())
        session.add(bill)
        session.flush()
        assert bill.id is not None
        tx = Tx(session)
        tx.insert_rows("department_bill_lines", (
            "bill_id", "bill_line_id", "resident_id", "insurance", "tier_yuan", "amount_fen",
            "village_code"), [(bill.id, line_id, c.resident.id, c.insurance, c.tier_yuan,
                               c.amount_fen, c.resident.village_code) for c, line_id in taken])
        claimed = 0
        ids = [line_id for _, line_id in taken]
        for k in range(0, len(ids), CLAIM_BATCH):
            part = ids[k:k + CLAIM_BATCH]
            claimed += tx.rowcount(Statement(
                f"""UPDATE bill_lines SET status = 'claimed', claim_bill_id = :bill
                    WHERE status = 'unpaid' AND id IN ({", ".join(map(str, part))})""",
                prepare=False), bill=bill.id)
        if claimed != len(ids):   # the lines are locked: nothing can have moved them
            raise RuntimeError(f"bill {bill.bill_no}: claimed {claimed} of {len(ids)} lines")
        record(session, rt, principal, "department_bill.issued", "department_bill",
               bill.bill_no, details={"department": department, "town_code": town_code,
                                      "year": year, "kind": bill.kind, "lines": bill.lines,
                                      "total_fen": bill.total_fen,
                                      "excluded": len(excluded), "late_list": bill.late_list})
        log.info("department bill %s issued: %s lines, %s fen, %s left out", bill.bill_no,
                 bill.lines, bill.total_fen, len(excluded))
        return _render(rt, session, principal, bill, excluded=excluded)


def _late_list(session: Session, policy: Policy, department: str, town_code: str) -> bool:
    """Whether any of the listings billed came in after the plan's due date (Beijing)."""
    last = session.scalar(
        select(func.max(col(DepartmentListing.imported_at)))
        .join(Resident, col(Resident.id) == col(DepartmentListing.resident_id))
        .join(Village, col(Village.code) == col(Resident.village_code))
        .where(col(DepartmentListing.department) == department,
               col(DepartmentListing.year) == policy.coverage_year,
               col(Village.town_code) == town_code))
    if last is None:
        return False
    return bool(last.astimezone(SHANGHAI).date() > policy.deadlines.department_lists_due)


# --------------------------------------------------------------------------- transfers
def _bill_for_update(session: Session, bill_no: str) -> DepartmentBill:
    stmt = select(DepartmentBill).where(col(DepartmentBill.bill_no) == bill_no)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    bill = session.scalar(stmt)
    if bill is None:
        raise NotFound(f"no department bill {bill_no}")
    return bill


def outstanding(bill: DepartmentBill) -> int:
    return bill.total_fen - bill.credited_fen - bill.received_fen


def _status(bill: DepartmentBill) -> str:
    if bill.payment_id is not None or (outstanding(bill) <= 0 and bill.received_fen > 0):
        return "paid"
    return "partially_paid" if bill.received_fen > 0 else "issued"


def record_transfer(rt: Runtime, principal: Principal, bill_no: str, amount_fen: int,
                    bank_reference: str, value_date: date) -> BillOut:
    today = rt.clock.today()
    if value_date > today:
        raise ValidationFailed(f"value_date: {value_date} is after today ({today})")
    now = rt.clock.now()
    with unit_of_work(rt.sessions) as session:
        bill = _bill_for_update(session, bill_no)
        _reader(principal, bill)
        _issuer(principal, bill.town_code)
        left = outstanding(bill)
        if amount_fen > left:
            raise Conflict(f"the transfer of {amount_fen} fen is more than bill {bill_no} "
                           f"still owes ({left} fen)", code="transfer_exceeds_outstanding",
                           outstanding_fen=max(left, 0))
        if session.scalar(select(col(DepartmentTransfer.id)).where(
                col(DepartmentTransfer.bank_reference) == bank_reference)) is not None:
            raise _duplicate_reference(bank_reference)
        where: dict[str, str | None] = {"town_code": bill.town_code, "channel": "department"}
        posted = ledger.post_entry(
            session, kind="department_transfer",
            reason=f"bill {bill_no}: transfer {bank_reference} of {value_date}",
            business_date=today, occurred_at=now, legs=[
                ledger.Leg(ledger.town_collection(bill.town_code), amount_fen, **where),
                ledger.Leg(ledger.department_receivable(bill.department), -amount_fen,
                           **where)])
        session.add(DepartmentTransfer(
            bill_id=bill.id, amount_fen=amount_fen, bank_reference=bank_reference,  # type: ignore[arg-type]
            value_date=value_date, recorded_by=principal.sub, recorded_at=now,
            entry_id=posted.entry_id))
        bill.received_fen += amount_fen
        try:
            session.flush()
        except IntegrityError:   # the same reference recorded at the same moment
            raise _duplicate_reference(bank_reference) from None
        if outstanding(bill) == 0:
            _cover(rt, session, bill, now)
        bill.status = _status(bill)
        record(session, rt, principal, "department_bill.transfer", "department_bill", bill_no,
               details={"amount_fen": amount_fen, "bank_reference": bank_reference,
                        "value_date": value_date.isoformat(), "status": bill.status,
                        "outstanding_fen": outstanding(bill)})
        return _render(rt, session, principal, bill)


def _duplicate_reference(reference: str) -> Conflict:
    return Conflict(f"a transfer with bank reference {reference} is recorded already",
                    code="duplicate_bank_reference")


_ACTIVE_LINES = """FROM department_bill_lines d
    WHERE d.bill_id = :bill AND NOT EXISTS (
        SELECT 1 FROM department_credit_lines c WHERE c.department_bill_line_id = d.id)"""
_COVER_ORDER_LINES = Statement(
    f"""INSERT INTO order_lines (order_id, bill_line_id, resident_id, insurance, tier_yuan,
                                amount_fen, village_code, town_code)
        SELECT :order_id, d.bill_line_id, d.resident_id, d.insurance, d.tier_yuan,
               d.amount_fen, d.village_code, :town {_ACTIVE_LINES}""")
_COVER_PAYMENT_LINES = Statement(
    f"""INSERT INTO payment_lines (payment_id, bill_line_id, amount_fen, applied)
        SELECT :payment_id, d.bill_line_id, d.amount_fen, true {_ACTIVE_LINES}""")
_COVER_BILL_LINES = Statement(
    """UPDATE bill_lines SET status = 'paid', paid_payment_id = :payment_id, paid_at = :paid_at,
              paid_tier_yuan = (SELECT d.tier_yuan FROM department_bill_lines d
                                WHERE d.bill_id = :bill AND d.bill_line_id = bill_lines.id),
              paid_fen = (SELECT d.amount_fen FROM department_bill_lines d
                          WHERE d.bill_id = :bill AND d.bill_line_id = bill_lines.id)
       WHERE claim_bill_id = :bill AND status = 'claimed'""")
_BY_INSURANCE = Statement(
    f"""SELECT d.insurance, COUNT(*), SUM(d.amount_fen) {_ACTIVE_LINES}
        GROUP BY d.insurance ORDER BY d.insurance""")


def _cover(rt: Runtime, session: Session, bill: DepartmentBill, now: datetime) -> None:
    """The transfers cover the bill: every line still on it is paid, all at once — one
    order and one department payment for the bill, its lines applied (the partial unique
    index allows each bill line one applied payment line), and one ledger entry that moves
    the money from the department's receivable to each insurance's contributions."""
    tx = Tx(session)
    by_insurance = [(str(ins), int(n), int(fen)) for ins, n, fen in
                    tx.all(_BY_INSURANCE, bill=bill.id)]
    total = sum(fen for _, _, fen in by_insurance)
    n_lines = sum(n for _, n, _ in by_insurance)
    day = rt.clock.today()
    order = Order(order_no=bill.bill_no, payer_sub=f"department:{bill.department}",
                  payer_role="department", year=bill.year, channel="department",
                  status="paid", amount_fen=total, expires_at=now, paid_at=now,
                  channel_transaction_id=bill.bill_no, created_at=now, updated_at=now)
    session.add(order)
    session.flush()
    tx.rowcount(_COVER_ORDER_LINES, order_id=order.id, town=bill.town_code, bill=bill.id)
    payment_id = session.execute(insert(Payment).values(
        attempt_id=None, order_id=order.id, channel="department", transaction_id=bill.bill_no,
        amount_fen=total, paid_at=now, business_date=day, source="department",
        shared_transaction=False, created_at=utcnow()).returning(col(Payment.id))).scalar_one()
    tx.rowcount(_COVER_PAYMENT_LINES, payment_id=payment_id, bill=bill.id)
    marked = tx.rowcount(_COVER_BILL_LINES, payment_id=payment_id, paid_at=now, bill=bill.id)
    if marked != n_lines:
        raise RuntimeError(f"bill {bill.bill_no}: {marked} of {n_lines} lines were claimed")
    if total:
        where: dict[str, str | None] = {"town_code": bill.town_code, "channel": "department"}
        legs: list[ledger.Leg] = []
        for insurance, n, fen in by_insurance:
            legs += [ledger.AggregateLeg(ledger.department_receivable(bill.department), fen,
                                         measure=COLLECTED, items=n, **where),
                     ledger.Leg(ledger.contributions(insurance, bill.year), -fen, **where)]
        ledger.post_entry(session, kind="department_payment",
                          reason=f"bill {bill.bill_no} covered: {n_lines} items paid by "
                                 f"{bill.department}", business_date=day, occurred_at=now,
                          legs=legs, payment_id=payment_id)
    bill.payment_id = payment_id
    bill.paid_at = now


# --------------------------------------------------------------------------- credit notes
def credit_lines(rt: Runtime, session: Session, principal: Principal | None,
                 bill: DepartmentBill, line_ids: list[int], reason: str) -> DepartmentCreditNote:
    """Take ``line_ids`` (department bill lines of ``bill``, not credited yet) off the bill.

    A line not paid yet is released: the item is no longer claimed. A line the bill paid
    already is unpaid again, as after a refund, and its amount is owed back to the
    department (``refund_fen``): finance returns it by bank transfer; the ledger moves it
    from the contributions to the refunds payable. If what is left of the bill is now
    covered by what was received, it is covered now.
    """
    rows = session.execute(
        select(DepartmentBillLine, col(BillLine.status), col(BillLine.paid_payment_id))
        .join(BillLine, col(BillLine.id) == col(DepartmentBillLine.bill_line_id))
        .where(col(DepartmentBillLine.id).in_(line_ids),
               col(DepartmentBillLine.bill_id) == bill.id)).all()
    now = rt.clock.now()
    note = DepartmentCreditNote(
        credit_no=f"CN{bill.bill_no[2:]}{secrets.token_hex(2).upper()}"[:32], bill_id=bill.id,  # type: ignore[arg-type]
        amount_fen=sum(line.amount_fen for line, _, _ in rows), reason=reason[:200],
        issued_by=principal.sub if principal else "system", issued_at=now)
    session.add(note)
    session.flush()
    refund_legs: dict[str, int] = defaultdict(int)
    released: list[int] = []
    given_back: list[int] = []
    credit_rows = []
    for line, status, paid_payment in rows:
        paid_here = status == "paid" and bill.payment_id is not None \
            and paid_payment == bill.payment_id
        credit_rows.append((note.id, line.id, line.amount_fen,
                            line.amount_fen if paid_here else 0))
        if paid_here:
            refund_legs[line.insurance] += line.amount_fen
            given_back.append(line.bill_line_id)
        else:
            released.append(line.bill_line_id)
    tx = Tx(session)
    tx.insert_rows("department_credit_lines", ("credit_note_id", "department_bill_line_id",
                                               "amount_fen", "refund_fen"), credit_rows)
    for k in range(0, len(released), CLAIM_BATCH):
        part = released[k:k + CLAIM_BATCH]
        tx.rowcount(Statement(
            f"""UPDATE bill_lines SET status = 'unpaid', claim_bill_id = NULL
                WHERE status = 'claimed' AND claim_bill_id = :bill
                  AND id IN ({", ".join(map(str, part))})""", prepare=False), bill=bill.id)
    # A line the bill had paid: as a refund does, its payment line stops being the applied
    # one and the item is unpaid again (the money is owed back to the department).
    for k in range(0, len(given_back), CLAIM_BATCH):
        ids = ", ".join(map(str, given_back[k:k + CLAIM_BATCH]))
        tx.rowcount(Statement(
            f"""UPDATE payment_lines SET applied = false
                WHERE payment_id = :payment AND bill_line_id IN ({ids})""", prepare=False),
            payment=bill.payment_id)
        tx.rowcount(Statement(
            f"""UPDATE bill_lines SET status = 'unpaid', claim_bill_id = NULL,
                       paid_payment_id = NULL, paid_at = NULL, paid_tier_yuan = NULL,
                       paid_fen = NULL
                WHERE paid_payment_id = :payment AND id IN ({ids})""", prepare=False),
            payment=bill.payment_id)
    if refund_legs:
        where: dict[str, str | None] = {"town_code": bill.town_code, "channel": "department"}
        legs: list[ledger.Leg] = []
        for insurance, fen in sorted(refund_legs.items()):
            legs += [ledger.Leg(ledger.contributions(insurance, bill.year), fen, **where),
                     ledger.Leg(ledger.REFUNDS, -fen, **where)]
        ledger.post_entry(session, kind="department_credit",
                          reason=f"credit note {note.credit_no} on bill {bill.bill_no}: "
                                 f"{reason}"[:200], business_date=rt.clock.today(),
                          occurred_at=now, legs=legs)
    bill.credited_fen += note.amount_fen
    if bill.payment_id is None and outstanding(bill) <= 0 and bill.received_fen > 0:
        _cover(rt, session, bill, now)
    bill.status = _status(bill)
    record(session, rt, principal, "department_bill.credited", "department_bill",
           bill.bill_no, reason=reason, details={
               "credit_no": note.credit_no, "lines": len(rows), "amount_fen": note.amount_fen,
               "refund_fen": sum(refund_legs.values())})
    return note


def issue_credit_note(rt: Runtime, principal: Principal, bill_no: str,
                      items: list[tuple[str, str]], reason: str) -> BillOut:
    """Staff take residents' items off a bill (found not eligible, say): ``items`` are
    (resident_ref, insurance) as the bill lists them for this caller."""
    refs = RefCodec(rt.pii.ref_key)
    with unit_of_work(rt.sessions) as session:
        bill = _bill_for_update(session, bill_no)
        _reader(principal, bill)
        _issuer(principal, bill.town_code)
        wanted: list[tuple[int, str]] = []
        for n, (ref, insurance) in enumerate(items):
            try:
                wanted.append((refs.read(ref, principal.sub), insurance))
            except NotFound:
                raise ValidationFailed(f"items[{n}].resident_ref: unknown for this caller; "
                                       "take it from the bill") from None
        lines = {(line.resident_id, line.insurance): line for line in session.scalars(
            select(DepartmentBillLine).where(col(DepartmentBillLine.bill_id) == bill.id,
                                             col(DepartmentBillLine.resident_id).in_(
                                                 [r for r, _ in wanted])))}
        credited = set(session.scalars(select(col(DepartmentCreditLine.department_bill_line_id))
                                       .where(col(DepartmentCreditLine.department_bill_line_id)
                                              .in_([x.id for x in lines.values()]))))
        ids: list[int] = []
        for n, key in enumerate(wanted):
            line = lines.get(key)
            if line is None:
                raise ValidationFailed(f"items[{n}]: not a line of bill {bill_no}")
            if line.id in credited:
                raise Conflict(f"items[{n}]: that line of bill {bill_no} is credited already",
                               code="line_already_credited")
            assert line.id is not None
            ids.append(line.id)
        if len(set(ids)) != len(ids):
            raise ValidationFailed("items: the same line twice")
        credit_lines(rt, session, principal, bill, ids, reason)
        return _render(rt, session, principal, bill)


def credit_deceased(rt: Runtime, session: Session, deaths: dict[int, date]) -> list[str]:
    """A death list's effect on department bills: every line of a resident who died before
    its coverage year starts is credited, once. Returns the credit note numbers."""
    if not deaths:
        return []
    rows = session.execute(
        select(col(DepartmentBillLine.id), col(DepartmentBillLine.bill_id),
               col(DepartmentBillLine.resident_id), col(DepartmentBill.year))
        .join(DepartmentBill, col(DepartmentBill.id) == col(DepartmentBillLine.bill_id))
        .where(col(DepartmentBillLine.resident_id).in_(list(deaths)),
               ~col(DepartmentBillLine.id).in_(
                   select(col(DepartmentCreditLine.department_bill_line_id))))).all()
    by_bill: dict[int, list[int]] = defaultdict(list)
    for line_id, bill_id, rid, year in rows:
        try:
            starts = policy_for(rt, int(year)).year_start
        except ValidationFailed:
            continue
        if deaths[int(rid)] < starts:
            by_bill[int(bill_id or 0)].append(int(line_id or 0))
    notes = []
    for bill_id, ids in sorted(by_bill.items()):
        bill = session.get(DepartmentBill, bill_id, with_for_update=(
            session.get_bind().dialect.name == "postgresql"))
        assert bill is not None
        notes.append(credit_lines(rt, session, None, bill, ids, "deceased").credit_no)
    return notes


# --------------------------------------------------------------------------- reading
def get_bill(rt: Runtime, session: Session, principal: Principal, bill_no: str) -> BillOut:
    bill = session.scalar(select(DepartmentBill).where(col(DepartmentBill.bill_no) == bill_no))
    if bill is None:
        raise NotFound(f"no department bill {bill_no}")
    _reader(principal, bill)
    return _render(rt, session, principal, bill)


def _render(rt: Runtime, session: Session, principal: Principal, bill: DepartmentBill, *,
            excluded: list[Candidate] | None = None) -> BillOut:
    refs = RefCodec(rt.pii.ref_key)
    credited = {int(line_id): note for line_id, note in session.execute(
        select(col(DepartmentCreditLine.department_bill_line_id),
               col(DepartmentCreditNote.credit_no))
        .join(DepartmentCreditNote,
              col(DepartmentCreditNote.id) == col(DepartmentCreditLine.credit_note_id))
        .where(col(DepartmentCreditNote.bill_id) == bill.id))}
    lines = [BillLineOut(resident_ref=refs.make(rid, principal.sub), id_number_masked=masked,
                         name=mask_name(name), village_code=village, insurance=insurance,  # type: ignore[arg-type]
                         tier_yuan=tier, amount_fen=fen, credit_note=credited.get(line_id or 0))
             for line_id, rid, masked, name, village, insurance, tier, fen in session.execute(
                 select(col(DepartmentBillLine.id), col(DepartmentBillLine.resident_id),
                        col(Resident.id_masked), col(Resident.name),
                        col(DepartmentBillLine.village_code), col(DepartmentBillLine.insurance),
                        col(DepartmentBillLine.tier_yuan), col(DepartmentBillLine.amount_fen))
                 .join(Resident, col(Resident.id) == col(DepartmentBillLine.resident_id))
                 .where(col(DepartmentBillLine.bill_id) == bill.id)
                 .order_by(col(DepartmentBillLine.id)))]
    transfers = [TransferOut(amount_fen=t.amount_fen, bank_reference=t.bank_reference,
                             value_date=t.value_date, recorded_at=t.recorded_at)
                 for t in session.scalars(select(DepartmentTransfer).where(
                     col(DepartmentTransfer.bill_id) == bill.id)
                     .order_by(col(DepartmentTransfer.id)))]
    notes = [CreditNoteOut(credit_no=n.credit_no, amount_fen=n.amount_fen, reason=n.reason,
                           issued_at=n.issued_at, refund_fen=int(refund or 0))
             for n, refund in session.execute(
                 select(DepartmentCreditNote, func.sum(col(DepartmentCreditLine.refund_fen)))
                 .join(DepartmentCreditLine, col(DepartmentCreditLine.credit_note_id)
                       == col(DepartmentCreditNote.id))
                 .where(col(DepartmentCreditNote.bill_id) == bill.id)
                 .group_by(col(DepartmentCreditNote.id)).order_by(col(DepartmentCreditNote.id)))]
    warnings = []
    if bill.late_list:
        warnings.append("the department's list came in after the plan's due date: accepted")
    return BillOut(
        bill_no=bill.bill_no, department=bill.department,  # type: ignore[arg-type]
        town_code=bill.town_code, year=bill.year, kind=bill.kind,  # type: ignore[arg-type]
        status=_status(bill), lines=lines, total_fen=bill.total_fen,  # type: ignore[arg-type]
        credited_fen=bill.credited_fen, received_fen=bill.received_fen,
        outstanding_fen=max(outstanding(bill), 0),
        overpaid_fen=max(-outstanding(bill), 0) if bill.payment_id else 0,
        issued_at=bill.issued_at, paid_at=bill.paid_at, transfers=transfers,
        credit_notes=notes, warnings=warnings,
        excluded=[ExcludedOut(id_number_masked=c.resident.id_masked,
                              name=mask_name(c.resident.name), insurance=c.insurance,  # type: ignore[arg-type]
                              reason=c.reason)  # type: ignore[arg-type]
                  for c in excluded or []])
