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
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.audit.service import record
from backend.clock import SHANGHAI, business_date
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
    BillSummary,
    CreditNoteOut,
    ExcludedOut,
    TransferOut,
)
from backend.errors import Conflict, Forbidden, NotFound, ValidationFailed
from backend.ledger import service as ledger
from backend.ledger.models import COLLECTED
from backend.orders.models import BillLine, Order, Payment
from backend.policy import DEPARTMENTS, Assessment, Policy, ResidentFacts, assess
from backend.receipts import service as receipts
from backend.residents.models import Resident, Town, Village, category_set
from backend.residents.service import policy_for
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
@dataclass(frozen=True)
class Person:
    """What a bill shows of a resident, and what it needs to claim the item."""

    id: int
    name: str
    id_masked: str
    village_code: str


@dataclass
class Candidate:
    resident: Person
    insurance: str
    tier_yuan: int | None
    amount_fen: int
    reason: str | None        # why it is left out, or None


def billing_facts(policy: Policy, facts: ResidentFacts, today: date) -> ResidentFacts:
    """``facts`` with what cannot change a department's share made the same for everyone,
    so that a town of residents is assessed in few distinct calls: the birth date becomes
    1 January of its year unless the resident could be a newborn (the age is coverage year −
    birth year), a death on or after the coverage year's start is no death for that year,
    and the last pension tier (only the resident's default) is dropped.
    ``tests/departments`` checks this against the engine on random residents."""
    return replace(facts, birth_date=_billing_birth(policy, facts.birth_date, today),
                   died_on=_billing_death(policy, facts.died_on), last_pension_tier_yuan=None)


def _billing_birth(policy: Policy, birth: date, today: date) -> date:
    return date(birth.year, 1, 1) if (today - birth).days > policy.newborn_days else birth


def _billing_death(policy: Policy, died: date | None) -> date | None:
    return None if died is None or died >= policy.year_start else died


def department_share(policy: Policy, a: Assessment, department: str, insurance: str
                     ) -> tuple[int | None, int, str | None]:
    """(tier, amount in fen, reason left out) of ``department``'s bill line for an item."""
    if insurance == "pension":
        p = a.pension
        if not p.eligible:
            return None, 0, "deceased" if p.reason == "deceased" else "not_eligible"
        option = p.tier(policy.sponsored_tier_yuan)
        tier, amount, payer = policy.sponsored_tier_yuan, (
            option.government_pays_fen if option else 0), p.paying_department
    else:
        m = a.medical
        if not m.eligible:
            return None, 0, "deceased" if m.reason == "deceased" else "not_eligible"
        # a department pays all of a listed resident's medical, or none of it here
        tier, amount, payer = None, (m.government_pays_fen if m.amount_due_fen == 0 else 0), \
            m.paying_department
    if payer != department:
        return tier, 0, "claimed_by_other_department"
    if amount <= 0:
        return tier, 0, "not_eligible"
    return tier, amount, None


_PEOPLE = """
    SELECT r.id, r.name, r.id_masked, r.village_code, r.birth_date, r.hukou_type,
           r.employee_pension, r.employee_medical, r.student, r.categories, d.died_on
    FROM residents r LEFT JOIN deaths d ON d.id_hash = r.id_hash
    WHERE r.id IN (SELECT listed.resident_id FROM ({listed}) AS listed)
    ORDER BY r.id"""
_LISTINGS = """SELECT l.resident_id, l.department, l.insurance FROM department_listings l
    WHERE l.year = :year AND l.resident_id IN (
        SELECT listed.resident_id FROM ({listed}) AS listed)"""


def _as_date(value: Any) -> date | None:
    return value if value is None or isinstance(value, date) else date.fromisoformat(value)


def _candidates(session: Session, policy: Policy, department: str, town_code: str,
                now: datetime) -> list[Candidate]:
    """The department's list for the town, each listed item assessed against the registry:
    what the department owes for it, or why it is left out. Two queries for the town; the
    engine runs once per distinct set of facts that bear on a department's share."""
    year = policy.coverage_year
    tx = Tx(session)
    where = {"department": department, "year": year, "town": town_code}
    listings: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for rid, dept, insurance in tx.all(Statement(_LISTINGS.format(listed=_LISTED)), **where):
        listings[int(rid)].add((str(dept), str(insurance)))
    today = business_date(now)
    assessed: dict[tuple[Any, ...], Assessment] = {}
    out: list[Candidate] = []
    for (rid, name, masked, village, born, hukou, emp_pension, emp_medical, student,
         categories, died) in tx.all(Statement(_PEOPLE.format(listed=_LISTED)), **where):
        mine = frozenset(listings[int(rid)])
        # the key of billing_facts(), without making the facts of every resident
        key = (_billing_birth(policy, _as_date(born), today),  # type: ignore[arg-type]
               hukou, bool(emp_pension), bool(emp_medical), bool(student), categories,
               _billing_death(policy, _as_date(died)), mine)
        a = assessed.get(key)
        if a is None:
            birth, _, e_pension, e_medical, stud, _, death, _ = key
            a = assessed[key] = assess(policy, ResidentFacts(
                birth_date=birth, hukou_type=hukou, employee_pension=e_pension,  # type: ignore[arg-type]
                employee_medical=e_medical, student=stud,  # type: ignore[arg-type]
                categories=category_set(categories),
                died_on=death, department_listings=mine), now)  # type: ignore[arg-type]
        person = Person(int(rid), str(name), str(masked), str(village))
        for insurance in ("pension", "medical"):
            if (department, insurance) in mine:
                tier, amount, reason = department_share(policy, a, department, insurance)
                out.append(Candidate(person, insurance, tier, amount, reason))
    return out


# The department's listed items in a town, as a subquery of (resident, insurance).
_LISTED = """SELECT l.resident_id, l.insurance FROM department_listings l
    JOIN residents r ON r.id = l.resident_id JOIN villages v ON v.code = r.village_code
    WHERE l.department = :department AND l.year = :year AND v.town_code = :town"""
# Every listed item gets its bill line (lines are made on first use, as orders make them),
# made or locked in the order orders take them (resident, insurance): made in the list's
# order, a new line held before an older one is waited for would deadlock with an order
# holding the older line and making the new one. The no-op DO UPDATE locks an existing line
# as ``orders.repository.bill_lines_for`` does.
# (``WHERE true``: SQLite reads an ON CONFLICT after a bare FROM as a join's ON.)
_MAKE_LINES = Statement(
    f"""INSERT INTO bill_lines (resident_id, year, insurance, status, created_at)
        SELECT listed.resident_id, :year, listed.insurance, 'unpaid', :now
        FROM ({_LISTED}) AS listed WHERE true
        ORDER BY listed.resident_id, listed.insurance
        ON CONFLICT (resident_id, year, insurance) DO UPDATE SET status = bill_lines.status""")
# ... and is locked, in the order orders lock them (resident, insurance), with its claim.
_LOCK_SQL = f"""SELECT b.id, b.resident_id, b.insurance, b.status, d.department
    FROM bill_lines b
    JOIN ({_LISTED}) AS listed
      ON listed.resident_id = b.resident_id AND listed.insurance = b.insurance
    LEFT JOIN department_bills d ON d.id = b.claim_bill_id
    WHERE b.year = :year ORDER BY b.resident_id, b.insurance"""
_LOCK_LINES = Statement(_LOCK_SQL, postgresql=_LOCK_SQL + " FOR UPDATE OF b")
_IN_LIVE_ORDERS = Statement(
    f"""SELECT DISTINCT ol.bill_line_id FROM order_lines ol
        JOIN orders o ON o.id = ol.order_id
        JOIN ({_LISTED}) AS listed
          ON listed.resident_id = ol.resident_id AND listed.insurance = ol.insurance
        WHERE o.status = 'pending' AND o.expires_at > :now AND o.year = :year""")
_CLAIM = Statement(
    """UPDATE bill_lines SET status = 'claimed', claim_bill_id = :bill
       WHERE status = 'unpaid' AND id IN (
           SELECT bill_line_id FROM department_bill_lines WHERE bill_id = :bill)""")


@dataclass(frozen=True)
class LockedLine:
    id: int
    status: str
    claimed_by: str | None     # the department whose bill claims (or paid) it


def _locked_lines(session: Session, department: str, year: int, town_code: str,
                  now: datetime) -> tuple[dict[tuple[int, str], LockedLine], set[int]]:
    """The bill lines of the department's listed items in the town — made if need be and
    locked for this transaction — and those of them in an unexpired pending order. Three
    statements however long the list."""
    tx = Tx(session)
    where = {"department": department, "year": year, "town": town_code}
    tx.rowcount(_MAKE_LINES, now=utcnow(), **where)
    lines = {(int(rid), str(ins)): LockedLine(int(id_), str(status), claimed_by)
             for id_, rid, ins, status, claimed_by in tx.all(_LOCK_LINES, **where)}
    busy = {int(r[0]) for r in tx.all(_IN_LIVE_ORDERS, now=now, **where)}
    return lines, busy


# --------------------------------------------------------------------------- issuing
def new_bill_no(session: Session, department: str, year: int) -> str:
    """``DJ2021FP`` + the department's sequence number of the year + 6 random hex digits:
    two towns issuing the department's bills at the same moment take the same sequence
    number, and the random part keeps their numbers apart."""
    n = session.scalar(select(func.count()).select_from(DepartmentBill).where(
        col(DepartmentBill.department) == department, col(DepartmentBill.year) == year)) or 0
    return f"DJ{year}{ABBREVIATIONS[department]}{int(n) + 1:05d}{secrets.token_hex(3).upper()}"


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
        lines, busy = _locked_lines(session, department, year, town_code, now)
        taken: list[tuple[Candidate, int]] = []
        for c in candidates:
            if c.reason is not None:
                continue
            line = lines[(c.resident.id, c.insurance)]  # type: ignore[index]
            if line.claimed_by == department:
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
        tx.insert_many("department_bill_lines", (
            ("bill_id", "integer"), ("bill_line_id", "integer"), ("resident_id", "integer"),
            ("insurance", "varchar"), ("tier_yuan", "integer"), ("amount_fen", "bigint"),
            ("village_code", "varchar")),
            [(bill.id, line_id, c.resident.id, c.insurance, c.tier_yuan, c.amount_fen,
              c.resident.village_code) for c, line_id in taken])
        claimed = tx.rowcount(_CLAIM, bill=bill.id)
        ids = [line_id for _, line_id in taken]
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
# Before the UPDATEs that mark or free a bill's lines, which take them in the table's order,
# the lines are locked in the order orders lock them (resident, insurance): an order
# holding one of them and waiting for another would otherwise deadlock with the bill.
_LOCK_ORDER = " ORDER BY resident_id, insurance"
_LOCK_CLAIMED_SQL = "SELECT id FROM bill_lines WHERE claim_bill_id = :bill" + _LOCK_ORDER
_LOCK_CLAIMED = Statement(_LOCK_CLAIMED_SQL, postgresql=_LOCK_CLAIMED_SQL + " FOR UPDATE")
_LOCK_CREDITED_SQL = """SELECT id FROM bill_lines WHERE id IN (
    SELECT d.bill_line_id FROM department_credit_lines c
    JOIN department_bill_lines d ON d.id = c.department_bill_line_id
    WHERE c.credit_note_id = :note)""" + _LOCK_ORDER
_LOCK_CREDITED = Statement(_LOCK_CREDITED_SQL,
                           postgresql=_LOCK_CREDITED_SQL + " FOR UPDATE")
_BY_INSURANCE = Statement(
    f"""SELECT d.insurance, COUNT(*), SUM(d.amount_fen) {_ACTIVE_LINES}
        GROUP BY d.insurance ORDER BY d.insurance""")


def _cover(rt: Runtime, session: Session, bill: DepartmentBill, now: datetime) -> None:
    """The transfers cover the bill: every line still on it is paid, all at once — one
    order and one department payment for the bill, its lines applied (the partial unique
    index allows each bill line one applied payment line), and one ledger entry that moves
    the money from the department's receivable to each insurance's contributions."""
    tx = Tx(session)
    tx.all(_LOCK_CLAIMED, bill=bill.id)   # first: the order and payment lines' keys share them
    by_insurance = [(str(ins), int(n), int(fen)) for ins, n, fen in
                    tx.all(_BY_INSURANCE, bill=bill.id)]
    total = sum(fen for _, _, fen in by_insurance)
    n_lines = sum(n for _, n, _ in by_insurance)
    if not n_lines:
        return        # every line credited: nothing to pay (what was received is owed back)
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
    # the department's receipt for the bill, issued with the payment
    receipts.issue(session, rt.receipt_key, payment_id, now)  # type: ignore[arg-type]


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
    # The bill's row is locked (SQLite: the one writer): its notes are numbered in turn.
    n = session.scalar(select(func.count()).select_from(DepartmentCreditNote).where(
        col(DepartmentCreditNote.bill_id) == bill.id)) or 0
    note = DepartmentCreditNote(
        credit_no=f"CN{bill.bill_no[2:]}{int(n) + 1:03d}", bill_id=bill.id,  # type: ignore[arg-type]
        amount_fen=sum(line.amount_fen for line, _, _ in rows), reason=reason[:200],
        issued_by=principal.sub if principal else "system", issued_at=now)
    session.add(note)
    session.flush()
    refund_legs: dict[str, int] = defaultdict(int)
    released: list[int] = []
    given_back: list[int] = []
    credit_rows = []
    # Transfers received beyond what is left of a bill not paid yet: owed back too, out of
    # the released lines' amounts (the bill owed at least what was received before).
    over = 0 if bill.payment_id is not None else max(0, note.amount_fen - outstanding(bill))
    for line, status, paid_payment in rows:
        paid_here = status == "paid" and bill.payment_id is not None \
            and paid_payment == bill.payment_id
        back = line.amount_fen if paid_here else min(over, line.amount_fen)
        credit_rows.append((note.id, line.id, line.amount_fen, back))
        if paid_here:
            refund_legs[line.insurance] += line.amount_fen
            given_back.append(line.bill_line_id)
        else:
            over -= back
            released.append(line.bill_line_id)
    received_back = sum(back for *_, back in credit_rows) - sum(refund_legs.values())
    tx = Tx(session)
    tx.insert_many("department_credit_lines", (
        ("credit_note_id", "integer"), ("department_bill_line_id", "integer"),
        ("amount_fen", "bigint"), ("refund_fen", "bigint")), credit_rows)
    tx.all(_LOCK_CREDITED, note=note.id)
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
    if refund_legs or received_back:
        where: dict[str, str | None] = {"town_code": bill.town_code, "channel": "department"}
        legs: list[ledger.Leg] = []
        for insurance, fen in sorted(refund_legs.items()):
            legs += [ledger.Leg(ledger.contributions(insurance, bill.year), fen, **where),
                     ledger.Leg(ledger.REFUNDS, -fen, **where)]
        if received_back:   # from the receivable, which the cover then leaves at zero
            legs += [ledger.Leg(ledger.department_receivable(bill.department), received_back,
                                **where),
                     ledger.Leg(ledger.REFUNDS, -received_back, **where)]
        note.entry_id = ledger.post_entry(
            session, kind="department_credit",
            reason=f"credit note {note.credit_no} on bill {bill.bill_no}: {reason}"[:200],
            business_date=rt.clock.today(), occurred_at=now, legs=legs).entry_id
    bill.credited_fen += note.amount_fen
    if bill.payment_id is None and outstanding(bill) <= 0 and bill.received_fen > 0:
        _cover(rt, session, bill, now)
    bill.status = _status(bill)
    record(session, rt, principal, "department_bill.credited", "department_bill",
           bill.bill_no, reason=reason, details={
               "credit_no": note.credit_no, "lines": len(rows), "amount_fen": note.amount_fen,
               "refund_fen": sum(back for *_, back in credit_rows)})
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
        # a staff credit note may have taken some of them while we waited for the bill
        done = set(session.scalars(select(col(DepartmentCreditLine.department_bill_line_id))
                                   .where(col(DepartmentCreditLine.department_bill_line_id)
                                          .in_(ids))))
        if ids := [i for i in ids if i not in done]:
            notes.append(credit_lines(rt, session, None, bill, ids, "deceased").credit_no)
    return notes


# --------------------------------------------------------------------------- reading
def get_bill(rt: Runtime, session: Session, principal: Principal, bill_no: str) -> BillOut:
    bill = session.scalar(select(DepartmentBill).where(col(DepartmentBill.bill_no) == bill_no))
    if bill is None:
        raise NotFound(f"no department bill {bill_no}")
    _reader(principal, bill)
    return _render(rt, session, principal, bill)


def list_bills(session: Session, principal: Principal, *, year: int | None,
               department: str | None, town: str | None) -> list[BillSummary]:
    """The bills a caller may read, newest first, without their lines: finance, auditors
    and admins all; town staff their town's; a department user its own department's."""
    stmt = select(DepartmentBill).order_by(col(DepartmentBill.id).desc())
    if principal.role == "town_staff":
        if town is not None and town != principal.town_code:
            raise Forbidden("town staff see their own town's bills only")
        town = principal.town_code
    elif principal.role == "department":
        if department is not None and department != principal.department:
            raise Forbidden("a department sees its own bills only")
        department = principal.department
    elif principal.role not in DISTRICT_ROLES:
        raise Forbidden("department bills are for town staff, finance, auditors, admins and "
                        "the departments")
    if year is not None:
        stmt = stmt.where(col(DepartmentBill.year) == year)
    if department is not None:
        stmt = stmt.where(col(DepartmentBill.department) == department)
    if town is not None:
        stmt = stmt.where(col(DepartmentBill.town_code) == town)
    return [BillSummary(lines=b.lines, **_figures(b)) for b in session.scalars(stmt)]


def _figures(bill: DepartmentBill) -> dict[str, Any]:
    return {"bill_no": bill.bill_no, "department": bill.department,
            "town_code": bill.town_code, "year": bill.year, "kind": bill.kind,
            "status": _status(bill), "total_fen": bill.total_fen,
            "credited_fen": bill.credited_fen, "received_fen": bill.received_fen,
            "outstanding_fen": max(outstanding(bill), 0),
            "overpaid_fen": max(-outstanding(bill), 0), "issued_at": bill.issued_at,
            "paid_at": bill.paid_at}


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
        **_figures(bill), lines=lines, transfers=transfers, credit_notes=notes,
        warnings=warnings,
        excluded=[ExcludedOut(id_number_masked=c.resident.id_masked,
                              name=mask_name(c.resident.name), insurance=c.insurance,  # type: ignore[arg-type]
                              reason=c.reason)  # type: ignore[arg-type]
                  for c in excluded or []])
