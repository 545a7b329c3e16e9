"""A generated demo district (演示数据): Shanting (山亭区), three towns, about thirty villages.

Everything is fictional and deterministic by seed. The files are written as CSV and loaded
through :func:`backend.imports.service.run_import`, the same code path as a real import, so
loading the demo twice changes nothing.
"""

from __future__ import annotations

import csv
import random
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlmodel import col

from backend.db import unit_of_work
from backend.imports.columns import plural
from backend.imports.service import COLUMNS, ImportReport, run_import
from backend.policy import Policy
from backend.residents.idnumber import make_id_number
from backend.runtime import Runtime

DISTRICT_REGION = "370406"  # 山亭区
# Where residence-permit holders and their children come from: 枣庄市中区, 薛城区, 滕州市,
# 徐州市泉山区, 济宁市任城区, 宿州市埇桥区.
OTHER_REGIONS = ("370402", "370403", "370481", "320311", "370811", "341302")


@dataclass(frozen=True)
class DemoTown:
    code: str
    name: str
    villages: tuple[tuple[str, str], ...]  # (code, name); 0xx are urban communities (社区)


TOWNS: tuple[DemoTown, ...] = (
    DemoTown("370406001", "山城街道", (
        ("370406001001", "府前社区"), ("370406001002", "新城社区"), ("370406001003", "东城社区"),
        ("370406001004", "西城社区"), ("370406001005", "北园社区"), ("370406001201", "岩马村"),
        ("370406001202", "桑村"), ("370406001203", "东江村"), ("370406001204", "西江村"),
        ("370406001205", "凤凰村"),
    )),
    DemoTown("370406100", "店子镇", (
        ("370406100201", "店子村"), ("370406100202", "东庄村"), ("370406100203", "西庄村"),
        ("370406100204", "刘庄村"), ("370406100205", "前洪村"), ("370406100206", "后洪村"),
        ("370406100207", "大河村"), ("370406100208", "石门村"), ("370406100209", "黄庄村"),
        ("370406100210", "孙庄村"),
    )),
    DemoTown("370406101", "西集镇", (
        ("370406101201", "西集村"), ("370406101202", "东集村"), ("370406101203", "马庄村"),
        ("370406101204", "王庄村"), ("370406101205", "柴山村"), ("370406101206", "东石楼村"),
        ("370406101207", "西石楼村"), ("370406101208", "桃园村"), ("370406101209", "黄山口村"),
        ("370406101210", "南常村"),
    )),
)
VILLAGE_CODES: tuple[str, ...] = tuple(code for t in TOWNS for code, _ in t.villages)
VILLAGE_NAMES: dict[str, str] = {code: name for t in TOWNS for code, name in t.villages}
TOWN_OF_VILLAGE: dict[str, DemoTown] = {code: t for t in TOWNS for code, _ in t.villages}
DEMO_VILLAGE = TOWNS[1].villages[0][0]  # 店子镇 店子村: the named demo residents live here
DEMO_TOWN = TOWNS[1].code


@dataclass(frozen=True)
class Person:
    """One generated resident, as a row of the residents import."""

    id_number: str
    name: str
    gender: str  # "M" or "F"; also the parity of the ID number's 17th digit
    birth_date: date
    village_code: str
    hukou_type: str = "local"
    employee_pension: bool = False
    employee_medical: bool = False
    categories: frozenset[str] = field(default_factory=frozenset)
    phone: str = ""
    last_pension_tier_yuan: int | None = None
    student: bool = False

    def csv_row(self) -> list[str]:
        return [self.id_number, self.name, self.village_code, self.hukou_type,
                _flag(self.employee_pension), _flag(self.employee_medical),
                ";".join(sorted(self.categories)), self.phone,
                "" if self.last_pension_tier_yuan is None else str(self.last_pension_tier_yuan),
                _flag(self.student)]


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _named(name: str, gender: str, born: date, sequence: int, *, categories: str = "",
           tier: int | None = None, phone: str = "") -> Person:
    return Person(id_number=make_id_number(DISTRICT_REGION, born, sequence), name=name,
                  gender=gender, birth_date=born, village_code=DEMO_VILLAGE,
                  categories=frozenset(c for c in categories.split(";") if c),
                  phone=phone, last_pension_tier_yuan=tier)


# The fixed residents the README walks through (an odd 17th digit is male, even female).
DEMO_RESIDENTS: tuple[Person, ...] = (
    _named("张三", "M", date(1969, 3, 15), 123, tier=300, phone="13905631234"),
    _named("李四", "M", date(1956, 7, 1), 211, phone="13605632211"),    # 65 in 2021: medical half
    _named("王芳", "F", date(1980, 5, 20), 242, categories="dibao", tier=100,
           phone="15963208242"),
    _named("赵强", "M", date(1975, 9, 9), 135, categories="disabled_severe", tier=100,
           phone="18606321357"),
    _named("张小宝", "M", date(2020, 10, 1), 17),                        # a newborn
)


def demo_resident(name: str) -> Person:
    return next(p for p in DEMO_RESIDENTS if p.name == name)


@dataclass(frozen=True)
class StaffLogin:
    username: str
    password: str
    role: str
    town_code: str | None = None
    village_code: str | None = None
    department: str | None = None


DEMO_STAFF: tuple[StaffLogin, ...] = (
    StaffLogin("admin", "admin-demo", "admin"),
    StaffLogin("finance", "finance-demo", "finance"),
    # a second finance user: refunds and resolved discrepancies need another person's approval
    StaffLogin("finance2", "finance2-demo", "finance"),
    StaffLogin("agent", "agent-demo", "agent", village_code=DEMO_VILLAGE),
    StaffLogin("town", "town-demo", "town_staff", town_code=DEMO_TOWN),
    StaffLogin("auditor", "auditor-demo", "auditor"),
    StaffLogin("civil", "civil-demo", "department", department="civil_affairs"),
)

# --- people --------------------------------------------------------------------

# Share of the rural population per five-year age band (ages 1–4 first), roughly the shape of
# the 2020 census for rural Shandong: few young adults (they work in the cities), many
# people in their fifties.
_AGE_BANDS = (5.0, 6.0, 6.0, 5.0, 4.5, 5.0, 6.5, 6.0, 6.0, 8.0, 9.0, 8.5, 6.5, 6.5, 4.5, 3.0,
              2.0, 1.0, 0.5)
_SURNAMES = (("王", 9), ("张", 8), ("李", 8), ("刘", 6), ("孙", 4), ("陈", 3), ("杨", 3),
             ("赵", 3), ("徐", 2.5), ("褚", 1), ("马", 2), ("朱", 2), ("胡", 1.5), ("郭", 1.5),
             ("高", 2), ("吕", 1.5), ("宋", 1.5), ("邵", 1), ("任", 1), ("韩", 1), ("曹", 1),
             ("周", 1.5), ("吴", 1), ("田", 1), ("颜", 1), ("孔", 0.8), ("魏", 1), ("黄", 1),
             ("丁", 1), ("梁", 0.8), ("杜", 0.8), ("秦", 0.6), ("种", 0.3))
_GIVEN: dict[tuple[str, str], tuple[str, ...]] = {
    ("old", "M"): ("德胜", "建国", "国华", "玉山", "广田", "振东", "学文", "长海", "宝山", "守义",
                   "明德", "凤岐", "传胜", "福田", "继先", "文忠", "庆余", "成", "福", "贵"),
    ("old", "F"): ("桂英", "秀兰", "玉兰", "秀英", "桂兰", "凤英", "淑珍", "玉梅", "兰英", "翠花",
                   "素芳", "秀珍", "桂芝", "玉珍", "凤兰", "金花"),
    ("mid", "M"): ("建军", "志强", "卫东", "海涛", "勇", "伟", "军", "磊", "洪亮", "红军", "建华",
                   "立新", "东升", "庆利", "振华", "延军", "明", "刚", "永进", "保国"),
    ("mid", "F"): ("丽", "红梅", "秀梅", "艳", "霞", "静", "丽娟", "海燕", "春梅", "玉霞", "美玲",
                   "芳", "娜", "敏", "凤霞", "晓燕", "玲", "红"),
    ("young", "M"): ("浩然", "子轩", "宇航", "梓豪", "俊杰", "鑫", "浩", "博文", "一鸣", "昊天",
                     "泽宇", "家豪", "睿", "明轩", "天佑", "子涵", "宇", "锦程"),
    ("young", "F"): ("欣怡", "梓涵", "雨桐", "可馨", "思琪", "佳怡", "诗涵", "梦瑶", "雨欣", "婷",
                     "一诺", "若汐", "语嫣", "紫萱", "雪", "悦", "子涵", "沐晴"),
}
_PHONE_PREFIXES = ("130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "150",
                   "151", "152", "153", "155", "156", "157", "158", "159", "176", "177", "180",
                   "182", "183", "185", "186", "187", "188", "189", "199")
_OLDEST_BIRTH_YEAR = 1930


class PeopleGenerator:
    """Believable residents, deterministic by seed; ID numbers never repeat."""

    def __init__(self, policy: Policy, seed: int = 2021, *, latest_birth: date | None = None,
                 reserved: Iterable[Person] = DEMO_RESIDENTS) -> None:
        self.policy = policy
        self.year = policy.coverage_year
        self.rng = random.Random(seed)
        last = date(self.year - 1, 9, 30)
        self.latest_birth = min(last, latest_birth) if latest_birth else last
        self.used = {p.id_number[:17] for p in reserved}
        ages = range(1, self.year - _OLDEST_BIRTH_YEAR + 1)
        self.ages = list(ages)
        self.age_weights = [_AGE_BANDS[min(a // 5, len(_AGE_BANDS) - 1)] for a in ages]
        self.surnames = [s for s, _ in _SURNAMES]
        self.surname_weights = [w for _, w in _SURNAMES]
        hardship_tiers = sorted(policy.hardship_tiers_yuan)
        self.hardship_tier = hardship_tiers[0] if hardship_tiers else policy.tiers_yuan[0]
        self.open_tiers = [t for t in policy.tiers_yuan if t not in policy.hardship_tiers_yuan]
        positional = (50, 25, 8, 7, 5, 3, 2)
        self.open_tier_weights = [positional[i] if i < len(positional) else 1
                                  for i in range(len(self.open_tiers))]

    def people(self, count: int) -> Iterator[Person]:
        for _ in range(count):
            yield self.person()

    def _birth(self) -> date:
        rng = self.rng
        while True:
            age = rng.choices(self.ages, self.age_weights)[0]
            start = date(self.year - age, 1, 1)
            end = min(date(self.year - age, 12, 31), self.latest_birth)
            if end >= start:
                return start + timedelta(days=rng.randint(0, (end - start).days))

    def _id_number(self, region: str, born: date, gender: str) -> str:
        while True:
            # The 17th digit is odd for men, even for women.
            sequence = self.rng.randrange(0, 1000)
            if (sequence % 2 == 1) != (gender == "M"):
                sequence = (sequence + 1) % 1000
            number = make_id_number(region, born, sequence)
            if number[:17] not in self.used:
                self.used.add(number[:17])
                return number

    def person(self) -> Person:
        rng = self.rng
        born = self._birth()
        age = self.year - born.year
        gender = "F" if rng.random() < (0.58 if age >= 75 else 0.5) else "M"
        region = DISTRICT_REGION
        hukou = "local"
        if age <= 17 and rng.random() < 0.03:
            hukou, region = "accompanying_child", rng.choice(OTHER_REGIONS)
        elif age >= 18 and rng.random() < 0.04:
            hukou, region = "residence_permit", rng.choice(OTHER_REGIONS)
        categories = self._categories(age, gender)
        student = (16 <= age <= 18 and rng.random() < 0.8) or (19 <= age <= 22
                                                                and rng.random() < 0.45)
        poor = bool(categories & {"dibao", "tekun", "wubao"})
        employee_pension = not (student or poor) and (
            (22 <= age <= 59 and rng.random() < 0.21) or (age >= 60 and rng.random() < 0.07))
        employee_medical = (rng.random() < 0.92 if employee_pension
                            else not poor and age >= 18 and rng.random() < 0.06)
        phone = ""
        if age >= 18 and rng.random() < (0.5 if age >= 75 else 0.88):
            phone = rng.choice(_PHONE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        tier = None
        if (self.policy.pension_min_age <= age <= self.policy.pension_max_age and not student
                and not employee_pension and rng.random() < 0.5):
            if categories & self.policy.hardship_categories and rng.random() < 0.8:
                tier = self.hardship_tier
            else:
                tier = rng.choices(self.open_tiers, self.open_tier_weights)[0]
        era = "old" if born.year < 1960 else "mid" if born.year < 1990 else "young"
        name = (rng.choices(self.surnames, self.surname_weights)[0]
                + rng.choice(_GIVEN[era, gender]))
        return Person(
            id_number=self._id_number(region, born, gender), name=name, gender=gender,
            birth_date=born, village_code=rng.choice(VILLAGE_CODES), hukou_type=hukou,
            employee_pension=employee_pension, employee_medical=employee_medical,
            categories=categories, phone=phone, last_pension_tier_yuan=tier, student=student)

    def _categories(self, age: int, gender: str) -> frozenset[str]:
        rng = self.rng
        old = age >= 60
        found: set[str] = set()
        if rng.random() < (0.018 if old else 0.006):
            found.add("disabled_severe")
        elif rng.random() < (0.08 if old else 0.035):
            found.add("disabled")
        if rng.random() < (0.2 if found else 0.022):
            found.add("dibao")
        if rng.random() < (0.012 if old else 0.002):
            found.add("tekun")
        if old and rng.random() < 0.01:
            found.add("wubao")
        if rng.random() < (0.02 if age >= 55 and gender == "M" else 0.002):
            found.add("youfu")
        if rng.random() < 0.02:
            found.add("jianli_poverty")
        if rng.random() < (0.5 if "jianli_poverty" in found else 0.01):
            found.add("poverty_household")
        if rng.random() < 0.005:
            found.add("illness_hardship")
        return frozenset(found)


def generate_people(policy: Policy, count: int, seed: int = 2021, *,
                    latest_birth: date | None = None) -> Iterator[Person]:
    """``count`` generated residents (not the named DEMO_RESIDENTS)."""
    return PeopleGenerator(policy, seed, latest_birth=latest_birth).people(count)


# --- files ---------------------------------------------------------------------

def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    count = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(columns)
        for row in rows:
            out.writerow(row)
            count += 1
    return count


def region_rows() -> Iterator[list[str]]:
    for town in TOWNS:
        for code, name in town.villages:
            yield [town.code, town.name, code, name]


def write_regions(path: Path) -> int:
    return write_csv(path, COLUMNS["regions"], region_rows())


def write_residents(path: Path, people: Iterable[Person]) -> int:
    return write_csv(path, COLUMNS["residents"], (p.csv_row() for p in people))


def department_rows(policy: Policy, people: Iterable[Person]) -> Iterator[list[str]]:
    """Who each department pays for (代缴), read from the policy's category rules."""
    year = policy.coverage_year
    for p in people:
        age = year - p.birth_date.year
        listed: set[tuple[str, str]] = set()
        if not p.employee_medical:
            listed |= {(dept, "medical") for cat, dept in policy.medical_full_pay_categories.items()
                       if cat in p.categories}
        if (policy.pension_min_age <= age <= policy.pension_max_age and not p.employee_pension
                and not (p.student and policy.pension_excludes_students)):
            listed |= {(dept, "pension") for cat, dept in
                       policy.pension_sponsor_categories.items() if cat in p.categories}
        for dept, insurance in sorted(listed):
            yield [dept, p.id_number, p.name, insurance, str(year)]


def death_rows(policy: Policy, people: Sequence[Person], seed: int,
               today: date) -> list[list[str]]:
    """A few old residents died in May of the year before, one in February of the year."""
    rng = random.Random(seed * 7919 + 1)
    named = {p.id_number for p in DEMO_RESIDENTS}
    year = policy.coverage_year
    old = [p for p in people if year - p.birth_date.year >= 80 and p.id_number not in named]
    chosen = rng.sample(old, min(6, len(old)))
    rows = []
    for i, p in enumerate(chosen):
        died = date(year, 2, rng.randint(1, 28)) if i == 0 else date(year - 1, 5,
                                                                   rng.randint(1, 31))
        if died <= today:  # a demo run inside the collection window cannot know the future
            rows.append([p.id_number, p.name, died.isoformat()])
    return rows


# --- loading -------------------------------------------------------------------

def _load(rt: Runtime, kind: str, path: Path, progress: bool) -> ImportReport:
    report = run_import(rt, kind, path, progress=progress)
    if not report.committed:
        raise RuntimeError(f"the demo {kind} did not import:\n{report.summary()}")
    return report


def create_demo_staff(rt: Runtime) -> list[tuple[StaffLogin, bool]]:
    """Create the demo staff accounts that do not exist yet; (login, created) each."""
    from backend.auth.models import StaffUser
    from backend.auth.service import create_staff_user

    result = []
    with unit_of_work(rt.sessions) as session:
        for login in DEMO_STAFF:
            exists = session.scalar(select(col(StaffUser.id))
                                    .where(col(StaffUser.username) == login.username))
            if exists is None:
                create_staff_user(session, username=login.username, password=login.password,
                                  role=login.role, town_code=login.town_code,
                                  village_code=login.village_code, department=login.department,
                                  clock=rt.clock, via="demo")
            result.append((login, exists is None))
    return result


def load_demo(rt: Runtime, residents: int = 20_000, seed: int = 2021,
              progress: bool = True) -> str:
    """Load the demo district through the imports; repeatable. Returns what to try first."""
    policy = rt.policy
    today = rt.clock.today()
    # Keep the named residents valid under any policy file and business date.
    named = [p if p.last_pension_tier_yuan in (None, *policy.tiers_yuan)
             else replace(p, last_pension_tier_yuan=None)
             for p in DEMO_RESIDENTS if p.birth_date <= today]
    people = named + list(generate_people(policy, max(residents - len(named), 0), seed,
                                          latest_birth=today))
    dead = death_rows(policy, people, seed, today)
    dead_ids = {row[0] for row in dead}
    with tempfile.TemporaryDirectory(prefix="demo-") as tmp:
        folder = Path(tmp)
        write_regions(folder / "regions.csv")
        write_residents(folder / "residents.csv", people)
        write_csv(folder / "departments.csv", COLUMNS["departments"],
                  department_rows(policy, (p for p in people if p.id_number not in dead_ids)))
        write_csv(folder / "deaths.csv", COLUMNS["deaths"], dead)
        reports = {kind: _load(rt, kind, folder / f"{kind}.csv", progress)
                   for kind in ("regions", "residents", "departments", "deaths")}
    staff = create_demo_staff(rt)
    return _summary(policy, seed, reports, named, staff)


def _counts(r: ImportReport) -> str:
    return (f"{plural(r.rows, 'row')}: {r.inserted:,} new, {r.updated:,} updated, "
            f"{r.unchanged:,} unchanged")


def _summary(policy: Policy, seed: int, reports: dict[str, ImportReport],
             named: Sequence[Person], staff: Sequence[tuple[StaffLogin, bool]]) -> str:
    lines = [
        f"Demo district {policy.district_name} loaded (seed {seed}, coverage year "
        f"{policy.coverage_year}); all people are fictional.",
        f"  regions:          {plural(len(TOWNS), 'town')}, "
        f"{_counts(reports['regions'])} (villages)",
        f"  residents:        {_counts(reports['residents'])}",
        f"  department lists: {_counts(reports['departments'])}",
        f"  deaths:           {_counts(reports['deaths'])}",
        "Demo residents (look up with name + ID number):",
    ]
    for p in named:
        village = f"{TOWN_OF_VILLAGE[p.village_code].name} {VILLAGE_NAMES[p.village_code]}"
        extra = ", ".join(filter(None, [
            ";".join(sorted(p.categories)),
            f"last pension tier {p.last_pension_tier_yuan}" if p.last_pension_tier_yuan else "",
        ]))
        lines.append(f"  {p.name}\t{p.id_number}  born {p.birth_date}, {village} "
                     f"({p.village_code}){', ' + extra if extra else ''}")
    lines.append("Staff logins (username / password):")
    for login, created in staff:
        scope = login.village_code or login.town_code or login.department or "district"
        state = "" if created else " (already there)"
        lines.append(f"  {login.username} / {login.password}\t{login.role}, {scope}{state}")
    return "\n".join(lines)
