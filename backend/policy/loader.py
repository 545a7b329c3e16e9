"""Policy files (征缴政策): one TOML file per district and coverage year, read into a `Policy`.

The next year, or another county, is a new file beside ``shanting-2021.toml``, not new code.
Files are validated strictly: a missing, unknown or wrong-typed key is a `PolicyError` naming
the key and the file, so a typo fails at start-up instead of charging someone wrongly.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

BUSINESS_TZ = ZoneInfo("Asia/Shanghai")
POLICY_DIR = Path(__file__).resolve().parent

#: The departments that pay for residents (代缴), in the SPEC's medical paying order.
DEPARTMENTS: tuple[str, ...] = (
    "poverty_office", "civil_affairs", "disabled_federation", "health", "finance",
)
CATEGORIES: frozenset[str] = frozenset({
    "disabled_severe", "disabled", "wubao", "dibao", "youfu", "poverty_household",
    "jianli_poverty", "tekun", "illness_hardship",
})
HUKOU_TYPES: frozenset[str] = frozenset({"local", "residence_permit", "accompanying_child"})

WindowState = Literal["before", "open", "after"]


class PolicyError(ValueError):
    """A policy file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class SubsidyBand:
    """Pension subsidy (政府补贴) credited for every tier from `min_tier_yuan` upwards."""

    min_tier_yuan: int
    subsidy_fen: int


@dataclass(frozen=True)
class AgeRule:
    """Medical: a department pays a share of the contribution for an age band (`None`: no cap)."""

    min_age: int
    max_age: int | None
    department: str
    government_share_percent: int

    def applies(self, age: int) -> bool:
        return age >= self.min_age and (self.max_age is None or age <= self.max_age)


@dataclass(frozen=True)
class Stage:
    """A stage of the collection (实施步骤); both dates inclusive, Asia/Shanghai."""

    name: str
    start: date
    end: date


@dataclass(frozen=True)
class Deadlines:
    department_lists_due: date       # 资助人员名单 due
    department_transfer_due: date    # departments' 代缴 money due
    death_lists_day_of_month: int    # death lists due monthly by this day
    roster_publication_days: int     # 公示 period


@dataclass(frozen=True)
class PensionTarget:
    """Paid-rate target (任务目标) for an age band."""

    min_age: int
    max_age: int
    min_paid_percent: int


@dataclass(frozen=True)
class Targets:
    pension: tuple[PensionTarget, ...]
    medical_min_covered_percent: int


def coverage_year_start(year: int) -> date:
    """The first day of coverage ``year`` (every policy's ``year_start``): for code that has
    a year but no policy at hand, such as a payment being applied."""
    return date(year, 1, 1)


# eq=False: mappings are not hashable, and a policy is a cached singleton per file anyway.
@dataclass(frozen=True, eq=False)
class Policy:
    """The collection policy of one district for one coverage year."""

    id: str
    district: str
    district_name: str
    coverage_year: int
    document: str
    source: Path
    window_start: datetime          # aware, Asia/Shanghai, inclusive
    window_end: datetime            # aware, Asia/Shanghai, exclusive
    stages: tuple[Stage, ...]
    deadlines: Deadlines
    targets: Targets
    # pension (居民养老保险)
    pension_min_age: int
    pension_max_age: int
    pension_excludes_students: bool
    tiers_yuan: tuple[int, ...]                 # ascending
    hardship_tiers_yuan: frozenset[int]          # only for hardship groups / department-listed
    hardship_categories: frozenset[str]
    subsidy_bands: tuple[SubsidyBand, ...]      # ascending by min_tier_yuan
    sponsored_tier_yuan: int                    # 代缴最低标准
    pension_sponsor_categories: Mapping[str, str]   # category → department paying the tier
    # medical (居民医疗保险)
    medical_amount_fen: int
    late_amount_fen: int
    late_waiting_days: int
    newborn_days: int
    department_order: tuple[str, ...]           # highest first
    medical_full_pay_categories: Mapping[str, str]  # category → department paying all
    medical_age_rules: tuple[AgeRule, ...]

    @property
    def year_start(self) -> date:
        return coverage_year_start(self.coverage_year)

    def window_state(self, now: datetime) -> WindowState:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if now < self.window_start:
            return "before"
        if now < self.window_end:
            return "open"
        return "after"

    def subsidy_fen(self, tier_yuan: int) -> int:
        subsidy = 0
        for band in self.subsidy_bands:
            if tier_yuan >= band.min_tier_yuan:
                subsidy = band.subsidy_fen
        return subsidy

    def stage_on(self, day: date) -> str | None:
        """The first stage whose dates include `day` (the plan lets stages share a day)."""
        for stage in self.stages:
            if stage.start <= day <= stage.end:
                return stage.name
        return None

    def pension_target_percent(self, age: int) -> int | None:
        for target in self.targets.pension:
            if target.min_age <= age <= target.max_age:
                return target.min_paid_percent
        return None

    def department_rank(self, department: str) -> int:
        return self.department_order.index(department)


# --- reading ---------------------------------------------------------------------------------

T = TypeVar("T")


class _Table:
    """A TOML table that remembers its dotted path and which keys were read."""

    def __init__(self, data: Mapping[str, Any], path: str, file: Path) -> None:
        self._data = data
        self._path = path
        self._file = file
        self._seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def error(self, key: str, message: str) -> PolicyError:
        return PolicyError(f"policy file {self._file}: key '{self._key(key)}' {message}")

    def _raw(self, key: str, *, optional: bool = False) -> Any:
        self._seen.add(key)
        if key not in self._data:
            if optional:
                return None
            raise self.error(key, "is missing")
        return self._data[key]

    def _typed(self, key: str, value: Any, kind: type[T], what: str) -> T:
        # bool is an int in Python, but `true` is never a number of fen.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be {what}, got {type(value).__name__} {value!r}")
        return value

    def text(self, key: str) -> str:
        value = self._typed(key, self._raw(key), str, "a string")
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, *, minimum: int = 0, maximum: int | None = None) -> int:
        value = self._typed(key, self._raw(key), int, "an integer")
        return self._bounded(key, value, minimum, maximum)

    def optional_integer(self, key: str, *, minimum: int = 0) -> int | None:
        value = self._raw(key, optional=True)
        if value is None:
            return None
        return self._bounded(key, self._typed(key, value, int, "an integer"), minimum, None)

    def _bounded(self, key: str, value: int, minimum: int, maximum: int | None) -> int:
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            raise self.error(key, f"must be at least {minimum}{upper}, got {value}")
        return value

    def flag(self, key: str) -> bool:
        return self._typed(key, self._raw(key), bool, "true or false")

    def day(self, key: str) -> date:
        value = self._raw(key)
        # A TOML datetime is also a `date` subclass; only a plain date is meant here.
        if isinstance(value, datetime) or not isinstance(value, date):
            raise self.error(key, f"must be a date like 2020-10-31, got {value!r}")
        return value

    def instant(self, key: str) -> datetime:
        value = self._raw(key)
        if not isinstance(value, datetime):
            raise self.error(key, f"must be a date-time with offset, got {value!r}")
        if value.tzinfo is None:
            raise self.error(key, "must carry a UTC offset, e.g. 2020-10-01T00:00:00+08:00")
        return value.astimezone(BUSINESS_TZ)

    def integers(self, key: str, *, minimum: int = 0) -> tuple[int, ...]:
        value = self._typed(key, self._raw(key), list, "a list of integers")
        for item in value:
            if not isinstance(item, int) or isinstance(item, bool):
                raise self.error(key, f"must be a list of integers, got item {item!r}")
            self._bounded(key, item, minimum, None)
        return tuple(value)

    def texts(self, key: str, allowed: frozenset[str] | tuple[str, ...]) -> tuple[str, ...]:
        value = self._typed(key, self._raw(key), list, "a list of strings")
        for item in value:
            if item not in allowed:
                raise self.error(key, f"has unknown value {item!r}; expected one of "
                                      f"{', '.join(sorted(allowed))}")
        if len(set(value)) != len(value):
            raise self.error(key, "has duplicates")
        return tuple(value)

    def table(self, key: str) -> _Table:
        value = self._typed(key, self._raw(key), dict, "a table")
        return _Table(value, self._key(key), self._file)

    def tables(self, key: str) -> list[_Table]:
        value = self._typed(key, self._raw(key), list, "an array of tables ([[...]])")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(key, f"item {i} must be a table")
            out.append(_Table(item, f"{self._key(key)}[{i}]", self._file))
        return out

    def mapping(self, key: str, keys: frozenset[str], values: tuple[str, ...]) -> dict[str, str]:
        table = self.table(key)
        out: dict[str, str] = {}
        for k in table._data:
            if k not in keys:
                raise table.error(k, f"is not a known category; expected one of "
                                     f"{', '.join(sorted(keys))}")
            v = table.text(k)
            if v not in values:
                raise table.error(k, f"has unknown department {v!r}; expected one of "
                                     f"{', '.join(values)}")
            out[k] = v
        return out

    def done(self) -> None:
        """Reject keys nobody read: most often a typo of a key that then silently defaults."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "is not a known key")


def _each(tables: list[_Table], build: Callable[[_Table], T]) -> tuple[T, ...]:
    out = []
    for table in tables:
        out.append(build(table))
        table.done()
    return tuple(out)


def _parse(data: Mapping[str, Any], file: Path) -> Policy:
    root = _Table(data, "", file)

    window = root.table("window")
    window_start, window_end = window.instant("start"), window.instant("end")
    if window_end <= window_start:
        raise window.error("end", "must be after window.start")
    window.done()

    def stage(t: _Table) -> Stage:
        s = Stage(t.text("name"), t.day("start"), t.day("end"))
        if s.end < s.start:
            raise t.error("end", "must not be before start")
        return s

    stages = _each(root.tables("stages"), stage)

    dl = root.table("deadlines")
    deadlines = Deadlines(
        department_lists_due=dl.day("department_lists_due"),
        department_transfer_due=dl.day("department_transfer_due"),
        death_lists_day_of_month=dl.integer("death_lists_day_of_month", minimum=1, maximum=28),
        roster_publication_days=dl.integer("roster_publication_days", minimum=1),
    )
    dl.done()

    tg = root.table("targets")
    pension_targets = _each(tg.tables("pension"), lambda t: PensionTarget(
        t.integer("min_age"), t.integer("max_age"), t.integer("min_paid_percent", maximum=100)))
    targets = Targets(pension_targets, tg.integer("medical_min_covered_percent", maximum=100))
    tg.done()

    pn = root.table("pension")
    pension_min_age = pn.integer("min_age")
    pension_max_age = pn.integer("max_age", minimum=pension_min_age)
    excludes_students = pn.flag("excludes_students")
    tiers = pn.integers("tiers_yuan", minimum=1)
    if not tiers or list(tiers) != sorted(set(tiers)):
        raise pn.error("tiers_yuan", "must be a non-empty ascending list without duplicates")
    hardship_tiers = pn.integers("hardship_tiers_yuan", minimum=1)
    if not set(hardship_tiers) <= set(tiers):
        raise pn.error("hardship_tiers_yuan", "must only name tiers listed in tiers_yuan")
    hardship_categories = frozenset(pn.texts("hardship_categories", CATEGORIES))
    bands = _each(pn.tables("subsidy_bands"), lambda t: SubsidyBand(
        t.integer("min_tier_yuan"), t.integer("subsidy_fen")))
    if not bands or [b.min_tier_yuan for b in bands] != sorted({b.min_tier_yuan for b in bands}):
        raise pn.error("subsidy_bands", "must be non-empty and ascending by min_tier_yuan")
    sponsored = pn.table("sponsored")
    sponsored_tier = sponsored.integer("tier_yuan", minimum=1)
    if sponsored_tier not in tiers:
        raise sponsored.error("tier_yuan", f"must be one of tiers_yuan, got {sponsored_tier}")
    sponsor_categories = sponsored.mapping("categories", CATEGORIES, DEPARTMENTS)
    for category in sponsor_categories:
        if category not in hardship_categories:
            # A sponsored resident must be able to choose the sponsored tier itself.
            raise sponsored.error(f"categories.{category}", "must be a hardship category")
    sponsored.done()
    pn.done()

    md = root.table("medical")
    amount_fen = md.integer("amount_fen", minimum=1)
    late_amount_fen = md.integer("late_amount_fen", minimum=amount_fen)
    late_waiting_days = md.integer("late_waiting_days")
    newborn_days = md.integer("newborn_days")
    order = md.texts("department_order", DEPARTMENTS)
    if set(order) != set(DEPARTMENTS):
        # Any department may list a resident, so every one needs a rank.
        missing = ", ".join(d for d in DEPARTMENTS if d not in order)
        raise md.error("department_order", f"must rank every department; missing {missing}")
    full_pay = md.mapping("full_pay_categories", CATEGORIES, order)

    def age_rule(t: _Table) -> AgeRule:
        min_age = t.integer("min_age")
        rule = AgeRule(min_age, t.optional_integer("max_age", minimum=min_age),
                       t.text("department"), t.integer("government_share_percent", maximum=100))
        if rule.department not in order:
            raise t.error("department", f"must be one of medical.department_order, "
                                        f"got {rule.department!r}")
        return rule

    age_rules = _each(md.tables("age_rules"), age_rule)
    for a in age_rules:
        for b in age_rules:
            if a is not b and a.applies(b.min_age):
                raise md.error("age_rules", f"bands overlap at age {b.min_age}")
    md.done()
    for category, dept in sponsor_categories.items():
        if dept not in order:
            raise sponsored.error(f"categories.{category}",
                                  f"names {dept!r}, which is not in medical.department_order")

    policy = Policy(
        id=root.text("id"),
        district=root.text("district"),
        district_name=root.text("district_name"),
        coverage_year=root.integer("coverage_year", minimum=1900, maximum=2999),
        document=root.text("document"),
        source=file,
        window_start=window_start,
        window_end=window_end,
        stages=stages,
        deadlines=deadlines,
        targets=targets,
        pension_min_age=pension_min_age,
        pension_max_age=pension_max_age,
        pension_excludes_students=excludes_students,
        tiers_yuan=tiers,
        hardship_tiers_yuan=frozenset(hardship_tiers),
        hardship_categories=hardship_categories,
        subsidy_bands=bands,
        sponsored_tier_yuan=sponsored_tier,
        pension_sponsor_categories=MappingProxyType(sponsor_categories),
        medical_amount_fen=amount_fen,
        late_amount_fen=late_amount_fen,
        late_waiting_days=late_waiting_days,
        newborn_days=newborn_days,
        department_order=order,
        medical_full_pay_categories=MappingProxyType(full_pay),
        medical_age_rules=age_rules,
    )
    root.done()
    return policy


# --- loading and caching ---------------------------------------------------------------------

_cache: dict[Path, Policy] = {}
_lock = threading.Lock()


def _resolve(id_or_path: str) -> tuple[Path, str | None]:
    """A bare id names a file in this package; anything path-like is a file path."""
    if id_or_path.endswith(".toml") or "/" in id_or_path or "\\" in id_or_path:
        return Path(id_or_path).expanduser().resolve(), None
    return POLICY_DIR / f"{id_or_path}.toml", id_or_path


def load_policy(id_or_path: str) -> Policy:
    """Load a policy by id (``"shanting-2021"``) or by the path of a ``.toml`` file; cached."""
    file, expected_id = _resolve(id_or_path)
    with _lock:
        cached = _cache.get(file)
    if cached is not None:
        return cached
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in POLICY_DIR.glob("*.toml")))
        raise PolicyError(f"no policy file {file} (policies here: {known})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"policy file {file} can not be read: {exc}") from exc
    policy = _parse(data, file)
    if expected_id is not None and policy.id != expected_id:
        raise PolicyError(f"policy file {file}: key 'id' is {policy.id!r}, "
                          f"but the file is named for {expected_id!r}")
    with _lock:
        # Another thread may have won the race; keep one instance per file.
        return _cache.setdefault(file, policy)


def clear_policy_cache() -> None:
    with _lock:
        _cache.clear()


def policy_for_year(current: Policy, year: int) -> Policy:
    """The policy of `current`'s district for coverage `year`.

    Looks in the directory `current` came from, then in this package's directory.
    """
    if year == current.coverage_year:
        return current
    directories = dict.fromkeys([current.source.parent, POLICY_DIR])
    for directory in directories:
        for file in sorted(directory.glob("*.toml")):
            candidate = load_policy(str(file))
            if candidate.district == current.district and candidate.coverage_year == year:
                return candidate
    searched = ", ".join(str(d) for d in directories)
    raise LookupError(f"no policy file for district {current.district!r} and coverage year "
                      f"{year} (searched {searched}); add one, e.g. "
                      f"{current.district}-{year}.toml")


def business_today(now: datetime) -> date:
    """The business date (Asia/Shanghai) of an aware instant."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(BUSINESS_TZ).date()


__all__ = [
    "BUSINESS_TZ", "CATEGORIES", "DEPARTMENTS", "HUKOU_TYPES", "POLICY_DIR", "AgeRule",
    "Deadlines", "PensionTarget", "Policy", "PolicyError", "Stage", "SubsidyBand", "Targets",
    "WindowState", "business_today", "clear_policy_cache", "coverage_year_start", "load_policy",
    "policy_for_year",
]
