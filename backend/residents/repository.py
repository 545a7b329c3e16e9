"""All SQL of the registry domain."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.departments.models import DepartmentListing
from backend.residents.models import Death, Resident, Village


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
