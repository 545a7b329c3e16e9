"""The assessment engine (核定): what a resident owes for a coverage year, and who else pays.

Pure functions over a `Policy` and a resident's facts at an instant: no database, no HTTP, no
clock of its own. Money is integer fen throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from backend.policy.loader import (
    CATEGORIES,
    DEPARTMENTS,
    HUKOU_TYPES,
    Policy,
    WindowState,
    business_today,
)

Insurance = Literal["pension", "medical"]
INSURANCES: tuple[Insurance, ...] = ("pension", "medical")


@dataclass(frozen=True)
class ResidentFacts:
    """What the assessment needs to know about one resident (缴费人) for one coverage year."""

    birth_date: date
    hukou_type: str
    employee_pension: bool
    employee_medical: bool
    student: bool
    categories: frozenset[str]
    died_on: date | None = None
    last_pension_tier_yuan: int | None = None
    # departments whose imported list (代缴名单) names this resident for this year:
    # set of (department, insurance)
    department_listings: frozenset[tuple[str, str]] = frozenset()

    def __post_init__(self) -> None:
        # Unknown codes would otherwise just fail to match any rule and charge the resident.
        if self.hukou_type not in HUKOU_TYPES:
            raise ValueError(f"unknown hukou_type {self.hukou_type!r}")
        unknown = set(self.categories) - CATEGORIES
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}")
        for department, insurance in self.department_listings:
            if department not in DEPARTMENTS or insurance not in INSURANCES:
                raise ValueError(f"unknown department listing {(department, insurance)!r}")

    def listed_by(self, insurance: Insurance) -> frozenset[str]:
        return frozenset(d for d, i in self.department_listings if i == insurance)


@dataclass(frozen=True)
class TierOption:
    tier_yuan: int
    amount_due_fen: int        # what the resident pays
    government_pays_fen: int   # what a department pays (代缴)
    subsidy_fen: int           # government subsidy credited to the personal account


@dataclass(frozen=True)
class PensionAssessment:
    """Residents' basic pension insurance (城乡居民基本养老保险) for one resident and year."""

    eligible: bool
    # "deceased" | "employee_pension" | "under_16" | "over_59" | "student"
    # (the ages are the policy's pension_min_age / pension_max_age)
    reason: str | None
    tiers: tuple[TierOption, ...]   # allowed tiers, ascending; empty when not eligible
    default_tier_yuan: int | None
    paying_department: str | None
    payable: bool               # can the resident themself order it now?
    not_payable_reason: str | None  # "not_eligible" | "window_not_open" | "window_closed"

    def tier(self, tier_yuan: int) -> TierOption | None:
        for option in self.tiers:
            if option.tier_yuan == tier_yuan:
                return option
        return None


@dataclass(frozen=True)
class MedicalAssessment:
    """Residents' basic medical insurance (城乡居民基本医疗保险) for one resident and year."""

    eligible: bool
    reason: str | None          # "deceased" | "employee_medical" | "not_born"
    amount_due_fen: int
    government_pays_fen: int
    paying_department: str | None
    subsidy_fen: int            # 0 normally
    benefit_start: date | None  # date cover would start if paid at `now`
    late: bool                  # the late rule applies to this item now
    newborn: bool
    payable: bool
    not_payable_reason: str | None  # "not_eligible" | "government_paid" | "window_not_open"

    @property
    def government_paid(self) -> bool:
        """A department pays all of it (API status ``government_paid``)."""
        return self.eligible and self.amount_due_fen == 0 and self.government_pays_fen > 0


@dataclass(frozen=True)
class Assessment:
    year: int
    age: int                  # coverage year − birth year
    window: WindowState       # at `now`
    late: bool                # now is after the window closes
    pension: PensionAssessment
    medical: MedicalAssessment


def assess(policy: Policy, facts: ResidentFacts, now: datetime) -> Assessment:
    """Assess both insurances of one resident for `policy`'s coverage year at instant `now`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    age = policy.coverage_year - facts.birth_date.year
    window = policy.window_state(now)
    # Dying during the coverage year does not undo that year; only before it starts.
    deceased = facts.died_on is not None and facts.died_on < policy.year_start
    return Assessment(
        year=policy.coverage_year,
        age=age,
        window=window,
        late=window == "after",
        pension=_assess_pension(policy, facts, age, window, deceased),
        medical=_assess_medical(policy, facts, age, window, deceased, business_today(now)),
    )


def _window_block(window: WindowState) -> str | None:
    return {"before": "window_not_open", "open": None, "after": "window_closed"}[window]


def _highest(policy: Policy, departments: set[str]) -> str | None:
    return min(departments, key=policy.department_rank) if departments else None


def _pension_reason(policy: Policy, facts: ResidentFacts, age: int, deceased: bool) -> str | None:
    if deceased:
        return "deceased"
    if facts.employee_pension:
        return "employee_pension"
    if age < policy.pension_min_age:
        return f"under_{policy.pension_min_age}"
    if age > policy.pension_max_age:
        return f"over_{policy.pension_max_age}"
    if facts.student and policy.pension_excludes_students:
        return "student"
    return None


def _assess_pension(policy: Policy, facts: ResidentFacts, age: int, window: WindowState,
                    deceased: bool) -> PensionAssessment:
    reason = _pension_reason(policy, facts, age, deceased)
    if reason is not None:
        return PensionAssessment(eligible=False, reason=reason, tiers=(), default_tier_yuan=None,
                                 paying_department=None, payable=False,
                                 not_payable_reason="not_eligible")

    listed = facts.listed_by("pension")
    # A department that lists someone for pension vouches for them as a hardship case.
    hardship = bool(facts.categories & policy.hardship_categories) or bool(listed)
    sponsors = {policy.pension_sponsor_categories[c] for c in facts.categories
                if c in policy.pension_sponsor_categories} | set(listed)
    paying_department = _highest(policy, sponsors)
    sponsored_fen = policy.sponsored_tier_yuan * 100 if paying_department else 0

    tiers = []
    for tier_yuan in policy.tiers_yuan:
        if tier_yuan in policy.hardship_tiers_yuan and not hardship:
            continue
        premium_fen = tier_yuan * 100
        government_fen = min(sponsored_fen, premium_fen)
        tiers.append(TierOption(
            tier_yuan=tier_yuan,
            amount_due_fen=premium_fen - government_fen,
            government_pays_fen=government_fen,
            subsidy_fen=policy.subsidy_fen(tier_yuan),
        ))

    allowed = {t.tier_yuan for t in tiers}
    last = facts.last_pension_tier_yuan
    default = last if last in allowed else tiers[0].tier_yuan
    blocked = _window_block(window)
    return PensionAssessment(eligible=True, reason=None, tiers=tuple(tiers),
                             default_tier_yuan=default, paying_department=paying_department,
                             payable=blocked is None, not_payable_reason=blocked)


def _medical_department(policy: Policy, facts: ResidentFacts, age: int) -> tuple[str | None, int]:
    """The one department that pays (and its share in percent): no double payment (避免重复缴费).

    A department paying all beats one paying part (the 60–69 half), then the policy's order.
    """
    shares: dict[str, int] = {}
    for category in facts.categories:
        if category in policy.medical_full_pay_categories:
            shares[policy.medical_full_pay_categories[category]] = 100
    for department in facts.listed_by("medical"):
        shares[department] = 100
    for rule in policy.medical_age_rules:
        if rule.applies(age) and rule.government_share_percent > 0:
            current = shares.get(rule.department, 0)
            shares[rule.department] = max(current, rule.government_share_percent)
    if not shares:
        return None, 0
    best = min(shares, key=lambda d: (-shares[d], policy.department_rank(d)))
    return best, shares[best]


def _assess_medical(policy: Policy, facts: ResidentFacts, age: int, window: WindowState,
                    deceased: bool, today: date) -> MedicalAssessment:
    reason = None
    if deceased:
        reason = "deceased"
    elif facts.employee_medical:
        reason = "employee_medical"
    elif facts.birth_date.year > policy.coverage_year:
        reason = "not_born"
    if reason is not None:
        return MedicalAssessment(eligible=False, reason=reason, amount_due_fen=0,
                                 government_pays_fen=0, paying_department=None, subsidy_fen=0,
                                 benefit_start=None, late=False, newborn=False, payable=False,
                                 not_payable_reason="not_eligible")

    days_old = (today - facts.birth_date).days
    newborn = 0 <= days_old <= policy.newborn_days
    # A baby born during the year is covered from birth, never before it.
    normal_start = max(facts.birth_date, policy.year_start)
    department, share = _medical_department(policy, facts, age)
    amount = policy.medical_amount_fen

    if share == 100:
        # Paying for its group is the department's obligation, late or not: the resident owes
        # nothing and the late rule is not theirs to bear.
        return MedicalAssessment(eligible=True, reason=None, amount_due_fen=0,
                                 government_pays_fen=amount, paying_department=department,
                                 subsidy_fen=0, benefit_start=normal_start, late=False,
                                 newborn=newborn, payable=False,
                                 not_payable_reason="government_paid")

    if window == "after" and not newborn:
        # 逾期参保: the full premium incl. every subsidy, so the partial age share lapses too.
        waiting_end = today + timedelta(days=policy.late_waiting_days)
        return MedicalAssessment(eligible=True, reason=None,
                                 amount_due_fen=policy.late_amount_fen, government_pays_fen=0,
                                 paying_department=None, subsidy_fen=0,
                                 benefit_start=max(policy.year_start, waiting_end), late=True,
                                 newborn=False, payable=True, not_payable_reason=None)

    # Floor the government's part so an odd amount never has it pay a fraction of a fen.
    government = amount * share // 100
    blocked = None if newborn else _window_block(window)
    return MedicalAssessment(eligible=True, reason=None, amount_due_fen=amount - government,
                             government_pays_fen=government,
                             paying_department=department if government else None,
                             subsidy_fen=0, benefit_start=normal_start, late=False,
                             newborn=newborn, payable=blocked is None,
                             not_payable_reason=blocked)


__all__ = [
    "INSURANCES", "Assessment", "Insurance", "MedicalAssessment", "PensionAssessment",
    "ResidentFacts", "TierOption", "assess",
]
