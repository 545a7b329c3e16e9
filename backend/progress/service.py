"""Paid rates by town, village, insurance and age band against the policy's targets.

Eligibility is the assessment engine's (`backend.policy.assess`), not a copy of its rules.
Calling it per resident would take seconds for a district, so the registry is counted in
groups of residents that share every fact the engine's *eligibility* reads — birth year (the
age is coverage year − birth year; "not born" compares years), the two employee flags, the
student flag, and whether the resident died before the coverage year — and the engine assesses
one representative of each group. Categories, hukou, department listings, the last tier and
the instant change only amounts and who pays, never ``eligible``;
``tests/progress`` checks that claim against the engine on random residents, so a rule that
starts reading another fact fails there instead of skewing the rates.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.orm import Session

from backend.errors import Forbidden, NotFound
from backend.policy import Policy, ResidentFacts, assess
from backend.progress import repository as repo
from backend.progress.repository import Group
from backend.progress.schemas import Measure, Progress, TargetOut, TownProgress, VillageProgress
from backend.receipts import reports as receipt_reports
from backend.security.tokens import Principal

DISTRICT_ROLES = ("finance", "auditor", "admin")


@dataclass(frozen=True)
class Target:
    key: str
    insurance: str
    min_age: int | None
    max_age: int | None
    percent: int

    def out(self) -> TargetOut:
        return TargetOut(key=self.key, insurance=self.insurance,  # type: ignore[arg-type]
                         min_age=self.min_age, max_age=self.max_age,
                         target_bp=self.percent * 100)


def targets_of(policy: Policy) -> list[Target]:
    """Medical first, then the pension bands, oldest band first (the 95 % one)."""
    out = [Target("medical", "medical", None, None, policy.targets.medical_min_covered_percent)]
    for t in sorted(policy.targets.pension, key=lambda t: -t.min_age):
        out.append(Target(f"pension_{t.min_age}_{t.max_age}", "pension", t.min_age, t.max_age,
                          t.min_paid_percent))
    return out


def scope(principal: Principal, town: str | None) -> str | None:
    """The town a caller may ask for (None: the whole district)."""
    if principal.role in DISTRICT_ROLES:
        return town
    if principal.role == "town_staff":
        if town is not None and town != principal.town_code:
            raise Forbidden("town staff see the progress of their own town only")
        return principal.town_code
    raise Forbidden("progress is for town staff, finance, auditors and admins")


def representative(g: Group, year: int) -> ResidentFacts:
    return ResidentFacts(
        birth_date=date(g.birth_year, 1, 1), hukou_type="local",
        employee_pension=g.employee_pension, employee_medical=g.employee_medical,
        student=g.student, categories=frozenset(),
        died_on=date(year, 1, 1) - timedelta(days=1) if g.died_before_year else None)


def measure(t: Target, eligible: int, paid: int) -> Measure:
    return Measure(
        key=t.key, insurance=t.insurance, min_age=t.min_age,  # type: ignore[arg-type]
        max_age=t.max_age, eligible=eligible, paid=paid,
        rate_bp=paid * 10000 // eligible if eligible else None, target_bp=t.percent * 100,
        behind=paid * 100 < t.percent * eligible,
        shortfall=max(0, -(-t.percent * eligible // 100) - paid))


def progress(session: Session, policy: Policy, now: datetime, town: str | None) -> Progress:
    """The answer for `town` (None: every town); `town` already checked by `scope`."""
    towns = repo.towns(session, town)
    if town is not None and not towns:
        raise NotFound(f"town: no town {town!r}")
    year = policy.coverage_year
    targets = targets_of(policy)
    # (village, target key) → [eligible, paid]
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    verdicts: dict[tuple[int, bool, bool, bool, bool], tuple[bool, bool, int]] = {}
    for g in repo.groups(session, year, town):
        key = (g.birth_year, g.employee_pension, g.employee_medical, g.student,
               g.died_before_year)
        if key not in verdicts:
            a = assess(policy, representative(g, year), now)
            verdicts[key] = (a.medical.eligible, a.pension.eligible, a.age)
        medical_ok, pension_ok, age = verdicts[key]
        for t in targets:
            if t.insurance == "medical":
                hit, paid = medical_ok, g.medical_paid
            else:
                assert t.min_age is not None and t.max_age is not None
                hit, paid = pension_ok and t.min_age <= age <= t.max_age, g.pension_paid
            if hit:
                c = counts[(g.village_code, t.key)]
                c[0] += g.count
                c[1] += g.count if paid else 0

    def measures(codes: list[str]) -> list[Measure]:
        return [measure(t, sum(counts[(c, t.key)][0] for c in codes if (c, t.key) in counts),
                        sum(counts[(c, t.key)][1] for c in codes if (c, t.key) in counts))
                for t in targets]

    reports = receipt_reports.counts(session, town)
    by_town: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for code, name, town_code in repo.villages(session, town):
        by_town[town_code].append((code, name))
    out = []
    for town_code, town_name in towns:
        villages = []
        for code, name in by_town[town_code]:
            ms = measures([code])
            gap = max([m.target_bp - m.rate_bp for m in ms if m.rate_bp is not None] + [0])
            opened, total = reports.get(code, (0, 0))
            villages.append(VillageProgress(village_code=code, name=name, gap_bp=gap,
                                            measures=ms, receipt_reports_open=opened,
                                            receipt_reports_total=total))
        villages.sort(key=lambda v: (-v.gap_bp, -sum(m.shortfall for m in v.measures),
                                     v.village_code))
        out.append(TownProgress(town_code=town_code, name=town_name,
                                measures=measures([c for c, _ in by_town[town_code]]),
                                villages=villages,
                                receipt_reports_open=sum(v.receipt_reports_open
                                                         for v in villages),
                                receipt_reports_total=sum(v.receipt_reports_total
                                                          for v in villages)))
    every = [c for t, _ in towns for c, _ in by_town[t]]
    return Progress(year=year, as_of=now, policy=policy.id, targets=[t.out() for t in targets],
                    towns=out, totals=measures(every))
