"""A bill assesses a town in groups of residents whose facts are the same for a department's
share (``billing_facts``). Check that claim against the engine itself on random residents:
a rule that starts to read another fact fails here, instead of billing the wrong amount."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.departments.service import billing_facts, department_share
from backend.policy import CATEGORIES, DEPARTMENTS, HUKOU_TYPES, ResidentFacts, assess
from backend.policy.loader import load_policy

POLICY = load_policy("shanting-2021")
NOW = datetime.fromisoformat("2020-11-02T09:00:00+08:00")
LATE = datetime.fromisoformat("2021-01-15T09:00:00+08:00")
TODAY = date(2020, 11, 2)

facts = st.builds(
    ResidentFacts,
    birth_date=st.dates(date(1915, 1, 1), date(2021, 3, 1)),
    hukou_type=st.sampled_from(sorted(HUKOU_TYPES)),
    employee_pension=st.booleans(), employee_medical=st.booleans(), student=st.booleans(),
    categories=st.frozensets(st.sampled_from(sorted(CATEGORIES)), max_size=3),
    died_on=st.none() | st.dates(date(2019, 1, 1), date(2021, 6, 1)),
    last_pension_tier_yuan=st.none() | st.sampled_from([100, 300, 500, 5000]),
    department_listings=st.frozensets(st.tuples(st.sampled_from(sorted(DEPARTMENTS)),
                                                st.sampled_from(["pension", "medical"])),
                                      max_size=3))


@settings(max_examples=600, deadline=None)
@given(facts, st.sampled_from([NOW, LATE]))
def test_billing_facts_give_every_department_the_share_the_resident_gives(
        f: ResidentFacts, now: datetime) -> None:
    today = (now + timedelta(hours=8)).date()
    whole = assess(POLICY, f, now)
    grouped = assess(POLICY, billing_facts(POLICY, f, today), now)
    for department in DEPARTMENTS:
        for insurance in ("pension", "medical"):
            assert department_share(POLICY, whole, department, insurance) == \
                department_share(POLICY, grouped, department, insurance), (department, insurance)
