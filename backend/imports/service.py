"""Imports (导入): regions, the resident registry, department lists and death lists.

Every row is checked first and every bad row reported with its line number; a file with bad
rows writes nothing unless ``skip_bad_rows``. The good rows are then written in one
transaction, in batches, as ``INSERT … ON CONFLICT … DO UPDATE … WHERE <something differs>``,
so importing the same file again updates nothing and leaves ``updated_at`` alone.

ID numbers and phone numbers never appear in a report, an error or a log line: only masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from sqlalchemy import String, Table, any_, bindparam, cast, func, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import col
from tqdm import tqdm

from backend.audit.service import Actor
from backend.db import unit_of_work, utcnow
from backend.deaths.service import DeathsApplied, apply_deaths
from backend.departments.models import DepartmentListing
from backend.errors import InvalidIdNumber, ValidationFailed
from backend.imports.columns import (
    CATEGORY_SEPARATOR,
    COLUMNS,
    FLAG_VALUES,
    KINDS,
    MAX_CODE,
    MAX_NAME,
    RESIDENT_FLAGS,
    plural,
)
from backend.imports.reader import Row, open_table
from backend.policy import CATEGORIES, DEPARTMENTS, HUKOU_TYPES, INSURANCES
from backend.residents.idnumber import CitizenId, parse_id_number
from backend.residents.models import Death, Resident, Town, Village
from backend.runtime import Runtime
from backend.security.pii import PiiVault, mask_id_number, mask_phone
from backend.security.tokens import Principal

log = logging.getLogger(__name__)


# Rows per statement (on SQLite, SQLAlchemy splits a batch further into pages that fit its
# 32,766 bound parameters); small enough to keep each round trip short.
BATCH_ROWS = 2000
# Keys per `IN (…)` lookup on SQLite (PostgreSQL takes them as one array).
LOOKUP_ROWS = 1000

PHONE_RE = re.compile(r"1\d{10}")
CODE_RE = re.compile(r"\d{1,32}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
YEAR_RE = re.compile(r"\d{4}")
# Who imports from the command line, for the audit trail.
CLI = Principal(sub="cli", role="cli")
# Anything that could be an ID or phone number typed into the wrong column.
_LONG_NUMBER = re.compile(r"\d{7,}[0-9Xx]?")


class RowError(NamedTuple):
    line: int
    column: str
    reason: str


@dataclass
class ImportReport:
    kind: str
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    errors: list[RowError] = field(default_factory=list)
    committed: bool = False
    notes: list[str] = field(default_factory=list)
    # a death list: what it did to the residents it names
    deaths: DeathsApplied | None = None

    @property
    def bad_rows(self) -> int:
        return len({e.line for e in self.errors})

    def summary(self) -> str:
        lines = [f"line {e.line}: {e.column}: {e.reason}" for e in self.errors]
        head = f"import {self.kind}: {plural(self.rows, 'row')}"
        if self.committed:
            head += (f": {self.inserted:,} inserted, {self.updated:,} updated, "
                     f"{self.unchanged:,} unchanged")
            if self.skipped:
                head += f", {plural(self.skipped, 'bad row')} skipped"
            lines.insert(0, head)
            lines.extend(self.notes)
        else:
            lines.insert(0, head + f", {plural(self.bad_rows, 'bad row')}:")
            lines.append(
                f"nothing was imported: {plural(self.bad_rows, 'bad row')}. Correct "
                f"{'it' if self.bad_rows == 1 else 'them'}, or import the good rows with "
                "--skip-bad-rows"
            )
        return "\n".join(lines)


def shown(value: str, limit: int = 32, *, code: bool = False) -> str:
    """A cell value fit for an error message: the length capped, and digit runs that could
    be an ID or phone number masked (a region ``code`` of up to 12 digits is kept)."""

    def mask(m: re.Match[str]) -> str:
        s = m.group(0)
        if code and len(s) <= 12:
            return s
        return mask_id_number(s) if len(s) >= 15 else mask_phone(s)

    value = _LONG_NUMBER.sub(mask, value)
    return repr(value if len(value) <= limit else value[:limit] + "…")


# --- the import ----------------------------------------------------------------

R = TypeVar("R", bound=tuple[Any, ...])
T = TypeVar("T")


class _Checker:
    """Collects the errors of one row."""

    __slots__ = ("line", "errors")

    def __init__(self, line: int) -> None:
        self.line = line
        self.errors: list[RowError] = []

    def bad(self, column: str, reason: str) -> None:
        self.errors.append(RowError(self.line, column, reason))

    def id_number(self, raw: str, today: date) -> CitizenId | None:
        try:
            return parse_id_number(raw, today=today)
        except InvalidIdNumber as exc:
            self.bad("id_number", exc.message)
            return None

    def name(self, raw: str, column: str = "name") -> str:
        if not raw:
            self.bad(column, f"{column} is required")
        elif len(raw) > MAX_NAME:
            self.bad(column, f"{column} is longer than {MAX_NAME} characters")
        elif any(ch < " " for ch in raw):
            self.bad(column, f"{column} holds control characters")
        return raw

    def code(self, raw: str, column: str) -> str:
        if not CODE_RE.fullmatch(raw):
            self.bad(column, f"{column} must be 1–{MAX_CODE} digits, got {shown(raw, code=True)}")
        return raw

    def flag(self, raw: str, column: str) -> bool:
        if raw not in FLAG_VALUES:
            self.bad(column, f"{column} must be {' or '.join(FLAG_VALUES)}, got {shown(raw)}")
        return raw == FLAG_VALUES[1]

    def one_of(self, raw: str, column: str, allowed: Collection[str]) -> str:
        if raw not in allowed:
            self.bad(column, f"unknown {column} {shown(raw)}; one of: "
                             + ", ".join(sorted(allowed)))
        return raw


class _Kind(Generic[R]):
    """One kind of import: check a row, check the rows against the database, write them."""

    kind: str

    def __init__(self, rt: Runtime, session: Session) -> None:
        self.rt = rt
        self.session = session
        self.today = rt.clock.today()
        self.actor: Actor = CLI

    def check(self, row: Row) -> R | list[RowError]:
        raise NotImplementedError

    def resolve(self, records: list[R]) -> tuple[list[R], list[RowError]]:
        """Checks that need the database, done in bulk once all rows are read."""
        return records, []

    def write(self, records: list[R], report: ImportReport, bar: tqdm[Any]) -> None:
        raise NotImplementedError


def run_import(rt: Runtime, kind: str, path: Path | str, *, skip_bad_rows: bool = False,
               progress: bool = True, actor: Actor = None) -> ImportReport:
    """Import one file of ``kind`` (regions, residents, departments, deaths). ``actor``:
    the staff user importing, for the audit trail (the command line when None)."""
    if kind not in COLUMNS:
        raise ValidationFailed(f"unknown import kind {kind!r}; one of: {', '.join(KINDS)}")
    report = ImportReport(kind=kind)
    with open_table(path, COLUMNS[kind]) as table, unit_of_work(rt.sessions) as session:
        importer: _Kind[Any] = _IMPORTERS[kind](rt, session)
        importer.actor = CLI if actor is None else actor
        records: list[Any] = []
        errors: list[RowError] = []
        rows = tqdm(table, total=table.estimated_rows, desc=f"checking {kind}", unit=" rows",
                    file=sys.stderr, disable=not progress, mininterval=0.5)
        for row in rows:
            report.rows += 1
            if row.problem:
                errors.append(RowError(row.line, *row.problem))
                continue
            checked = importer.check(row)
            if isinstance(checked, list):
                errors.extend(checked)
            else:
                records.append(checked)
        rows.close()
        records, late = importer.resolve(records)
        errors.extend(late)
        errors.sort(key=lambda e: e.line)
        report.errors = errors
        if errors and not skip_bad_rows:
            log.info("import %s: %d rows, %d bad, nothing written", kind, report.rows,
                     report.bad_rows)
            return report
        report.skipped = report.bad_rows
        with tqdm(total=len(records), desc=f"writing {kind}", unit=" rows", file=sys.stderr,
                  disable=not progress, mininterval=0.5) as bar:
            importer.write(records, report, bar)
    report.committed = True
    log.info("import %s: %d rows, %d inserted, %d updated, %d unchanged, %d skipped", kind,
             report.rows, report.inserted, report.updated, report.unchanged, report.skipped)
    return report


# --- writing helpers -----------------------------------------------------------

def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _is_postgres(session: Session) -> bool:
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise RuntimeError(f"imports support PostgreSQL and SQLite, not {dialect}")
    return dialect == "postgresql"


def _select_by_keys(session: Session, columns: Sequence[Any], key: Any,
                    keys: Sequence[str]) -> Iterator[Any]:
    """Rows whose ``key`` is one of ``keys``, a few queries for any number of keys."""
    if _is_postgres(session):
        # One array parameter instead of thousands of IN (…) placeholders.
        for chunk in _batches(keys, 20_000):
            wanted = bindparam("keys", list(chunk), type_=postgresql.ARRAY(String))
            yield from session.execute(select(*columns).where(key == any_(wanted)))
    else:
        for chunk in _batches(keys, LOOKUP_ROWS):
            yield from session.execute(select(*columns).where(key.in_(chunk)))


class _BulkWrite:
    """``INSERT … ON CONFLICT (key)``, one statement per batch of rows.

    With ``compared`` columns a conflicting row is updated only where one of them differs
    (so a repeated import updates nothing); without, a conflicting row is left alone.
    ``constants`` are the same for every row (timestamps); the ``touched`` ones among them
    are set on update too, but never make a row differ. PostgreSQL gets each column as one
    array (``INSERT … SELECT FROM unnest(…)``): a statement with tens of thousands of VALUES
    placeholders costs more to build and parse on the client than to run.
    """

    def __init__(self, session: Session, table: Table, key: Sequence[str],
                 columns: Sequence[str], *, returning: str, compared: Sequence[str] = (),
                 constants: dict[str, Any] | None = None, touched: Sequence[str] = ()) -> None:
        self.session = session
        self.key = table.c[key[0]]
        self.columns = tuple(columns)
        self.constants = constants or {}
        self.postgres = _is_postgres(session)
        ins: Any
        if self.postgres:
            arrays = [cast(bindparam(f"col_{name}"), postgresql.ARRAY(table.c[name].type))
                      for name in self.columns]
            rows = func.unnest(*arrays).table_valued(*self.columns).render_derived()
            fixed = [literal(value, table.c[name].type).label(name)
                     for name, value in self.constants.items()]
            ins = postgresql.insert(table).from_select([*self.columns, *self.constants],
                                                      select(*rows.c, *fixed))
        else:
            ins = sqlite.insert(table)
        target = [table.c[name] for name in key]
        if compared:
            exc = ins.excluded
            ins = ins.on_conflict_do_update(
                index_elements=target,
                set_={name: exc[name] for name in (*compared, *touched)},
                where=or_(*(table.c[name].is_distinct_from(exc[name]) for name in compared)),
            )
        else:
            ins = ins.on_conflict_do_nothing(index_elements=target)
        self.stmt = ins.returning(table.c[returning])

    def execute(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """Write ``rows``; answer the ``returning`` value of each row inserted or updated."""
        if not rows:
            return []
        if self.postgres:
            params = {f"col_{name}": [r[name] for r in rows] for name in self.columns}
            return list(self.session.scalars(self.stmt, params))
        return list(self.session.scalars(self.stmt, [{**r, **self.constants} for r in rows]))

    def upsert_counted(self, batches: Iterable[Sequence[dict[str, Any]]],
                       report: ImportReport, bar: tqdm[Any] | None = None) -> None:
        """Write every batch and count what was inserted, updated or left unchanged."""
        name = self.key.name
        for batch in batches:
            before = {k for (k,) in _select_by_keys(self.session, [self.key], self.key,
                                                    [r[name] for r in batch])}
            written = set(self.execute(batch))
            report.inserted += len(written - before)
            report.updated += len(written & before)
            report.unchanged += len(batch) - len(written)
            if bar is not None:
                bar.update(len(batch))


# --- regions (镇街, 村居) ----------------------------------------------------------

class RegionRecord(NamedTuple):
    line: int
    town_code: str
    town_name: str
    village_code: str
    village_name: str


class _Regions(_Kind[RegionRecord]):
    kind = "regions"

    def __init__(self, rt: Runtime, session: Session) -> None:
        super().__init__(rt, session)
        self.towns: dict[str, tuple[str, int]] = {}
        self.villages: dict[str, tuple[str, int]] = {}

    def check(self, row: Row) -> RegionRecord | list[RowError]:
        v = row.values
        c = _Checker(row.line)
        town = c.code(v["town_code"], "town_code")
        town_name = c.name(v["town_name"], "town_name")
        village = c.code(v["village_code"], "village_code")
        village_name = c.name(v["village_name"], "village_name")
        if not c.errors:
            first_town = self.towns.setdefault(town, (town_name, row.line))
            if first_town[0] != town_name:
                c.bad("town_name", f"town {town} is named {first_town[0]} on line "
                                   f"{first_town[1]}")
            first_village = self.villages.setdefault(village, (town, row.line))
            if first_village[1] != row.line:
                if first_village[0] != town:
                    c.bad("village_code", f"village {village} is listed under town "
                                          f"{first_village[0]} on line {first_village[1]} "
                                          f"and under town {town} here")
                else:
                    c.bad("village_code", f"village {village} is already on line "
                                          f"{first_village[1]}")
        return c.errors or RegionRecord(row.line, town, town_name, village, village_name)

    def write(self, records: list[RegionRecord], report: ImportReport,
              bar: tqdm[Any]) -> None:
        towns = [{"code": code, "name": name}
                 for code, name in {r.town_code: r.town_name for r in records}.items()]
        town_report = ImportReport(kind="towns")
        _BulkWrite(self.session, Town.__table__, ["code"], ["code", "name"],  # type: ignore[attr-defined]
                   returning="code", compared=["name"]).upsert_counted([towns], town_report)
        report.notes.append(f"towns: {town_report.inserted} inserted, "
                            f"{town_report.updated} updated, {town_report.unchanged} unchanged")
        villages = [{"code": r.village_code, "name": r.village_name, "town_code": r.town_code}
                    for r in records]
        _BulkWrite(self.session, Village.__table__, ["code"],  # type: ignore[attr-defined]
                   ["code", "name", "town_code"], returning="code",
                   compared=["name", "town_code"]
                   ).upsert_counted(_batches(villages, BATCH_ROWS), report, bar)


# --- residents (参保人员) ----------------------------------------------------------

class ResidentRecord(NamedTuple):
    line: int
    id_number: str
    birth_date: date
    name: str
    village_code: str
    hukou_type: str
    employee_pension: bool
    employee_medical: bool
    student: bool
    categories: str
    phone: str
    last_pension_tier_yuan: int | None


RESIDENT_COMPARED = ("id_enc", "id_masked", "birth_date", "name", "village_code", "hukou_type",
                     "employee_pension", "employee_medical", "student", "categories",
                     "phone_enc", "phone_masked", "last_pension_tier_yuan")


class _Residents(_Kind[ResidentRecord]):
    kind = "residents"

    def __init__(self, rt: Runtime, session: Session) -> None:
        super().__init__(rt, session)
        # One query for every village; the same string objects are then shared by all rows.
        self.villages = {code: code for code in session.scalars(select(col(Village.code)))}
        self.tiers = frozenset(rt.policy.tiers_yuan)
        self.seen: dict[str, int] = {}
        self.category_sets: dict[str, str | list[str]] = {}

    def _categories(self, raw: str) -> str | list[str]:
        """The sorted, ';'-joined categories, or the unknown ones; cached per spelling."""
        cached = self.category_sets.get(raw)
        if cached is None:
            parts = {p.strip() for p in raw.split(CATEGORY_SEPARATOR) if p.strip()}
            unknown = sorted(parts - CATEGORIES)
            cached = unknown if unknown else CATEGORY_SEPARATOR.join(sorted(parts))
            self.category_sets[raw] = cached
        return cached

    def check(self, row: Row) -> ResidentRecord | list[RowError]:
        v = row.values
        c = _Checker(row.line)
        cid = c.id_number(v["id_number"], self.today)
        if cid is not None:
            first = self.seen.setdefault(cid.number, row.line)
            if first != row.line:
                c.bad("id_number", f"the same id_number is already on line {first}")
        name = c.name(v["name"])
        village = self.villages.get(v["village_code"])
        if village is None:
            c.bad("village_code", f"unknown village {shown(v['village_code'], code=True)}: "
                                  "import it with the regions first")
        hukou = c.one_of(v["hukou_type"], "hukou_type", HUKOU_TYPES)
        pension, medical, student = (c.flag(v[name], name) for name in RESIDENT_FLAGS)
        categories = self._categories(v["categories"])
        if isinstance(categories, list):
            c.bad("categories", "unknown category " + ", ".join(shown(u) for u in categories)
                  + "; allowed: " + ", ".join(sorted(CATEGORIES)))
        phone = v["phone"]
        if phone and not PHONE_RE.fullmatch(phone):
            c.bad("phone", "phone must be 11 digits starting with 1, or empty")
        tier: int | None = None
        raw_tier = v["last_pension_tier_yuan"]
        if raw_tier:
            if raw_tier.isdigit() and int(raw_tier) in self.tiers:
                tier = int(raw_tier)
            else:
                c.bad("last_pension_tier_yuan",
                      f"{shown(raw_tier)} is not a pension tier of policy {self.rt.policy.id}; "
                      f"tiers: {', '.join(str(t) for t in sorted(self.tiers))}")
        if c.errors:
            return c.errors
        assert cid is not None and village is not None and isinstance(categories, str)
        return ResidentRecord(row.line, cid.number, cid.birth_date, name, village, hukou,
                              pension, medical, student, categories, phone, tier)

    def write(self, records: list[ResidentRecord], report: ImportReport,
              bar: tqdm[Any]) -> None:
        now = utcnow()
        writer = _BulkWrite(self.session, Resident.__table__, ["id_hash"],  # type: ignore[attr-defined]
                            ["id_hash", *RESIDENT_COMPARED], returning="id_hash",
                            compared=RESIDENT_COMPARED,
                            constants={"created_at": now, "updated_at": now},
                            touched=["updated_at"])
        pii = self.rt.pii
        writer.upsert_counted((_resident_params(pii, batch)
                               for batch in _batches(records, BATCH_ROWS)), report, bar)


def _resident_params(pii: PiiVault, records: Sequence[ResidentRecord]) -> list[dict[str, Any]]:
    return [{
        "id_hash": pii.hash(r.id_number),
        "id_enc": pii.encrypt(r.id_number),
        "id_masked": mask_id_number(r.id_number),
        "birth_date": r.birth_date,
        "name": r.name,
        "village_code": r.village_code,
        "hukou_type": r.hukou_type,
        "employee_pension": r.employee_pension,
        "employee_medical": r.employee_medical,
        "student": r.student,
        "categories": r.categories,
        "phone_enc": pii.encrypt(r.phone, kind="phone") if r.phone else None,
        "phone_masked": mask_phone(r.phone) if r.phone else None,
        "last_pension_tier_yuan": r.last_pension_tier_yuan,
    } for r in records]


# --- department lists (代缴名单) ---------------------------------------------------

class ListingRecord(NamedTuple):
    line: int
    department: str
    id_hash: str
    name: str
    insurance: str
    year: int
    resident_id: int | None


NOT_REGISTERED = "no registered resident with this ID and name"


class _Departments(_Kind[ListingRecord]):
    kind = "departments"

    def __init__(self, rt: Runtime, session: Session) -> None:
        super().__init__(rt, session)
        self.year = rt.policy.coverage_year
        self.seen: dict[tuple[str, str, str, int], int] = {}

    def check(self, row: Row) -> ListingRecord | list[RowError]:
        v = row.values
        c = _Checker(row.line)
        department = c.one_of(v["department"], "department", DEPARTMENTS)
        cid = c.id_number(v["id_number"], self.today)
        name = c.name(v["name"])
        insurance = c.one_of(v["insurance"], "insurance", INSURANCES)
        year = int(v["year"]) if YEAR_RE.fullmatch(v["year"]) else 0
        if year != self.year:
            c.bad("year", f"year must be {self.year}, the coverage year of policy "
                          f"{self.rt.policy.id}; got {shown(v['year'])}")
        if c.errors:
            return c.errors
        assert cid is not None
        id_hash = self.rt.pii.hash(cid.number)
        first = self.seen.setdefault((department, id_hash, insurance, year), row.line)
        if first != row.line:
            c.bad("id_number", f"the same listing is already on line {first}")
            return c.errors
        return ListingRecord(row.line, department, id_hash, name, insurance, year, None)

    def resolve(self, records: list[ListingRecord]) -> tuple[list[ListingRecord],
                                                            list[RowError]]:
        hashes = sorted({r.id_hash for r in records})
        columns = Resident.__table__.c  # type: ignore[attr-defined]
        registered = {h: (rid, name) for h, rid, name in _select_by_keys(
            self.session, [columns.id_hash, columns.id, columns.name], columns.id_hash, hashes)}
        good: list[ListingRecord] = []
        errors: list[RowError] = []
        for r in records:
            found = registered.get(r.id_hash)
            if found is None or found[1] != r.name:
                errors.append(RowError(r.line, "id_number", NOT_REGISTERED))
            else:
                good.append(r._replace(resident_id=found[0]))
        return good, errors

    def write(self, records: list[ListingRecord], report: ImportReport,
              bar: tqdm[Any]) -> None:
        key = ["department", "resident_id", "insurance", "year"]
        writer = _BulkWrite(self.session, DepartmentListing.__table__,  # type: ignore[attr-defined]
                            key, key, returning="id",
                            # the business clock: a list after the plan's due date is late
                            constants={"imported_at": self.rt.clock.now()})
        for batch in _batches(records, BATCH_ROWS):
            inserted = len(writer.execute([
                {"department": r.department, "resident_id": r.resident_id,
                 "insurance": r.insurance, "year": r.year} for r in batch]))
            report.inserted += inserted
            report.unchanged += len(batch) - inserted
            bar.update(len(batch))


# --- death lists (死亡名单) --------------------------------------------------------

class DeathRecord(NamedTuple):
    line: int
    id_number: str
    name: str
    died_on: date


class _Deaths(_Kind[DeathRecord]):
    kind = "deaths"

    def __init__(self, rt: Runtime, session: Session) -> None:
        super().__init__(rt, session)
        self.seen: dict[str, int] = {}

    def check(self, row: Row) -> DeathRecord | list[RowError]:
        v = row.values
        c = _Checker(row.line)
        cid = c.id_number(v["id_number"], self.today)
        if cid is not None:
            first = self.seen.setdefault(cid.number, row.line)
            if first != row.line:
                c.bad("id_number", f"the same id_number is already on line {first}")
        name = c.name(v["name"])
        died_on: date | None = None
        raw = v["died_on"]
        try:
            died_on = date.fromisoformat(raw) if DATE_RE.fullmatch(raw) else None
        except ValueError:
            died_on = None
        if died_on is None:
            c.bad("died_on", f"died_on must be a date YYYY-MM-DD, got {shown(raw)}")
        elif died_on > self.today:
            c.bad("died_on", f"died_on {died_on} is in the future (today is {self.today})")
        elif cid is not None and died_on < cid.birth_date:
            c.bad("died_on", f"died_on {died_on} is before the birth date in the id_number")
        if c.errors:
            return c.errors
        assert cid is not None and died_on is not None
        return DeathRecord(row.line, cid.number, name, died_on)

    def write(self, records: list[DeathRecord], report: ImportReport, bar: tqdm[Any]) -> None:
        """Write the deaths, then apply them (backend/deaths) in the same transaction: the
        residents' open orders closed, their payments for years they are not charged for
        queued for refund — reported, and recorded in the audit trail."""
        compared = ["id_masked", "name", "died_on"]
        writer = _BulkWrite(self.session, Death.__table__, ["id_hash"],  # type: ignore[attr-defined]
                            ["id_hash", *compared], returning="id_hash", compared=compared,
                            # the business clock: when the list was taken in
                            constants={"imported_at": self.rt.clock.now()},
                            touched=["imported_at"])
        pii = self.rt.pii
        hashes: list[str] = []
        changed: list[str] = []
        for batch in _batches(records, BATCH_ROWS):
            rows: list[dict[str, Any]] = [
                {"id_hash": pii.hash(r.id_number), "id_masked": mask_id_number(r.id_number),
                 "name": r.name, "died_on": r.died_on} for r in batch]
            keys = [str(row["id_hash"]) for row in rows]
            before = {k for (k,) in _select_by_keys(self.session, [writer.key], writer.key,
                                                    keys)}
            written = writer.execute(rows)
            report.inserted += len(set(written) - before)
            report.updated += len(set(written) & before)
            report.unchanged += len(batch) - len(written)
            hashes += keys
            changed += written
            bar.update(len(batch))
        applied = apply_deaths(self.rt, self.session, hashes, changed=changed,
                               actor=self.actor)
        report.deaths = applied
        report.notes.append(applied.summary())


_IMPORTERS: dict[str, Callable[[Runtime, Session], _Kind[Any]]] = {
    "regions": _Regions,
    "residents": _Residents,
    "departments": _Departments,
    "deaths": _Deaths,
}
