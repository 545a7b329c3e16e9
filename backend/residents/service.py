"""The registry's rules: assessing a resident (核定) and the lookup (查询)."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import cast

from sqlalchemy.orm import Session

from backend.cache import address_key
from backend.errors import NotFound, RateLimited, ValidationFailed
from backend.policy import Assessment, Policy, ResidentFacts, assess, policy_for_year
from backend.residents import repository as repo
from backend.residents.idnumber import parse_id_number
from backend.residents.models import Resident
from backend.residents.repository import LookupRow
from backend.residents.schemas import (
    DepartmentBillRef,
    ItemStatus,
    LookupResponse,
    MedicalItem,
    PensionItem,
    ResidentOut,
    TierOut,
)
from backend.runtime import Runtime
from backend.security.pii import mask_name
from backend.security.tokens import Principal
from backend.sql import reads

log = logging.getLogger(__name__)


def normalize_name(name: str) -> str:
    """Full-width and spacing variants of one name compare equal."""
    return "".join(unicodedata.normalize("NFKC", name).split())


def policy_for(rt: Runtime, year: int) -> Policy:
    if year == rt.policy.coverage_year:
        return rt.policy
    try:
        return policy_for_year(rt.policy, year)
    except LookupError:
        raise ValidationFailed(f"year: no collection policy for {year} in this district "
                               f"(current: {rt.policy.coverage_year})") from None


def facts_of(resident: Resident | LookupRow, died_on: date | None,
             listings: frozenset[tuple[str, str]]) -> ResidentFacts:
    return ResidentFacts(
        birth_date=resident.birth_date, hukou_type=resident.hukou_type,
        employee_pension=resident.employee_pension,
        employee_medical=resident.employee_medical, student=resident.student,
        categories=resident.category_set, died_on=died_on,
        last_pension_tier_yuan=resident.last_pension_tier_yuan, department_listings=listings)


def assess_resident(session: Session, policy: Policy, resident: Resident,
                    now: datetime) -> Assessment:
    assert resident.id is not None
    return assess(policy, facts_of(resident, repo.died_on(session, resident.id_hash),
                                   repo.listings(session, resident.id, policy.coverage_year)),
                  now)


def in_scope(session: Session, principal: Principal, resident: Resident, year: int) -> bool:
    """Staff see only their own scope; residents may look up anyone whose ID they hold."""
    assert resident.id is not None
    rid = resident.id
    return allows(principal, resident.village_code,
                  town=lambda: repo.town_of_village(session, resident.village_code),
                  departments=lambda: (d for d, _ in repo.listings(session, rid, year)))


def allows(principal: Principal, village_code: str, *, town: Callable[[], str | None],
           departments: Callable[[], Iterable[str]]) -> bool:
    """The scope rule of ``in_scope``, given how to find the resident's town and the
    departments that list the resident in the year (asked only for the roles that need
    them)."""
    match principal.role:
        case "resident" | "finance" | "auditor" | "admin":
            return True
        case "agent":
            return village_code == principal.village_code
        case "town_staff":
            return town() == principal.town_code
        case "department":
            return any(d == principal.department for d in departments())
    return False


def _status(eligible: bool, due_fen: int, government_fen: int,
            known: str | None) -> ItemStatus:
    if known:
        return cast(ItemStatus, known)   # item_states: "paid", "government_paid", "pending"
    if not eligible:
        return "not_eligible"
    if due_fen == 0 and government_fen > 0:
        return "government_paid"
    return "unpaid"


def item_statuses(a: Assessment, states: dict[str, str]
                  ) -> dict[str, tuple[ItemStatus, int, str | None]]:
    """insurance → (status, amount due in fen, policy reason): the lookup's view of the items,
    given what the bill lines say (``states``: "paid", "government_paid" or "pending")."""
    p, m = a.pension, a.medical
    default = p.tier(p.default_tier_yuan) if p.default_tier_yuan is not None else None
    return {
        "pension": (_status(p.eligible, default.amount_due_fen if default else 1,
                            default.government_pays_fen if default else 0,
                            states.get("pension")),
                    default.amount_due_fen if default else 0, p.reason),
        "medical": (_status(m.eligible, m.amount_due_fen, m.government_pays_fen,
                            states.get("medical")), m.amount_due_fen, m.reason),
    }


def render_lookup(rt: Runtime, principal: Principal, resident: Resident | LookupRow,
                  a: Assessment,
                  states: dict[str, str],
                  bills: dict[str, tuple[str, str, str]] | None = None) -> LookupResponse:
    """``bills``: insurance → (department, bill_no, bill status) of the items a department
    bill claims."""
    assert resident.id is not None
    p, m = a.pension, a.medical
    statuses = item_statuses(a, states)
    bills = bills or {}

    def payable(insurance: str, assessed: bool, reason: str | None) -> tuple[bool, str | None]:
        # What the policy allows, and not paid already: a paid item is ordered no more.
        if insurance in bills:
            return False, "government_paid"
        if states.get(insurance) == "paid":
            return False, "already_paid"
        return assessed, reason

    def billed(insurance: str, assessed: str | None) -> tuple[str | None,
                                                              DepartmentBillRef | None]:
        if insurance not in bills:
            return assessed, None
        department, bill_no, status = bills[insurance]
        return department, DepartmentBillRef(bill_no=bill_no, status=status)  # type: ignore[arg-type]

    pension_department, pension_bill = billed("pension", p.paying_department)
    medical_department, medical_bill = billed("medical", m.paying_department)

    pension_payable, pension_reason = payable("pension", p.payable, p.not_payable_reason)
    medical_payable, medical_reason = payable("medical", m.payable, m.not_payable_reason)
    pension = PensionItem(
        status=statuses["pension"][0],
        eligible=p.eligible, reason=p.reason,
        tiers=[TierOut(tier_yuan=t.tier_yuan, amount_due_fen=t.amount_due_fen,
                       government_pays_fen=t.government_pays_fen, subsidy_fen=t.subsidy_fen)
               for t in p.tiers],
        default_tier_yuan=p.default_tier_yuan, paying_department=pension_department,
        department_bill=pension_bill, payable=pension_payable, not_payable_reason=pension_reason,
    )
    medical = MedicalItem(
        status=statuses["medical"][0],
        eligible=m.eligible, reason=m.reason, amount_due_fen=m.amount_due_fen,
        government_pays_fen=m.government_pays_fen, paying_department=medical_department,
        department_bill=medical_bill, subsidy_fen=m.subsidy_fen,
        benefit_start=m.benefit_start, late=m.late, newborn=m.newborn,
        payable=medical_payable, not_payable_reason=medical_reason,
    )
    return LookupResponse(
        resident=ResidentOut(
            ref=rt.refs.make(resident.id, principal.sub), name=mask_name(resident.name),
            id_number_masked=resident.id_masked, village_code=resident.village_code,
            age=a.age, categories=sorted(resident.category_set),
            deceased=(p.reason == "deceased"),
        ),
        year=a.year, late=a.late, items=[pension, medical],
    )


def lookup(rt: Runtime, principal: Principal, client_ip: str, *,
           name: str, id_number: str, year: int) -> LookupResponse:
    """Name and ID number must both match; a miss says nothing about which one was wrong.

    Each lookup reserves a miss on both counters (the caller's, and its address's:
    ``address_key``) before anything is read, atomically against their limits
    (``RateLimiter.reserve``: concurrent lookups can not all slip past a check made before
    any of them counted); a hit gives it back. A miss costs one Redis round trip, a hit two
    (the reservation, and giving it back), and one statement at the driver outside any
    transaction (the resident with its death, town, listings, bill lines and pending
    orders): ``bench/README.md``, "Lookups".
    """
    s = rt.settings
    reservation = rt.limiter.reserve(
        [(f"lookup:caller:{principal.sub}", s.lookup_miss_limit),
         (f"lookup:ip:{address_key(client_ip)}", s.lookup_ip_miss_limit)],
        s.lookup_miss_window_s)
    if reservation is None:
        raise RateLimited("too many lookups that found nobody; wait a few minutes")
    try:
        citizen = parse_id_number(id_number, today=rt.clock.today())
        policy = policy_for(rt, year)
        now = rt.clock.now()
        found: tuple[LookupRow, repo.LookupItems] | None = None
        with reads(rt.engine) as tx:
            read = repo.lookup(tx, rt.pii.hash(citizen.number), year, now)
        if read is not None and normalize_name(read[0].name) == normalize_name(name):
            row, items = read
            if allows(principal, row.village_code, town=lambda: row.town_code,
                      departments=lambda: (d for d, _ in items.listings)):
                found = read
    except BaseException:
        rt.limiter.release(reservation)     # refused before or failed: not a miss
        raise
    if found is None:
        log.info("lookup miss by %s", principal.role)     # counted: the reservation stays
        raise NotFound("no registered resident with this name and ID number")
    rt.limiter.release(reservation)         # a hit is not a miss
    row, items = found
    assessment = assess(policy, facts_of(row, row.died_on, items.listings), now)
    return render_lookup(rt, principal, row, assessment, items.states, items.bills)


def lookup_json(rt: Runtime, principal: Principal, client_ip: str, *,
                name: str, id_number: str, year: int) -> bytes:
    """``lookup``'s answer as the JSON FastAPI would write for ``LookupResponse``."""
    return lookup(rt, principal, client_ip, name=name, id_number=id_number,
                  year=year).model_dump_json().encode()
