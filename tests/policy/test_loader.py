"""Policy files: what they say, how strictly they are read, and how years are found."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from backend.policy import (
    DEPARTMENTS,
    POLICY_DIR,
    AgeRule,
    Policy,
    PolicyError,
    Stage,
    SubsidyBand,
    clear_policy_cache,
    load_policy,
    policy_for_year,
)
from backend.policy import loader as loader_module

SH = ZoneInfo("Asia/Shanghai")
SHANTING_TEXT = (POLICY_DIR / "shanting-2021.toml").read_text(encoding="utf-8")
TESTVILLE_TEXT = (POLICY_DIR / "testville-2024.toml").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_policy_cache()
    yield
    clear_policy_cache()


def edited(text: str, old: str, new: str) -> str:
    # Guard against a test that silently edits nothing because the file changed.
    assert text.count(old) == 1, f"expected exactly one {old!r} in the policy file"
    return text.replace(old, new)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# --- what the Shanting file says --------------------------------------------------------------

def test_shanting_identity() -> None:
    p = load_policy("shanting-2021")
    assert (p.id, p.district, p.district_name, p.coverage_year) == (
        "shanting-2021", "shanting", "山亭区", 2021)
    assert p.document == "山政办发〔2020〕11号"
    assert p.source == POLICY_DIR / "shanting-2021.toml"


def test_shanting_window_and_stages() -> None:
    p = load_policy("shanting-2021")
    assert p.window_start == datetime(2020, 10, 1, 0, 0, tzinfo=SH)
    assert p.window_end == datetime(2020, 12, 21, 0, 0, tzinfo=SH)
    assert p.window_start.tzinfo == SH
    assert p.stages == (
        Stage("preparation", date(2020, 10, 1), date(2020, 10, 25)),
        Stage("agent_collection", date(2020, 10, 25), date(2020, 11, 20)),
        Stage("treasury", date(2020, 11, 21), date(2020, 12, 20)),
    )
    assert p.stage_on(date(2020, 10, 1)) == "preparation"
    assert p.stage_on(date(2020, 10, 26)) == "agent_collection"
    assert p.stage_on(date(2020, 12, 20)) == "treasury"
    assert p.stage_on(date(2020, 12, 21)) is None
    assert p.year_start == date(2021, 1, 1)


@pytest.mark.parametrize(
    ("now", "state"),
    [
        (datetime(2020, 9, 30, 23, 59, 59, tzinfo=SH), "before"),
        (datetime(2020, 10, 1, 0, 0, tzinfo=SH), "open"),
        (datetime(2020, 12, 20, 23, 59, 59, 999999, tzinfo=SH), "open"),
        (datetime(2020, 12, 21, 0, 0, tzinfo=SH), "after"),
    ],
)
def test_window_state(now: datetime, state: str) -> None:
    assert load_policy("shanting-2021").window_state(now) == state


def test_window_state_rejects_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        load_policy("shanting-2021").window_state(datetime(2020, 11, 1))


def test_shanting_deadlines_and_targets() -> None:
    p = load_policy("shanting-2021")
    assert p.deadlines.department_lists_due == date(2020, 10, 31)
    assert p.deadlines.department_transfer_due == date(2020, 11, 20)
    assert p.deadlines.death_lists_day_of_month == 5
    assert p.deadlines.roster_publication_days == 3
    assert p.targets.medical_min_covered_percent == 100
    assert [p.pension_target_percent(a) for a in (15, 16, 44, 45, 59, 60)] == [
        None, 60, 60, 95, 95, None]


def test_shanting_pension_rules() -> None:
    p = load_policy("shanting-2021")
    assert (p.pension_min_age, p.pension_max_age, p.pension_excludes_students) == (16, 59, True)
    assert p.tiers_yuan == (100, 300, 500, 600, 800, 1000, 1500, 2000, 2500, 3000, 4000, 5000)
    assert p.hardship_tiers_yuan == frozenset({100})
    assert p.hardship_categories == frozenset({
        "disabled", "disabled_severe", "wubao", "dibao", "youfu", "poverty_household",
        "jianli_poverty"})
    assert p.subsidy_bands == (SubsidyBand(100, 3000), SubsidyBand(500, 6000),
                               SubsidyBand(800, 8000))
    assert [p.subsidy_fen(t) for t in (100, 300, 500, 600, 800, 5000)] == [
        3000, 3000, 6000, 6000, 8000, 8000]
    assert p.sponsored_tier_yuan == 100
    assert dict(p.pension_sponsor_categories) == {"disabled_severe": "disabled_federation"}


def test_shanting_medical_rules() -> None:
    p = load_policy("shanting-2021")
    assert (p.medical_amount_fen, p.late_amount_fen) == (28000, 86000)
    assert (p.late_waiting_days, p.newborn_days) == (30, 90)
    assert p.department_order == DEPARTMENTS
    assert dict(p.medical_full_pay_categories) == {
        "jianli_poverty": "poverty_office", "tekun": "civil_affairs",
        "dibao": "civil_affairs", "disabled_severe": "disabled_federation",
        "illness_hardship": "health"}
    assert p.medical_age_rules == (AgeRule(70, None, "finance", 100),
                                   AgeRule(60, 69, "finance", 50))


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    if is_dataclass(value):
        for f in fields(value):
            child = getattr(value, f.name)
            yield f.name, child
            yield from _walk(child)
    elif isinstance(value, tuple | list | frozenset):
        for item in value:
            yield from _walk(item)


@pytest.mark.parametrize("policy_id", ["shanting-2021", "testville-2024"])
def test_no_floats_anywhere(policy_id: str) -> None:
    for name, value in _walk(load_policy(policy_id)):
        assert not isinstance(value, float), name
        if name.endswith(("_fen", "_percent", "_days")) or name in (
                "sponsored_tier_yuan", "min_tier_yuan"):
            assert type(value) is int, name
    policy = load_policy(policy_id)
    assert all(type(t) is int for t in policy.tiers_yuan)


def test_testville_differs() -> None:
    t = load_policy("testville-2024")
    assert (t.id, t.district, t.coverage_year) == ("testville-2024", "testville", 2024)
    assert (t.medical_amount_fen, t.late_amount_fen, t.late_waiting_days) == (38000, 102000, 60)
    assert t.tiers_yuan[0] == 200
    assert t.medical_age_rules[0] == AgeRule(65, None, "finance", 100)
    assert t.window_end == datetime(2024, 1, 1, tzinfo=SH)


# --- loading and caching ----------------------------------------------------------------------

def test_cached_per_file() -> None:
    a = load_policy("shanting-2021")
    assert load_policy("shanting-2021") is a
    assert load_policy(str(POLICY_DIR / "shanting-2021.toml")) is a
    clear_policy_cache()
    assert load_policy("shanting-2021") is not a


def test_load_by_path(tmp_path: Path) -> None:
    path = write(tmp_path, "anything.toml", TESTVILLE_TEXT)
    p = load_policy(str(path))
    assert p.id == "testville-2024"
    assert p.source == path.resolve()


def test_unknown_id() -> None:
    with pytest.raises(PolicyError, match=r"no policy file .*nowhere-1999\.toml.*shanting-2021"):
        load_policy("nowhere-1999")


def test_id_must_match_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_module, "POLICY_DIR", tmp_path)
    write(tmp_path, "shanting-2022.toml", SHANTING_TEXT)
    with pytest.raises(PolicyError, match=r"key 'id' is 'shanting-2021'.*'shanting-2022'"):
        load_policy("shanting-2022")


# --- strict validation: every error names the key and the file --------------------------------

@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("\namount_fen = 28000\n", "\n", "medical.amount_fen", "is missing"),
        ("late_amount_fen = 86000\n", "", "medical.late_amount_fen", "is missing"),
        ("newborn_days = 90\n", "", "medical.newborn_days", "is missing"),
        ('id = "shanting-2021"\n', "", "id", "is missing"),
        ("coverage_year = 2021\n", "", "coverage_year", "is missing"),
        ("hardship_tiers_yuan = [100]\n", "", "pension.hardship_tiers_yuan", "is missing"),
        ("end = 2020-12-21T00:00:00+08:00\n", "", "window.end", "is missing"),
        ("\namount_fen = 28000\n", "\namount_fen = 280.0\n", "medical.amount_fen",
         "must be an integer, got float"),
        ("\namount_fen = 28000\n", '\namount_fen = "28000"\n', "medical.amount_fen",
         "must be an integer, got str"),
        ("late_amount_fen = 86000", "late_amount_fen = true", "medical.late_amount_fen",
         "must be an integer, got bool"),
        ("late_amount_fen = 86000", "late_amount_fen = 20000", "medical.late_amount_fen",
         "at least 28000"),
        ("excludes_students = true", "excludes_students = 1", "pension.excludes_students",
         "true or false"),
        ("start = 2020-10-01T00:00:00+08:00", "start = 2020-10-01T00:00:00", "window.start",
         "UTC offset"),
        ("start = 2020-10-01T00:00:00+08:00", 'start = "2020-10-01"', "window.start",
         "date-time"),
        ("department_lists_due = 2020-10-31", 'department_lists_due = "10-31"',
         "deadlines.department_lists_due", "must be a date"),
        ("end = 2020-12-21T00:00:00+08:00", "end = 2020-09-21T00:00:00+08:00", "window.end",
         "after window.start"),
        ('name = "treasury"             # 费款入库阶段\nstart = 2020-11-21',
         'name = "treasury"\nstart = 2020-12-21', "stages[2].end", "not be before start"),
        ("tiers_yuan = [100, 300, 500,", "tiers_yuan = [300, 100, 500,", "pension.tiers_yuan",
         "ascending"),
        ("hardship_tiers_yuan = [100]", "hardship_tiers_yuan = [150]",
         "pension.hardship_tiers_yuan", "only name tiers"),
        ('"youfu",\n', '"youfu", "rich",\n', "pension.hardship_categories",
         "unknown value 'rich'"),
        ('illness_hardship = "health"', 'illness_hardship = "police"',
         "medical.full_pay_categories.illness_hardship", "unknown department 'police'"),
        ('illness_hardship = "health"', 'illness = "health"',
         "medical.full_pay_categories.illness", "not a known category"),
        ("\ntier_yuan = 100\n", "\ntier_yuan = 200\n", "pension.sponsored.tier_yuan",
         "one of tiers_yuan"),
        ("subsidy_fen = 6000\n", "subsidy_fen = -1\n", "pension.subsidy_bands[1].subsidy_fen",
         "at least 0"),
        ("min_paid_percent = 95", "min_paid_percent = 950", "targets.pension[0].min_paid_percent",
         "at most 100"),
        ("government_share_percent = 50", "government_share_percent = 50.0",
         "medical.age_rules[1].government_share_percent", "must be an integer"),
        ("max_age = 69\n", "max_age = 70\n", "medical.age_rules", "overlap at age 70"),
        ('min_age = 60\nmax_age = 69\ndepartment = "finance"',
         'min_age = 60\nmax_age = 69\ndepartment = "treasury"',
         "medical.age_rules[1].department", "department_order"),
        ('"health", "finance"]', '"health"]', "medical.department_order",
         "missing finance"),
        # unknown keys: usually a typo of a key that would then be missing or ignored
        ("late_waiting_days = 30\n", "late_waiting_days = 30\nlate_wait_days = 30\n",
         "medical.late_wait_days", "not a known key"),
        ('district_name = "山亭区"\n', 'district_name = "山亭区"\ncolour = "red"\n', "colour",
         "not a known key"),
    ],
)
def test_invalid_file(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    path = write(tmp_path, "broken.toml", edited(SHANTING_TEXT, old, new))
    with pytest.raises(PolicyError) as err:
        load_policy(str(path))
    text = str(err.value)
    assert f"key '{key}'" in text
    assert message in text
    assert str(path) in text
    assert isinstance(err.value, ValueError)


def test_unreadable_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", "id = \n")
    with pytest.raises(PolicyError, match=r"bad\.toml can not be read"):
        load_policy(str(path))


def test_invalid_file_is_not_cached(tmp_path: Path) -> None:
    path = write(tmp_path, "fixme.toml", edited(SHANTING_TEXT, "newborn_days = 90\n", ""))
    with pytest.raises(PolicyError):
        load_policy(str(path))
    write(tmp_path, "fixme.toml", SHANTING_TEXT)
    assert load_policy(str(path)).newborn_days == 90


# --- another year of the same district --------------------------------------------------------

def test_same_year_is_the_same_policy() -> None:
    p = load_policy("shanting-2021")
    assert policy_for_year(p, 2021) is p


def test_finds_the_other_year_beside_the_current_file(tmp_path: Path) -> None:
    current = load_policy(str(write(tmp_path, "testville-2024.toml", TESTVILLE_TEXT)))
    text_2025 = edited(edited(TESTVILLE_TEXT, 'id = "testville-2024"', 'id = "testville-2025"'),
                       "coverage_year = 2024", "coverage_year = 2025")
    text_2025 = edited(text_2025, "\namount_fen = 38000", "\namount_fen = 40000")
    write(tmp_path, "testville-2025.toml", text_2025)
    nxt = policy_for_year(current, 2025)
    assert (nxt.id, nxt.coverage_year, nxt.medical_amount_fen) == ("testville-2025", 2025, 40000)
    assert policy_for_year(nxt, 2024) is current


def test_another_district_is_never_picked() -> None:
    # Testville has a 2024 file; Shanting does not, however close the district's name.
    shanting = load_policy("shanting-2021")
    with pytest.raises(LookupError, match=r"'shanting' and coverage year 2024"):
        policy_for_year(shanting, 2024)


def test_missing_year() -> None:
    with pytest.raises(LookupError, match=r"no policy file .*'shanting'.*2022.*shanting-2022"):
        policy_for_year(load_policy("shanting-2021"), 2022)


def test_policy_is_frozen() -> None:
    p: Policy = load_policy("shanting-2021")
    with pytest.raises(AttributeError):
        p.medical_amount_fen = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.medical_full_pay_categories["dibao"] = "health"  # type: ignore[index]
