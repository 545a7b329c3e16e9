"""All SQL of the registry domain."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.departments.models import DepartmentListing
from backend.residents.models import Death, Resident, Village


def resident_by_hash(session: Session, id_hash: str) -> Resident | None:
    return session.scalar(select(Resident).where(Resident.id_hash == id_hash))


def died_on(session: Session, id_hash: str) -> date | None:
    return session.scalar(select(Death.died_on).where(Death.id_hash == id_hash))


def listings(session: Session, resident_id: int, year: int) -> frozenset[tuple[str, str]]:
    rows = session.execute(
        select(DepartmentListing.department, DepartmentListing.insurance)
        .where(DepartmentListing.resident_id == resident_id, DepartmentListing.year == year)
    )
    return frozenset((d, i) for d, i in rows)


def town_of_village(session: Session, village_code: str) -> str | None:
    return session.scalar(select(Village.town_code).where(Village.code == village_code))
