"""The demo district loads through the imports, is deterministic, and loads twice cleanly."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.auth.models import StaffUser
from backend.db import unit_of_work
from backend.demo.generator import (
    DEMO_RESIDENTS,
    DEMO_STAFF,
    DEMO_VILLAGE,
    VILLAGE_CODES,
    demo_resident,
    generate_people,
    load_demo,
)
from backend.departments.models import DepartmentListing
from backend.policy import load_policy
from backend.residents.idnumber import parse_id_number
from backend.residents.models import Death, Resident, Village
from backend.runtime import Runtime


def _count(rt: Runtime, model: type) -> int:
    with unit_of_work(rt.sessions) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _listings(rt: Runtime, id_number: str) -> set[tuple[str, str, int]]:
    with unit_of_work(rt.sessions) as s:
        return {(d.department, d.insurance, d.year) for d in s.scalars(
            select(DepartmentListing).join(Resident)
            .where(col(Resident.id_hash) == rt.pii.hash(id_number)))}


def _stamps(s: Session) -> dict[str, datetime]:
    return {h: t for h, t in s.execute(select(col(Resident.id_hash), col(Resident.updated_at)))}


def test_demo_loads_and_loads_again_without_change(rt: Runtime) -> None:
    summary = load_demo(rt, residents=300, seed=7, progress=False)
    zhang = demo_resident("张三")
    assert "张三" in summary and zhang.id_number in summary
    for login in DEMO_STAFF:
        assert f"{login.username} / {login.password}" in summary
    assert _count(rt, Resident) == 300
    assert _count(rt, Village) == len(VILLAGE_CODES)
    assert _count(rt, StaffUser) == len(DEMO_STAFF)

    with unit_of_work(rt.sessions) as s:
        stored = s.scalar(select(Resident)
                          .where(col(Resident.id_hash) == rt.pii.hash(zhang.id_number)))
        assert stored is not None
        assert (stored.name, stored.village_code, stored.last_pension_tier_yuan) == (
            "张三", DEMO_VILLAGE, 300)
        agent = s.scalar(select(StaffUser).where(col(StaffUser.username) == "agent"))
        assert agent is not None and agent.village_code == DEMO_VILLAGE
        town = s.scalar(select(StaffUser).where(col(StaffUser.username) == "town"))
        assert town is not None and town.town_code == DEMO_VILLAGE[:9]
        stamps = _stamps(s)
        deaths = list(s.scalars(select(Death)))
    assert _listings(rt, demo_resident("王芳").id_number) == {("civil_affairs", "medical", 2021)}
    assert _listings(rt, demo_resident("赵强").id_number) == {
        ("disabled_federation", "medical", 2021), ("disabled_federation", "pension", 2021)}
    # The business clock stands at 2020-11-02: the February 2021 death is not known yet.
    assert deaths and all(d.died_on <= date(2020, 11, 2) for d in deaths)
    listings, dead = _count(rt, DepartmentListing), len(deaths)

    again = load_demo(rt, residents=300, seed=7, progress=False)
    assert "300 rows: 0 new, 0 updated, 300 unchanged" in again
    assert "(already there)" in again
    assert (_count(rt, Resident), _count(rt, StaffUser), _count(rt, DepartmentListing),
            _count(rt, Death)) == (300, len(DEMO_STAFF), listings, dead)
    with unit_of_work(rt.sessions) as s:
        assert _stamps(s) == stamps


def test_generated_people_are_deterministic_valid_and_unique() -> None:
    policy = load_policy("shanting-2021")
    people = list(generate_people(policy, 2000, seed=1))
    assert people == list(generate_people(policy, 2000, seed=1))
    assert people != list(generate_people(policy, 2000, seed=2))
    numbers = [p.id_number for p in people] + [p.id_number for p in DEMO_RESIDENTS]
    assert len(set(numbers)) == len(numbers)
    for p in people:
        cid = parse_id_number(p.id_number)
        assert cid.birth_date == p.birth_date
        assert int(p.id_number[16]) % 2 == (1 if p.gender == "M" else 0)
        assert 1930 <= p.birth_date.year <= 2020
        assert p.last_pension_tier_yuan in (None, *policy.tiers_yuan)
        if p.last_pension_tier_yuan in policy.hardship_tiers_yuan:
            assert p.categories & policy.hardship_categories
    local = sum(p.id_number.startswith("370406") for p in people)
    assert 0.9 < local / len(people) < 1
    assert {p.hukou_type for p in people} == {"local", "residence_permit", "accompanying_child"}
    assert 0.03 < sum("disabled" in p.categories for p in people) / len(people) < 0.08
    assert all(parse_id_number(p.id_number).birth_date == p.birth_date for p in DEMO_RESIDENTS)
