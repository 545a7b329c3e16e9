"""Imports: every bad row reported by line, all-or-nothing, idempotent, CSV and XLSX alike.

The ``rt`` fixture (tests/conftest.py) runs each test on SQLite and on PostgreSQL, with the
business clock at 2020-11-02 09:00 Asia/Shanghai.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pytest
from openpyxl import Workbook
from sqlalchemy import func, select
from sqlmodel import col

from backend.__main__ import main
from backend.db import unit_of_work
from backend.departments.models import DepartmentListing
from backend.imports.reader import ImportFileError, open_table
from backend.imports.service import COLUMNS, NOT_REGISTERED, ImportReport, run_import
from backend.residents.idnumber import make_id_number
from backend.residents.models import Death, Resident, Town, Village
from backend.runtime import Runtime

HERE = Path(__file__).parent
BAD_RESIDENTS = HERE / "bad_residents.csv"
REPO = HERE.parent.parent

REGIONS = [
    ["370406100", "店子镇", "370406100201", "店子村"],
    ["370406100", "店子镇", "370406100202", "东庄村"],
    ["370406101", "西集镇", "370406101201", "西集村"],
]
ZHANG = make_id_number("370406", date(1969, 3, 15), 123)
WANG = make_id_number("370406", date(1980, 5, 20), 242)
ZHAO = make_id_number("370406", date(1975, 9, 9), 135)
OTHER = make_id_number("320311", date(1990, 1, 2), 311)  # a residence-permit holder
RESIDENTS = [
    [ZHANG, "张三", "370406100201", "local", "0", "0", "", "13905631234", "300", "0"],
    [WANG, "王芳", "370406100201", "local", "0", "0", "dibao", "", "100", "0"],
    [ZHAO, "赵强", "370406100202", "local", "0", "1", "disabled;disabled_severe", "", "", "0"],
    [OTHER, "孙浩", "370406101201", "residence_permit", "1", "1", "", "18605631111", "", "0"],
]


def write_csv(path: Path, kind: str, rows: Sequence[Sequence[str]], *, bom: bool = False) -> Path:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS[kind])
        out.writerows(rows)
    return path


def write_xlsx(path: Path, kind: str, rows: Sequence[Sequence[object]]) -> Path:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(list(COLUMNS[kind]))
    for row in rows:
        ws.append(list(row))
    wb.save(path)
    return path


def imported(rt: Runtime, kind: str, path: Path, **kw: bool) -> ImportReport:
    return run_import(rt, kind, path, progress=False, **kw)


def count(rt: Runtime, model: type) -> int:
    with unit_of_work(rt.sessions) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def residents_by_hash(rt: Runtime) -> dict[str, Resident]:
    with unit_of_work(rt.sessions) as s:
        return {r.id_hash: r for r in s.scalars(select(Resident))}


@pytest.fixture
def regions(rt: Runtime, tmp_path: Path) -> None:
    report = imported(rt, "regions", write_csv(tmp_path / "regions.csv", "regions", REGIONS))
    assert report.committed and report.inserted == 3, report.summary()


@pytest.fixture
def residents(rt: Runtime, regions: None, tmp_path: Path) -> Path:
    path = write_csv(tmp_path / "residents.csv", "residents", RESIDENTS)
    report = imported(rt, "residents", path)
    assert report.committed and report.inserted == 4, report.summary()
    return path


# --- residents ---------------------------------------------------------------------

EXPECTED_BAD = [
    (3, "id_number"), (4, "village_code"), (5, "categories"), (6, "last_pension_tier_yuan"),
    (7, "id_number"), (8, "hukou_type"), (9, "employee_pension"), (10, "name"), (11, "name"),
    (12, "phone"), (14, "student"), (15, "hukou_type"), (15, "phone"),
]


def test_every_bad_row_is_reported_by_line_and_nothing_is_written(rt: Runtime,
                                                                   regions: None) -> None:
    report = imported(rt, "residents", BAD_RESIDENTS)
    assert not report.committed
    assert [(e.line, e.column) for e in report.errors] == EXPECTED_BAD
    reasons = {(e.line, e.column): e.reason for e in report.errors}
    assert "checksum" in reasons[3, "id_number"]
    assert "370406100999" in reasons[4, "village_code"]
    assert "'rich'" in reasons[5, "categories"]
    assert "'700'" in reasons[6, "last_pension_tier_yuan"]
    assert "line 2" in reasons[7, "id_number"]
    assert report.rows == 14 and report.bad_rows == 12 and report.inserted == 0
    assert count(rt, Resident) == 0
    summary = report.summary()
    for line, column in EXPECTED_BAD:
        assert f"line {line}: {column}: " in summary
    assert "nothing was imported" in summary and "--skip-bad-rows" in summary


def test_skip_bad_rows_imports_the_good_rows(rt: Runtime, regions: None) -> None:
    report = imported(rt, "residents", BAD_RESIDENTS, skip_bad_rows=True)
    assert report.committed
    assert (report.inserted, report.updated, report.unchanged, report.skipped) == (2, 0, 0, 12)
    stored = residents_by_hash(rt)
    ma = stored[rt.pii.hash("37040619660616161X")]
    assert ma.categories == "dibao;disabled"  # sorted
    assert (ma.hukou_type, ma.employee_pension, ma.employee_medical) == ("residence_permit",
                                                                        True, True)
    zhang = stored[rt.pii.hash(ZHANG)]
    assert zhang.birth_date == date(1969, 3, 15)
    assert zhang.id_masked == "370406********1231"
    assert rt.pii.decrypt(zhang.id_enc) == ZHANG
    assert zhang.phone_masked == "139****1234"
    assert zhang.phone_enc and rt.pii.decrypt(zhang.phone_enc, kind="phone") == "13905631234"
    assert zhang.last_pension_tier_yuan == 300


def test_no_full_id_or_phone_number_in_the_report_or_the_log(
        rt: Runtime, regions: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    report = imported(rt, "residents", BAD_RESIDENTS)
    secrets = re.findall(r"\b\d{17}[\dX]\b|\b1\d{9,10}\b|\b2\d{10}\b",
                         BAD_RESIDENTS.read_text(encoding="utf-8"))
    assert len(secrets) >= 16
    text = report.summary() + repr(report) + caplog.text
    for secret in secrets:
        assert secret not in text


def test_the_same_file_twice_changes_nothing(rt: Runtime, residents: Path) -> None:
    before = {h: (r.updated_at, r.id_enc) for h, r in residents_by_hash(rt).items()}
    report = imported(rt, "residents", residents)
    assert report.committed
    assert (report.inserted, report.updated, report.unchanged) == (0, 0, 4)
    after = {h: (r.updated_at, r.id_enc) for h, r in residents_by_hash(rt).items()}
    assert after == before


def test_a_changed_row_updates_that_resident(rt: Runtime, residents: Path,
                                             tmp_path: Path) -> None:
    before = residents_by_hash(rt)
    rows = [list(r) for r in RESIDENTS]
    rows[1][2] = "370406101201"                 # 王芳 moved
    rows[1][7] = "15963208242"                  # and has a phone now
    rows.append([make_id_number("370406", date(2020, 10, 1), 17), "张小宝", "370406100201",
                 "local", "0", "0", "", "", "", "0"])
    report = imported(rt, "residents", write_csv(tmp_path / "changed.csv", "residents", rows))
    assert (report.inserted, report.updated, report.unchanged) == (1, 1, 3)
    after = residents_by_hash(rt)
    wang = after[rt.pii.hash(WANG)]
    assert wang.village_code == "370406101201" and wang.phone_masked == "159****8242"
    assert wang.updated_at > before[wang.id_hash].updated_at
    assert wang.created_at == before[wang.id_hash].created_at
    zhang = rt.pii.hash(ZHANG)
    assert after[zhang].updated_at == before[zhang].updated_at


def test_xlsx_imports_the_same_as_csv(rt: Runtime, regions: None, tmp_path: Path) -> None:
    # Spreadsheets hold flags, tiers and phones as numbers; the reader reads them as typed.
    rows: list[list[object]] = []
    for r in RESIDENTS:
        row: list[object] = list(r)
        for i in (4, 5, 9):
            row[i] = int(r[i])
        row[7] = int(r[7]) if r[7] else None
        row[8] = int(r[8]) if r[8] else None
        row[6] = r[6] or None
        rows.append(row)
    report = imported(rt, "residents", write_xlsx(tmp_path / "residents.xlsx", "residents", rows))
    assert report.committed and report.inserted == 4, report.summary()
    again = imported(rt, "residents",
                     write_csv(tmp_path / "residents.csv", "residents", RESIDENTS, bom=True))
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 4)


def test_xlsx_bad_rows_are_reported_by_spreadsheet_row(rt: Runtime, regions: None,
                                                       tmp_path: Path) -> None:
    rows = [RESIDENTS[0], [], RESIDENTS[0]]  # an empty row 3 still counts as a line
    report = imported(rt, "residents", write_xlsx(tmp_path / "dup.xlsx", "residents", rows))
    assert [(e.line, e.column) for e in report.errors] == [(4, "id_number")]
    assert "line 2" in report.errors[0].reason


def test_resident_of_an_unknown_village_needs_the_regions_first(rt: Runtime,
                                                                tmp_path: Path) -> None:
    report = imported(rt, "residents", write_csv(tmp_path / "r.csv", "residents", RESIDENTS))
    assert not report.committed
    assert {e.column for e in report.errors} == {"village_code"}
    assert report.bad_rows == 4


# --- regions ------------------------------------------------------------------------

def test_regions_upsert_and_reject_a_village_under_two_towns(rt: Runtime, regions: None,
                                                             tmp_path: Path) -> None:
    rows = [list(r) for r in REGIONS]
    rows[1][3] = "东庄社区"                                    # renamed village
    rows.append(["370406101", "西集镇", "370406100201", "店子村"])  # under a second town
    rows.append(["370406101", "西集", "370406101202", "东集村"])   # town named twice
    rows.append(["37040A", "镇", "370406101203", ""])
    path = write_csv(tmp_path / "regions2.csv", "regions", rows)
    report = imported(rt, "regions", path)
    assert not report.committed
    assert [(e.line, e.column) for e in report.errors] == [
        (5, "village_code"), (6, "town_name"), (7, "town_code"), (7, "village_name")]
    assert "370406100" in report.errors[0].reason and "line 2" in report.errors[0].reason

    report = imported(rt, "regions", path, skip_bad_rows=True)
    assert (report.inserted, report.updated, report.unchanged, report.skipped) == (0, 1, 2, 3)
    with unit_of_work(rt.sessions) as s:
        assert s.get(Village, "370406100202").name == "东庄社区"  # type: ignore[union-attr]
        assert s.get(Village, "370406100201").town_code == "370406100"  # type: ignore[union-attr]
        assert s.get(Town, "370406101").name == "西集镇"  # type: ignore[union-attr]
    assert count(rt, Village) == 3


# --- departments --------------------------------------------------------------------

def test_department_lists(rt: Runtime, residents: Path, tmp_path: Path) -> None:
    unregistered = make_id_number("370406", date(1950, 1, 1), 11)
    rows = [
        ["civil_affairs", WANG, "王芳", "medical", "2021"],
        ["disabled_federation", ZHAO, "赵强", "medical", "2021"],
        ["disabled_federation", ZHAO, "赵强", "pension", "2021"],
        ["civil_affairs", WANG, "王小芳", "pension", "2021"],      # 5: wrong name
        ["civil_affairs", unregistered, "刘五", "medical", "2021"],  # 6: not registered
        ["police", WANG, "王芳", "medical", "2021"],               # 7
        ["civil_affairs", WANG, "王芳", "dental", "2021"],          # 8
        ["civil_affairs", WANG, "王芳", "medical", "2020"],         # 9: not the coverage year
        ["civil_affairs", WANG, "王芳", "medical", "2021"],         # 10: repeats line 2
        ["civil_affairs", WANG[:-1] + "1", "王芳", "medical", "2021"],  # 11: checksum
    ]
    path = write_csv(tmp_path / "departments.csv", "departments", rows)
    report = imported(rt, "departments", path)
    assert not report.committed and count(rt, DepartmentListing) == 0
    assert [(e.line, e.column) for e in report.errors] == [
        (5, "id_number"), (6, "id_number"), (7, "department"), (8, "insurance"), (9, "year"),
        (10, "id_number"), (11, "id_number")]
    reasons = [e.reason for e in report.errors]
    assert reasons[0] == reasons[1] == NOT_REGISTERED
    assert "line 2" in reasons[5]

    report = imported(rt, "departments", path, skip_bad_rows=True)
    assert (report.inserted, report.unchanged, report.skipped) == (3, 0, 7)
    again = imported(rt, "departments", path, skip_bad_rows=True)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)
    with unit_of_work(rt.sessions) as s:
        listed = {(d.department, d.insurance, d.year) for d in s.scalars(
            select(DepartmentListing).join(Resident)
            .where(col(Resident.id_hash) == rt.pii.hash(ZHAO)))}
    assert listed == {("disabled_federation", "medical", 2021),
                      ("disabled_federation", "pension", 2021)}


# --- deaths -------------------------------------------------------------------------

def test_death_lists(rt: Runtime, residents: Path, tmp_path: Path) -> None:
    never_registered = make_id_number("370406", date(1931, 2, 2), 21)
    rows = [
        [ZHAO, "赵强", "2020-05-03"],
        [never_registered, "刘五", "2020-05-10"],
        [WANG, "王芳", "2021-02-01"],      # 4: after today (2020-11-02 by the business clock)
        [ZHANG, "张三", "2020/05/01"],     # 5
        [OTHER, "孙浩", "1989-12-31"],     # 6: before the birth date
        [ZHAO, "赵强", "2020-05-03"],      # 7: repeats line 2
        [make_id_number("370406", date(1940, 1, 1), 31), "", "2020-02-30"],  # 8: no name, day
    ]
    path = write_csv(tmp_path / "deaths.csv", "deaths", rows)
    report = imported(rt, "deaths", path)
    assert not report.committed and count(rt, Death) == 0
    assert [(e.line, e.column) for e in report.errors] == [
        (4, "died_on"), (5, "died_on"), (6, "died_on"), (7, "id_number"), (8, "name"),
        (8, "died_on")]
    assert "future" in report.errors[0].reason

    report = imported(rt, "deaths", path, skip_bad_rows=True)
    assert (report.inserted, report.skipped) == (2, 5)
    assert imported(rt, "deaths", path, skip_bad_rows=True).unchanged == 2
    with unit_of_work(rt.sessions) as s:
        first = s.get(Death, rt.pii.hash(ZHAO))
        assert first is not None and first.id_masked == "370406********1351"
        stamp = first.imported_at

    changed = write_csv(tmp_path / "deaths2.csv", "deaths", [[ZHAO, "赵强", "2020-06-01"],
                                                              [never_registered, "刘五",
                                                               "2020-05-10"]])
    report = imported(rt, "deaths", changed)
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 1)
    with unit_of_work(rt.sessions) as s:
        death = s.get(Death, rt.pii.hash(ZHAO))
        assert death is not None and death.died_on == date(2020, 6, 1)
        assert death.imported_at > stamp


# --- the file itself ------------------------------------------------------------------

def test_header_must_hold_exactly_the_columns(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("id_number,name,village,hukou_type,employee_pension,employee_medical,"
                    "categories,phone,last_pension_tier_yuan,student,notes\n", encoding="utf-8")
    with pytest.raises(ImportFileError) as err:
        imported(rt, "residents", path)
    assert "missing column(s): village_code" in err.value.message
    assert "unknown column(s): 'village', 'notes'" in err.value.message


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("r.xls", b"whatever", "unsupported file type '.xls'"),
    ("r.csv", b"", "empty"),
    ("r.csv", "town_code,town_name,village_code,village_name\n1,店,2,村\n".encode("gbk"),
     "not UTF-8 text (line 2)"),
    ("r.xlsx", b"not a zip", "not a readable XLSX file"),
])
def test_unreadable_files_get_a_clear_error(rt: Runtime, tmp_path: Path, name: str,
                                            content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportFileError) as err:
        imported(rt, "regions", path)
    assert expected in err.value.message


def test_reader_skips_blank_lines_and_flags_extra_cells(tmp_path: Path) -> None:
    path = tmp_path / "regions.csv"
    path.write_text("\ufefftown_code,town_name,village_code,village_name\n"
                    "1,a,2,b\n\n,,,\n 3 ,c,4,d,,\n5,e,6,f,extra\n", encoding="utf-8")
    with open_table(path, COLUMNS["regions"]) as table:
        rows = list(table)
    assert [r.line for r in rows] == [2, 5, 6]
    assert rows[1].values == {"town_code": "3", "town_name": "c", "village_code": "4",
                              "village_name": "d"}
    assert rows[1].problem is None and rows[2].problem is not None
    assert rows[2].problem[0] == "row"


def test_row_limit(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "regions.csv", "regions", REGIONS)
    with open_table(path, COLUMNS["regions"], max_rows=2) as table, \
            pytest.raises(ImportFileError, match="more than 2 rows"):
        list(table)
    with pytest.raises(ImportFileError, match="limit is"):
        open_table(path, COLUMNS["regions"], max_bytes=10).__enter__()


# --- the command line -------------------------------------------------------------------

def _cli(rt: Runtime, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": rt.settings.database_url,
           "PII_KEY": rt.settings.pii_key, "APP_SECRET": rt.settings.app_secret,
           "COLLECT_NOW": "2020-11-02T09:00:00+08:00",
           "PYTHONPATH": str(REPO), "REDIS_URL": ""}
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_import(rt: Runtime, regions: None, tmp_path: Path) -> None:
    bad = _cli(rt, tmp_path, "import", "residents", str(BAD_RESIDENTS), "--quiet")
    assert bad.returncode == 1, bad.stderr
    for line, column in EXPECTED_BAD:
        assert f"line {line}: {column}: " in bad.stderr
    assert "370406196903151231" not in bad.stderr + bad.stdout
    assert count(rt, Resident) == 0

    good = _cli(rt, tmp_path, "import", "residents", str(BAD_RESIDENTS), "--skip-bad-rows")
    assert good.returncode == 0, good.stderr
    assert "2 inserted" in good.stderr  # the skipped rows are listed, so it goes to stderr
    assert "checking residents" in good.stderr  # the progress bar
    assert count(rt, Resident) == 2


def test_cli_reports_an_unreadable_file(rt: Runtime, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process, through main(): a whole-file error is exit code 2 with one clear line.
    monkeypatch.setattr("backend.__main__._runtime", lambda: rt)
    path = tmp_path / "regions.txt"
    path.write_text("x")
    assert main(["import", "regions", str(path), "--quiet"]) == 2
    assert "unsupported file type '.txt'" in capsys.readouterr().err


def test_xlsx_id_typed_as_a_number_gets_a_hint(rt: Runtime, regions: None,
                                               tmp_path: Path) -> None:
    row: list[object] = list(RESIDENTS[0])
    row[0] = int(str(row[0])[:17] + "0")   # Excel turned it into a number (and rounded it)
    report = imported(rt, "residents", write_xlsx(tmp_path / "n.xlsx", "residents", [row]))
    assert not report.committed
    assert [(e.line, e.column) for e in report.errors] == [(2, "id_number")], report.summary()
    assert "format the column as text" in report.errors[0].reason
    assert "line 2: id_number: the spreadsheet stores this cell as a number" in report.summary()
    assert str(row[0]) not in report.summary()


def test_counts_are_pluralised(rt: Runtime, regions: None, tmp_path: Path) -> None:
    bad = list(RESIDENTS[0])
    bad[3] = "martian"
    one_bad = imported(rt, "residents", write_csv(tmp_path / "b.csv", "residents", [bad]))
    assert one_bad.summary().splitlines()[0] == "import residents: 1 row, 1 bad row:"
    assert "nothing was imported: 1 bad row. Correct it," in one_bad.summary()
    one = imported(rt, "residents", write_csv(tmp_path / "r.csv", "residents",
                                              [RESIDENTS[0], bad]), skip_bad_rows=True)
    assert one.summary().splitlines()[0] == (
        "import residents: 2 rows: 1 inserted, 0 updated, 0 unchanged, 1 bad row skipped")
    with open_table(write_csv(tmp_path / "g.csv", "regions", REGIONS), COLUMNS["regions"],
                    max_rows=1) as table, pytest.raises(ImportFileError,
                                                        match=r"more than 1 row;"):
        list(table)
    extra = tmp_path / "x.csv"
    extra.write_text("town_code,town_name,village_code,village_name\n1,a,2,b,c\n")
    with open_table(extra, COLUMNS["regions"]) as table:
        assert list(table)[0].problem == ("row", "the row has 5 cells, the header 4")


def test_csv_lines_count_cells_that_span_lines(rt: Runtime, regions: None,
                                               tmp_path: Path) -> None:
    first = list(RESIDENTS[0])
    first[1] = "张\n三"           # a quoted name cell over two lines: a bad name
    second = list(RESIDENTS[1])
    second[6] = "martian"          # on the file's line 4, though it is the second record
    report = imported(rt, "residents", write_csv(tmp_path / "m.csv", "residents",
                                                 [first, second]))
    assert not report.committed
    assert [(e.line, e.column) for e in report.errors] == [(2, "name"), (4, "categories")], \
        report.summary()
