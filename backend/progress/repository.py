"""All SQL of the progress view: one grouped count over the registry, deaths and bill lines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Integer, Table, and_, case, cast, extract, func, select
from sqlalchemy.orm import Session

from backend.orders.models import BillLine
from backend.residents.models import Death, Resident, Town, Village


def _table(model: type) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


@dataclass(frozen=True)
class Group:
    """Residents of one village who share every fact eligibility depends on."""

    village_code: str
    birth_year: int
    employee_pension: bool
    employee_medical: bool
    student: bool
    died_before_year: bool
    pension_paid: bool
    medical_paid: bool
    count: int


def towns(session: Session, town: str | None) -> list[tuple[str, str]]:
    t = _table(Town)
    stmt = select(t.c.code, t.c.name).order_by(t.c.code)
    if town is not None:
        stmt = stmt.where(t.c.code == town)
    return [(c, n) for c, n in session.execute(stmt)]


def villages(session: Session, town: str | None) -> list[tuple[str, str, str]]:
    """(village_code, name, town_code)."""
    v = _table(Village)
    stmt = select(v.c.code, v.c.name, v.c.town_code).order_by(v.c.code)
    if town is not None:
        stmt = stmt.where(v.c.town_code == town)
    return [(c, n, t) for c, n, t in session.execute(stmt)]


def groups(session: Session, year: int, town: str | None) -> Iterator[Group]:
    r, d, v = _table(Resident), _table(Death), _table(Village)
    bp, bm = _table(BillLine).alias("bp"), _table(BillLine).alias("bm")

    def paid(line):  # type: ignore[no-untyped-def]
        return case((line.c.id.is_not(None), 1), else_=0)

    birth_year = cast(extract("year", r.c.birth_date), Integer).label("birth_year")
    dead = case((d.c.died_on < date(year, 1, 1), 1), else_=0).label("dead")
    flags = [case((c, 1), else_=0) for c in
             (r.c.employee_pension, r.c.employee_medical, r.c.student)]
    keys = [r.c.village_code, birth_year, *flags, dead, paid(bp), paid(bm)]

    def item(line, insurance: str):  # type: ignore[no-untyped-def]
        return and_(line.c.resident_id == r.c.id, line.c.year == year,
                    line.c.insurance == insurance, line.c.status == "paid")

    stmt = (select(*keys, func.count())
            .select_from(r.outerjoin(d, d.c.id_hash == r.c.id_hash)
                         .outerjoin(bp, item(bp, "pension"))
                         .outerjoin(bm, item(bm, "medical")))
            .group_by(*keys))
    if town is not None:
        stmt = stmt.where(r.c.village_code.in_(select(v.c.code).where(v.c.town_code == town)))
    for row in session.execute(stmt):
        village, by, ep, em, st, dd, pp, mp, n = tuple(row)
        yield Group(village, int(by), bool(ep), bool(em), bool(st), bool(dd), bool(pp),
                    bool(mp), int(n))
