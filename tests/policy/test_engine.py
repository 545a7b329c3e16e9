"""The assessment engine against SPEC §2, rule by rule and boundary by boundary."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from backend.policy import (
    Assessment,
    MedicalAssessment,
    Policy,
    ResidentFacts,
    TierOption,
    assess,
    load_policy,
)

SH = ZoneInfo("Asia/Shanghai")
OPEN = datetime(2020, 11, 2, 10, 0, tzinfo=SH)
LATE = datetime(2021, 3, 10, 9, 0, tzinfo=SH)
ALL_TIERS = (100, 300, 500, 600, 800, 1000, 1500, 2000, 2500, 3000, 4000, 5000)


@pytest.fixture(scope="module")
def shanting() -> Policy:
    return load_policy("shanting-2021")


@pytest.fixture(scope="module")
def testville() -> Policy:
    return load_policy("testville-2024")


def facts(
    age: int = 40,
    *,
    year: int = 2021,
    born: date | None = None,
    categories: tuple[str, ...] = (),
    hukou: str = "local",
    employee_pension: bool = False,
    employee_medical: bool = False,
    student: bool = False,
    died_on: date | None = None,
    last_tier: int | None = None,
    listings: tuple[tuple[str, str], ...] = (),
) -> ResidentFacts:
    """A resident of `age` in coverage `year`; born mid-June so no newborn rule interferes."""
    return ResidentFacts(
        birth_date=born or date(year - age, 6, 15),
        hukou_type=hukou,
        employee_pension=employee_pension,
        employee_medical=employee_medical,
        student=student,
        categories=frozenset(categories),
        died_on=died_on,
        last_pension_tier_yuan=last_tier,
        department_listings=frozenset(listings),
    )


def run(policy: Policy, f: ResidentFacts, now: datetime = OPEN) -> Assessment:
    return assess(policy, f, now)


# --- age boundaries (both insurances) ---------------------------------------------------------

@pytest.mark.parametrize(
    ("age", "pension_reason", "med_due", "med_gov", "med_dept"),
    [
        (15, "under_16", 28000, 0, None),
        (16, None, 28000, 0, None),
        (44, None, 28000, 0, None),
        (45, None, 28000, 0, None),
        (59, None, 28000, 0, None),
        (60, "over_59", 14000, 14000, "finance"),
        (69, "over_59", 14000, 14000, "finance"),
        (70, "over_59", 0, 28000, "finance"),
        (95, "over_59", 0, 28000, "finance"),
    ],
)
def test_age_boundaries(shanting: Policy, age: int, pension_reason: str | None, med_due: int,
                        med_gov: int, med_dept: str | None) -> None:
    a = run(shanting, facts(age))
    assert a.age == age
    assert a.year == 2021
    assert a.pension.eligible is (pension_reason is None)
    assert a.pension.reason == pension_reason
    if pension_reason is None:
        assert [t.tier_yuan for t in a.pension.tiers] == list(ALL_TIERS[1:])
        assert a.pension.payable is True
    else:
        assert a.pension.tiers == ()
        assert a.pension.default_tier_yuan is None
        assert a.pension.payable is False
    m = a.medical
    assert (m.eligible, m.amount_due_fen, m.government_pays_fen, m.paying_department) == (
        True, med_due, med_gov, med_dept)
    assert m.benefit_start == date(2021, 1, 1)
    assert m.subsidy_fen == 0


def test_age_is_coverage_year_minus_birth_year(shanting: Policy) -> None:
    # Born on 12-31: still 16 in 2021 for the pension rule, though only 15 on most days.
    a = run(shanting, facts(born=date(2005, 12, 31)))
    assert a.age == 16
    assert a.pension.eligible is True
    assert run(shanting, facts(born=date(2006, 1, 1))).pension.reason == "under_16"
    assert run(shanting, facts(born=date(1961, 12, 31))).pension.reason == "over_59"
    assert run(shanting, facts(born=date(1962, 12, 31))).age == 59


# --- medical: who pays, exactly one department ------------------------------------------------

@pytest.mark.parametrize(
    ("age", "categories", "listings", "dept", "due", "gov"),
    [
        # each category alone, at a neutral age
        (40, ("jianli_poverty",), (), "poverty_office", 0, 28000),
        (40, ("tekun",), (), "civil_affairs", 0, 28000),
        (40, ("dibao",), (), "civil_affairs", 0, 28000),
        (40, ("disabled_severe",), (), "disabled_federation", 0, 28000),
        (40, ("illness_hardship",), (), "health", 0, 28000),
        (40, ("disabled",), (), None, 28000, 0),
        (40, ("wubao",), (), None, 28000, 0),
        (40, ("youfu",), (), None, 28000, 0),
        (40, ("poverty_household",), (), None, 28000, 0),
        (40, (), (), None, 28000, 0),
        # combinations: the department order decides
        (40, ("jianli_poverty", "dibao"), (), "poverty_office", 0, 28000),
        (40, ("dibao", "disabled_severe"), (), "civil_affairs", 0, 28000),
        (40, ("disabled_severe", "illness_hardship"), (), "disabled_federation", 0, 28000),
        (40, ("tekun", "illness_hardship", "disabled"), (), "civil_affairs", 0, 28000),
        (72, ("illness_hardship",), (), "health", 0, 28000),
        (72, (), (), "finance", 0, 28000),
        (70, ("disabled",), (), "finance", 0, 28000),
        (65, ("dibao",), (), "civil_affairs", 0, 28000),     # full pay beats the 60-69 half
        (65, ("illness_hardship",), (), "health", 0, 28000),
        (65, ("youfu",), (), "finance", 14000, 14000),
        (75, tuple(sorted({"disabled_severe", "disabled", "wubao", "dibao", "youfu",
                           "poverty_household", "jianli_poverty", "tekun",
                           "illness_hardship"})), (), "poverty_office", 0, 28000),
        # a department's medical list makes it a candidate that pays all
        (40, (), (("health", "medical"),), "health", 0, 28000),
        (65, (), (("finance", "medical"),), "finance", 0, 28000),
        (65, (), (("disabled_federation", "medical"),), "disabled_federation", 0, 28000),
        (40, ("jianli_poverty",), (("civil_affairs", "medical"),), "poverty_office", 0, 28000),
        (40, ("illness_hardship",), (("civil_affairs", "medical"),), "civil_affairs", 0, 28000),
        # a pension listing says nothing about medical
        (40, (), (("civil_affairs", "pension"),), None, 28000, 0),
    ],
)
def test_medical_paying_department(shanting: Policy, age: int, categories: tuple[str, ...],
                                   listings: tuple[tuple[str, str], ...], dept: str | None,
                                   due: int, gov: int) -> None:
    m = run(shanting, facts(age, categories=categories, listings=listings)).medical
    assert m.eligible is True
    assert (m.paying_department, m.amount_due_fen, m.government_pays_fen) == (dept, due, gov)
    assert m.amount_due_fen + m.government_pays_fen == 28000
    if gov == 28000:
        assert m.government_paid is True
        assert (m.payable, m.not_payable_reason) == (False, "government_paid")
    else:
        assert m.government_paid is False
        assert (m.payable, m.not_payable_reason) == (True, None)


# --- pension: tiers, tier 100, subsidies, the 代缴 -------------------------------------------

@pytest.mark.parametrize(
    ("categories", "listings", "tier_100"),
    [
        ((), (), False),
        (("disabled",), (), True),
        (("disabled_severe",), (), True),
        (("wubao",), (), True),
        (("dibao",), (), True),
        (("youfu",), (), True),
        (("poverty_household",), (), True),
        (("jianli_poverty",), (), True),           # 建档立卡 counts as 扶贫户
        (("tekun",), (), False),                   # not one of the plan's five groups
        (("illness_hardship",), (), False),
        (("tekun", "illness_hardship"), (), False),
        ((), (("civil_affairs", "pension"),), True),
        ((), (("health", "medical"),), False),      # a medical listing does not open tier 100
    ],
)
def test_tier_100_only_for_hardship(shanting: Policy, categories: tuple[str, ...],
                                    listings: tuple[tuple[str, str], ...],
                                    tier_100: bool) -> None:
    p = run(shanting, facts(categories=categories, listings=listings)).pension
    offered = [t.tier_yuan for t in p.tiers]
    assert offered == (list(ALL_TIERS) if tier_100 else list(ALL_TIERS[1:]))
    assert (p.tier(100) is not None) is tier_100
    assert p.default_tier_yuan == (100 if tier_100 else 300)


@pytest.mark.parametrize(
    ("tier", "subsidy"),
    [(100, 3000), (300, 3000), (500, 6000), (600, 6000), (800, 8000), (1000, 8000),
     (1500, 8000), (2000, 8000), (2500, 8000), (3000, 8000), (4000, 8000), (5000, 8000)],
)
def test_pension_subsidy_bands(shanting: Policy, tier: int, subsidy: int) -> None:
    option = run(shanting, facts(categories=("dibao",))).pension.tier(tier)
    assert option == TierOption(tier_yuan=tier, amount_due_fen=tier * 100,
                                government_pays_fen=0, subsidy_fen=subsidy)


@pytest.mark.parametrize(
    ("categories", "listings", "tier", "due", "gov", "subsidy", "dept"),
    [
        (("disabled_severe",), (), 100, 0, 10000, 3000, "disabled_federation"),
        (("disabled_severe",), (), 300, 20000, 10000, 3000, "disabled_federation"),
        (("disabled_severe",), (), 500, 40000, 10000, 6000, "disabled_federation"),
        (("disabled_severe",), (), 5000, 490000, 10000, 8000, "disabled_federation"),
        (("disabled",), (), 100, 10000, 0, 3000, None),   # only severe disability is 代缴
        ((), (("civil_affairs", "pension"),), 100, 0, 10000, 3000, "civil_affairs"),
        ((), (("civil_affairs", "pension"),), 800, 70000, 10000, 8000, "civil_affairs"),
        (("disabled_severe",), (("poverty_office", "pension"),), 500, 40000, 10000, 6000,
         "poverty_office"),
    ],
)
def test_pension_paid_by_department(shanting: Policy, categories: tuple[str, ...],
                                    listings: tuple[tuple[str, str], ...], tier: int, due: int,
                                    gov: int, subsidy: int, dept: str | None) -> None:
    p = run(shanting, facts(categories=categories, listings=listings)).pension
    assert p.paying_department == dept
    assert p.tier(tier) == TierOption(tier, due, gov, subsidy)


@pytest.mark.parametrize(
    ("categories", "last_tier", "default"),
    [
        ((), None, 300),
        ((), 1000, 1000),
        ((), 5000, 5000),
        ((), 100, 300),            # no longer a hardship case: tier 100 is gone
        ((), 700, 300),            # not a tier at all
        (("dibao",), 100, 100),
        (("dibao",), None, 100),
        (("dibao",), 600, 600),
    ],
)
def test_default_tier(shanting: Policy, categories: tuple[str, ...], last_tier: int | None,
                      default: int) -> None:
    p = run(shanting, facts(categories=categories, last_tier=last_tier)).pension
    assert p.default_tier_yuan == default


def test_tier_lookup_misses(shanting: Policy) -> None:
    p = run(shanting, facts()).pension
    assert p.tier(100) is None
    assert p.tier(700) is None
    assert p.tier(300) == TierOption(300, 30000, 0, 3000)


# --- who may join ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "pension_reason", "medical_reason"),
    [
        ({}, None, None),
        ({"hukou": "residence_permit"}, None, None),
        ({"hukou": "accompanying_child", "age": 17}, None, None),
        ({"employee_pension": True}, "employee_pension", None),
        ({"employee_medical": True}, None, "employee_medical"),
        ({"employee_pension": True, "employee_medical": True}, "employee_pension",
         "employee_medical"),
        ({"student": True, "age": 19}, "student", None),
        # the order of reasons: deceased, employee_pension, under_16, over_59, student
        ({"student": True, "age": 15}, "under_16", None),
        ({"student": True, "employee_pension": True}, "employee_pension", None),
        ({"employee_pension": True, "age": 15}, "employee_pension", None),
        ({"employee_pension": True, "age": 65}, "employee_pension", None),
        ({"died_on": date(2020, 12, 31)}, "deceased", "deceased"),
        ({"died_on": date(2019, 3, 1), "employee_pension": True, "employee_medical": True},
         "deceased", "deceased"),
        ({"died_on": date(2021, 1, 1)}, None, None),      # died during the year: still owed
        ({"died_on": date(2021, 6, 30)}, None, None),
    ],
)
def test_eligibility(shanting: Policy, kwargs: dict[str, Any], pension_reason: str | None,
                     medical_reason: str | None) -> None:
    a = run(shanting, facts(**kwargs))
    assert (a.pension.eligible, a.pension.reason) == (pension_reason is None, pension_reason)
    assert (a.medical.eligible, a.medical.reason) == (medical_reason is None, medical_reason)
    if pension_reason is not None:
        assert (a.pension.payable, a.pension.not_payable_reason) == (False, "not_eligible")
    if medical_reason is not None:
        m = a.medical
        assert (m.amount_due_fen, m.government_pays_fen, m.benefit_start) == (0, 0, None)
        assert (m.payable, m.not_payable_reason, m.paying_department) == (
            False, "not_eligible", None)
    else:
        assert a.medical.amount_due_fen + a.medical.government_pays_fen == 28000


def test_deceased_severely_disabled_gets_no_department(shanting: Policy) -> None:
    a = run(shanting, facts(categories=("disabled_severe",), died_on=date(2020, 5, 1)))
    assert a.pension.paying_department is None
    assert a.medical.paying_department is None
    assert a.medical.government_pays_fen == 0


def test_not_born_in_coverage_year(shanting: Policy) -> None:
    m = run(shanting, facts(born=date(2022, 1, 5)), datetime(2022, 2, 1, tzinfo=SH)).medical
    assert (m.eligible, m.reason) == (False, "not_born")


# --- the window: before, open, after ----------------------------------------------------------

@pytest.mark.parametrize(
    ("now", "window", "pension_block", "med_block", "med_due", "late", "benefit_start"),
    [
        (datetime(2020, 9, 30, 23, 59, 59, tzinfo=SH), "before", "window_not_open",
         "window_not_open", 28000, False, date(2021, 1, 1)),
        (datetime(2020, 10, 1, 0, 0, tzinfo=SH), "open", None, None, 28000, False,
         date(2021, 1, 1)),
        (datetime(2020, 12, 20, 23, 59, 59, tzinfo=SH), "open", None, None, 28000, False,
         date(2021, 1, 1)),
        (datetime(2020, 12, 21, 0, 0, tzinfo=SH), "after", "window_closed", None, 86000, True,
         date(2021, 1, 20)),
        # the same instants in UTC: the window is Asia/Shanghai
        (datetime(2020, 9, 30, 15, 59, 59, tzinfo=UTC), "before", "window_not_open",
         "window_not_open", 28000, False, date(2021, 1, 1)),
        (datetime(2020, 9, 30, 16, 0, tzinfo=UTC), "open", None, None, 28000, False,
         date(2021, 1, 1)),
        (datetime(2020, 12, 20, 15, 59, 59, tzinfo=UTC), "open", None, None, 28000, False,
         date(2021, 1, 1)),
        (datetime(2020, 12, 20, 16, 0, tzinfo=UTC), "after", "window_closed", None, 86000,
         True, date(2021, 1, 20)),
        # late: cover 30 days after the (Shanghai) payment date, never before Jan 1
        (datetime(2021, 3, 10, 9, 0, tzinfo=SH), "after", "window_closed", None, 86000, True,
         date(2021, 4, 9)),
        (datetime(2021, 3, 9, 17, 0, tzinfo=UTC), "after", "window_closed", None, 86000, True,
         date(2021, 4, 9)),
        (datetime(2021, 12, 31, 12, 0, tzinfo=SH), "after", "window_closed", None, 86000, True,
         date(2022, 1, 30)),
    ],
)
def test_window(shanting: Policy, now: datetime, window: str, pension_block: str | None,
                med_block: str | None, med_due: int, late: bool, benefit_start: date) -> None:
    a = run(shanting, facts(), now)
    assert (a.window, a.late) == (window, window == "after")
    assert a.pension.eligible is True
    assert (a.pension.payable, a.pension.not_payable_reason) == (
        pension_block is None, pension_block)
    m = a.medical
    assert (m.payable, m.not_payable_reason) == (med_block is None, med_block)
    assert (m.amount_due_fen, m.government_pays_fen, m.late) == (med_due, 0, late)
    assert m.paying_department is None
    assert m.benefit_start == benefit_start


@pytest.mark.parametrize(
    ("age", "categories", "due", "gov", "dept", "late", "benefit_start"),
    [
        (40, (), 86000, 0, None, True, date(2021, 4, 9)),
        (60, (), 86000, 0, None, True, date(2021, 4, 9)),      # the half lapses when late
        (69, ("youfu",), 86000, 0, None, True, date(2021, 4, 9)),
        (72, (), 0, 28000, "finance", False, date(2021, 1, 1)),  # the department's obligation
        (40, ("dibao",), 0, 28000, "civil_affairs", False, date(2021, 1, 1)),
        (40, ("disabled_severe",), 0, 28000, "disabled_federation", False, date(2021, 1, 1)),
    ],
)
def test_late_medical(shanting: Policy, age: int, categories: tuple[str, ...], due: int,
                      gov: int, dept: str | None, late: bool, benefit_start: date) -> None:
    a = run(shanting, facts(age, categories=categories), LATE)
    m = a.medical
    assert a.late is True
    assert (m.amount_due_fen, m.government_pays_fen, m.paying_department) == (due, gov, dept)
    assert (m.late, m.benefit_start, m.newborn) == (late, benefit_start, False)
    assert m.payable is late   # a resident pays late themself; a department's item is not theirs


def test_severely_disabled_pension_closed_after_window(shanting: Policy) -> None:
    p = run(shanting, facts(categories=("disabled_severe",)), LATE).pension
    assert (p.eligible, p.payable, p.not_payable_reason) == (True, False, "window_closed")
    assert p.tier(100) == TierOption(100, 0, 10000, 3000)


def test_government_paid_before_window(shanting: Policy) -> None:
    before = datetime(2020, 9, 1, tzinfo=SH)
    m = run(shanting, facts(72), before).medical
    assert (m.amount_due_fen, m.government_pays_fen, m.not_payable_reason) == (
        0, 28000, "government_paid")
    m = run(shanting, facts(65), before).medical
    assert (m.amount_due_fen, m.government_pays_fen, m.paying_department) == (
        14000, 14000, "finance")
    assert (m.payable, m.not_payable_reason) == (False, "window_not_open")


# --- newborns (出生90天内) ---------------------------------------------------------------------

NOW_FEB = datetime(2021, 2, 1, 10, 0, tzinfo=SH)


@pytest.mark.parametrize(
    ("now", "born", "newborn", "due", "late", "benefit_start", "payable"),
    [
        (NOW_FEB, date(2020, 11, 4), True, 28000, False, date(2021, 1, 1), True),   # 89 days
        (NOW_FEB, date(2020, 11, 3), True, 28000, False, date(2021, 1, 1), True),   # 90 days
        (NOW_FEB, date(2020, 11, 2), False, 86000, True, date(2021, 3, 3), True),   # 91 days
        (NOW_FEB, date(2021, 1, 10), True, 28000, False, date(2021, 1, 10), True),  # from birth
        (NOW_FEB, date(2021, 2, 1), True, 28000, False, date(2021, 2, 1), True),    # today
        # the age in days counts Shanghai business dates: 2021-01-31T17:00Z is 02-01 there
        (datetime(2021, 1, 31, 17, 0, tzinfo=UTC), date(2020, 11, 2), False, 86000, True,
         date(2021, 3, 3), True),
        (datetime(2021, 1, 31, 15, 0, tzinfo=UTC), date(2020, 11, 2), True, 28000, False,
         date(2021, 1, 1), True),
        # before the window opens, a newborn may still pay
        (datetime(2020, 9, 15, 10, 0, tzinfo=SH), date(2020, 8, 1), True, 28000, False,
         date(2021, 1, 1), True),
        (datetime(2020, 9, 15, 10, 0, tzinfo=SH), date(2020, 5, 1), False, 28000, False,
         date(2021, 1, 1), False),
        # in the window, a newborn is just an ordinary resident paying the ordinary amount
        (OPEN, date(2020, 10, 1), True, 28000, False, date(2021, 1, 1), True),
    ],
)
def test_newborn(shanting: Policy, now: datetime, born: date, newborn: bool, due: int,
                 late: bool, benefit_start: date, payable: bool) -> None:
    a = run(shanting, facts(born=born), now)
    m = a.medical
    assert (m.eligible, m.newborn, m.amount_due_fen, m.government_pays_fen) == (
        True, newborn, due, 0)
    assert (m.late, m.benefit_start, m.payable) == (late, benefit_start, payable)
    assert a.pension.reason == "under_16"


def test_newborn_in_a_dibao_family_is_government_paid(shanting: Policy) -> None:
    m = run(shanting, facts(born=date(2021, 1, 10), categories=("dibao",)), NOW_FEB).medical
    assert (m.newborn, m.amount_due_fen, m.government_pays_fen) == (True, 0, 28000)
    assert (m.paying_department, m.benefit_start) == ("civil_affairs", date(2021, 1, 10))


# --- input checks, and money is int -----------------------------------------------------------

def test_naive_now_is_rejected(shanting: Policy) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        assess(shanting, facts(), datetime(2020, 11, 2, 10, 0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"categories": ("dibao", "rich")},
        {"hukou": "abroad"},
        {"listings": (("police", "medical"),)},
        {"listings": (("health", "dental"),)},
    ],
)
def test_unknown_codes_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown"):
        facts(**kwargs)


@pytest.mark.parametrize("age", [15, 40, 65, 72])
@pytest.mark.parametrize("now", [OPEN, LATE])
def test_money_is_int(shanting: Policy, age: int, now: datetime) -> None:
    a = run(shanting, facts(age, categories=("disabled_severe",)), now)
    items: list[MedicalAssessment | TierOption] = [a.medical, *a.pension.tiers]
    for obj in items:
        for f in fields(obj):
            if f.name.endswith("_fen"):
                assert type(getattr(obj, f.name)) is int, f.name


# --- a new year is a file, not code -----------------------------------------------------------

TV_OPEN = datetime(2023, 10, 15, 10, 0, tzinfo=SH)
TV_LATE = datetime(2024, 2, 1, 10, 0, tzinfo=SH)


@pytest.mark.parametrize(
    ("age", "categories", "shanting_med", "testville_med"),
    [
        (40, (), (28000, 0, None), (38000, 0, None)),
        (61, (), (14000, 14000, "finance"), (19000, 19000, "finance")),
        (65, (), (14000, 14000, "finance"), (0, 38000, "finance")),   # 65+ free in testville
        (67, ("youfu",), (14000, 14000, "finance"), (0, 38000, "finance")),
        (70, (), (0, 28000, "finance"), (0, 38000, "finance")),
        (40, ("dibao", "disabled_severe"), (0, 28000, "civil_affairs"),
         (0, 38000, "civil_affairs")),
    ],
)
def test_testville_medical(shanting: Policy, testville: Policy, age: int,
                           categories: tuple[str, ...], shanting_med: tuple[int, int, str | None],
                           testville_med: tuple[int, int, str | None]) -> None:
    for policy, now, year, expected in ((shanting, OPEN, 2021, shanting_med),
                                        (testville, TV_OPEN, 2024, testville_med)):
        a = run(policy, facts(age, year=year, categories=categories), now)
        assert (a.year, a.age) == (year, age)
        m = a.medical
        assert (m.amount_due_fen, m.government_pays_fen, m.paying_department) == expected


def test_testville_late(testville: Policy) -> None:
    a = run(testville, facts(62, year=2024), TV_LATE)
    assert (a.window, a.late) == ("after", True)
    m = a.medical
    # 1020 yuan, cover 60 days after payment
    assert (m.amount_due_fen, m.government_pays_fen, m.benefit_start) == (
        102000, 0, date(2024, 4, 1))


@pytest.mark.parametrize(
    ("now", "window"),
    [
        (datetime(2023, 8, 31, 23, 59, 59, tzinfo=SH), "before"),
        (datetime(2023, 9, 1, 0, 0, tzinfo=SH), "open"),
        (datetime(2023, 12, 31, 23, 59, 59, tzinfo=SH), "open"),
        (datetime(2024, 1, 1, 0, 0, tzinfo=SH), "after"),
        (OPEN, "before"),   # Shanting's open window means nothing in Testville
    ],
)
def test_testville_window(testville: Policy, now: datetime, window: str) -> None:
    assert run(testville, facts(year=2024), now).window == window


@pytest.mark.parametrize(
    ("categories", "tier", "expected", "dept"),
    [
        ((), 200, None, None),
        ((), 400, TierOption(400, 40000, 0, 4000), None),
        ((), 700, TierOption(700, 70000, 0, 7000), None),
        ((), 2000, TierOption(2000, 200000, 0, 12000), None),
        (("youfu",), 200, None, None),          # not a hardship group in Testville
        (("dibao",), 200, TierOption(200, 20000, 0, 4000), None),
        (("disabled_severe",), 200, TierOption(200, 0, 20000, 4000), "disabled_federation"),
        (("disabled_severe",), 700, TierOption(700, 50000, 20000, 7000), "disabled_federation"),
        (("wubao",), 1000, TierOption(1000, 80000, 20000, 7000), "civil_affairs"),
    ],
)
def test_testville_pension(testville: Policy, categories: tuple[str, ...], tier: int,
                           expected: TierOption | None, dept: str | None) -> None:
    p = run(testville, facts(year=2024, categories=categories), TV_OPEN).pension
    assert p.tier(tier) == expected
    assert p.paying_department == dept
    assert p.tier(300) is None   # a Shanting tier


def test_same_resident_in_both_policies(shanting: Policy, testville: Policy) -> None:
    f = facts(born=date(1958, 3, 1))
    assert run(shanting, f).age == 63
    assert run(testville, f, TV_OPEN).age == 66
    assert run(shanting, f).medical.amount_due_fen == 14000
    assert run(testville, f, TV_OPEN).medical.amount_due_fen == 0
