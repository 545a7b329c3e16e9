"""All SQL of the registry domain."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.departments.models import DepartmentListing
from backend.orders.repository import line_states
from backend.residents.models import Death, Resident, Village, category_set
from backend.sql import Statement, Tx


def resident_by_hash(session: Session, id_hash: str) -> Resident | None:
    return session.scalar(select(Resident).where(col(Resident.id_hash) == id_hash))


def died_on(session: Session, id_hash: str) -> date | None:
    return session.scalar(select(col(Death.died_on)).where(col(Death.id_hash) == id_hash))


def listings(session: Session, resident_id: int, year: int) -> frozenset[tuple[str, str]]:
    rows = session.execute(
        select(col(DepartmentListing.department), col(DepartmentListing.insurance))
        .where(col(DepartmentListing.resident_id) == resident_id,
               col(DepartmentListing.year) == year)
    )
    return frozenset((d, i) for d, i in rows)


def for_assessment(session: Session, ids: list[int], year: int) -> dict[
        int, tuple[Resident, date | None, str, frozenset[tuple[str, str]]]]:
    """Residents with what assessing them needs — death, town, department listings — in two
    queries however many residents an order has."""
    rows = session.execute(
        select(Resident, col(Death.died_on), col(Village.town_code))
        .join(Village, col(Village.code) == col(Resident.village_code))
        .outerjoin(Death, col(Death.id_hash) == col(Resident.id_hash))
        .where(col(Resident.id).in_(ids))).all()
    listed = listings_of(session, ids, year)
    return {r.id: (r, died, town, frozenset(listed.get(r.id, ()))) for r, died, town in rows
            if r.id is not None}


def listings_of(session: Session, ids: Any, year: int) -> dict[int, set[tuple[str, str]]]:
    """Department listings (department, insurance) of the residents ``ids`` — a list, or a
    subquery of resident ids — in one query."""
    listed: dict[int, set[tuple[str, str]]] = {}
    for rid, department, insurance in session.execute(
            select(col(DepartmentListing.resident_id), col(DepartmentListing.department),
                   col(DepartmentListing.insurance))
            .where(col(DepartmentListing.resident_id).in_(ids),
                   col(DepartmentListing.year) == year)):
        listed.setdefault(rid, set()).add((department, insurance))
    return listed


def town_of_village(session: Session, village_code: str) -> str | None:
    return session.scalar(select(col(Village.town_code)).where(col(Village.code) == village_code))


# --- the lookup: one statement at the driver (backend/sql.py), no ORM - ----------------------

class LookupRow(NamedTuple):
    """The registry row a lookup reads, with its death and town."""

    id: int
    name: str
    id_masked: str
    birth_date: date
    village_code: str
    hukou_type: str
    employee_pension: bool
    employee_medical: bool
    student: bool
    categories: str
    last_pension_tier_yuan: int | None
    died_on: date | None
    town_code: str | None

    @property
    def category_set(self) -> frozenset[str]:
        return category_set(self.categories)


@dataclass
class LookupItems:
    """What the registry knows of a resident's items in a year, beyond the policy."""

    listings: frozenset[tuple[str, str]] = frozenset()   # (department, insurance)
    states: dict[str, str] = field(default_factory=dict)   # orders.repository.line_states
    # insurance → (department, bill_no, bill status) of the items a department bill claims
    bills: dict[str, tuple[str, str, str]] = field(default_factory=dict)


# One round trip: the resident (by the ID number's keyed hash) with its death and town, and
# with it, one row each, its department listings, its bill lines (with the department bill
# that claims one) and the lines of its unexpired pending orders — found through its bill
# lines (uq_bill_line, then ix_order_lines_bill_line_id): order_lines has no index on
# resident_id. No row: no such resident; one row with kind NULL: a resident with none.
_LOOKUP = Statement("""
    WITH r AS (
        SELECT r.id, r.name, r.id_masked, r.birth_date, r.village_code, r.hukou_type,
               r.employee_pension, r.employee_medical, r.student, r.categories,
               r.last_pension_tier_yuan, d.died_on, v.town_code
        FROM residents r
        LEFT JOIN villages v ON v.code = r.village_code
        LEFT JOIN deaths d ON d.id_hash = r.id_hash
        WHERE r.id_hash = :id_hash),
    i AS (
        SELECT 'listing' AS kind, l.insurance AS insurance, NULL AS status, NULL AS claim,
               l.department AS department, NULL AS bill_no, NULL AS bill_status
        FROM r JOIN department_listings l ON l.resident_id = r.id AND l.year = :year
        UNION ALL
        SELECT 'line', b.insurance, b.status, b.claim_bill_id, db.department, db.bill_no,
               db.status
        FROM r JOIN bill_lines b ON b.resident_id = r.id AND b.year = :year
        LEFT JOIN department_bills db ON db.id = b.claim_bill_id
        UNION ALL
        SELECT 'pending', ol.insurance, NULL, NULL, NULL, NULL, NULL
        FROM r JOIN bill_lines b ON b.resident_id = r.id AND b.year = :year
        JOIN order_lines ol ON ol.bill_line_id = b.id AND ol.resident_id = r.id
        JOIN orders o ON o.id = ol.order_id
        WHERE o.year = :year AND o.status = 'pending' AND o.expires_at > :now)
    SELECT r.id, r.name, r.id_masked, r.birth_date, r.village_code, r.hukou_type,
           r.employee_pension, r.employee_medical, r.student, r.categories,
           r.last_pension_tier_yuan, r.died_on, r.town_code,
           i.kind, i.insurance, i.status, i.claim, i.department, i.bill_no, i.bill_status
    FROM r LEFT JOIN i ON 1 = 1""")


def _date(value: Any) -> date | None:
    # SQLite hands dates back as the ISO text SQLAlchemy's Date stored
    return date.fromisoformat(value) if isinstance(value, str) else value


def lookup(tx: Tx, id_hash: str, year: int, now: datetime
           ) -> tuple[LookupRow, LookupItems] | None:
    """The resident with this ID hash and what the registry knows of its items in ``year``
    (at ``now``: which pending orders have not expired), in one statement."""
    rows = tx.all(_LOOKUP, id_hash=id_hash, year=year, now=now)
    if not rows:
        return None
    (rid, name, masked, born, village, hukou, emp_pension, emp_medical, student, categories,
     tier, died, town) = rows[0][:13]
    row = LookupRow(int(rid), name, masked, _date(born), village, hukou,  # type: ignore[arg-type]
                    bool(emp_pension), bool(emp_medical), bool(student), categories or "",
                    tier, _date(died), town)
    listings: set[tuple[str, str]] = set()
    lines: list[tuple[str, str, int | None]] = []
    pending: list[str] = []
    bills: dict[str, tuple[str, str, str]] = {}
    for kind, insurance, status, claim, department, bill_no, bill_status in (
            r[13:] for r in rows):
        if kind == "listing":
            listings.add((department, insurance))
        elif kind == "line":
            lines.append((insurance, status, claim))
            # as orders.repository.department_items: a claimed or paid line's bill
            if claim is not None and status in ("claimed", "paid") and bill_no is not None:
                bills[insurance] = (str(department), str(bill_no), str(bill_status))
        elif kind == "pending":
            pending.append(insurance)
    return row, LookupItems(frozenset(listings), line_states(lines, pending), bills)
