"""Read an import file (导入文件): CSV (UTF-8, with or without BOM) or XLSX, header row first.

Rows come out one at a time as ``Row(line, values)``; the header is line 1, so a line number
is the row number a clerk sees in Excel. Cell values are stripped strings; an empty cell is "".
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from backend.errors import ValidationFailed
from backend.imports.columns import plural

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_ROWS = 1_000_000
# An XLSX is a zip: refuse one that inflates far beyond what a real sheet of MAX_ROWS needs.
MAX_XLSX_UNCOMPRESSED_BYTES = 2 * 1024 * 1024 * 1024
SUPPORTED = (".csv", ".xlsx")


class ImportFileError(ValidationFailed):
    """The file as a whole can not be read (as opposed to one bad row)."""


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    values: dict[str, str]
    # (column, reason) when a cell or the row's shape is wrong before any column's checks:
    # a long number an XLSX stores as a number, or more cells than the header.
    problem: tuple[str, str] | None = None


def check_header(found: Sequence[str], required: Sequence[str]) -> None:
    """The header must hold exactly the required columns, each once, in any order."""
    missing = [c for c in required if c not in found]
    unknown = [c for c in found if c not in required]
    repeated = sorted({c for c in found if c and found.count(c) > 1})
    problems = []
    if missing:
        problems.append("missing column(s): " + ", ".join(missing))
    if unknown:
        problems.append("unknown column(s): " + ", ".join(repr(c) for c in unknown))
    if repeated:
        problems.append("repeated column(s): " + ", ".join(repeated))
    if problems:
        raise ImportFileError(
            "line 1 (header): " + "; ".join(problems)
            + ". Expected exactly: " + ",".join(required)
        )


def cell_text(value: Any) -> str:
    """One spreadsheet cell as the text a clerk typed."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


class Table:
    """An open import file; use as a context manager and iterate over its rows."""

    def __init__(self, path: Path, columns: Sequence[str], *, max_rows: int = MAX_ROWS,
                 max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = path
        self.columns = tuple(columns)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.estimated_rows: int | None = None
        self._raw: Iterator[Sequence[Any]] | None = None
        # For CSV: the physical line the reader has reached (a record may span lines).
        self._line_of_record: Callable[[], int] | None = None
        self._header: list[str] = []
        self._closers: list[Any] = []

    def __enter__(self) -> Table:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        while self._closers:
            self._closers.pop().close()

    def _open(self) -> None:
        suffix = self.path.suffix.lower()
        if suffix not in SUPPORTED:
            raise ImportFileError(
                f"{self.path.name}: unsupported file type {suffix or '(none)'!r}; "
                "use .csv (UTF-8) or .xlsx"
            )
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise ImportFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if not self.path.is_file():
            raise ImportFileError(f"cannot read {self.path}: not a file")
        if size > self.max_bytes:
            raise ImportFileError(
                f"{self.path.name} is {size // (1024 * 1024)} MB; the limit is "
                f"{self.max_bytes // (1024 * 1024)} MB: split the file"
            )
        if suffix == ".csv":
            self._open_csv()
        else:
            self._open_xlsx()
        assert self._raw is not None
        try:
            header = next(self._raw)
        except StopIteration:
            raise ImportFileError(f"{self.path.name} is empty: it needs a header row") from None
        names = [cell_text(c).lstrip("\ufeff").strip() for c in header]
        while names and not names[-1]:
            names.pop()  # spreadsheets often carry empty cells right of the header
        check_header(names, self.columns)
        self._header = names

    def _open_csv(self) -> None:
        try:
            binary = self.path.open("rb")
        except OSError as exc:
            raise ImportFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self._closers.append(binary)
        self.estimated_rows = _count_lines(binary)
        binary.seek(0)
        # utf-8-sig drops a BOM if there is one (Excel's "CSV UTF-8" writes it).
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        self._closers.append(text)
        reader = csv.reader(text, strict=True)
        self._line_of_record = lambda: reader.line_num  # a quoted cell may span lines
        self._raw = _decoded(reader, self.path)

    def _open_xlsx(self) -> None:
        from openpyxl import load_workbook

        try:
            with zipfile.ZipFile(self.path) as zf:
                inflated = sum(info.file_size for info in zf.infolist())
        except (zipfile.BadZipFile, OSError):
            raise ImportFileError(f"{self.path.name} is not a readable XLSX file") from None
        if inflated > MAX_XLSX_UNCOMPRESSED_BYTES:
            raise ImportFileError(f"{self.path.name} unpacks to more than "
                                  f"{MAX_XLSX_UNCOMPRESSED_BYTES // 2**30} GB; split the file")
        try:
            wb = load_workbook(self.path, read_only=True, data_only=True)
        except Exception:  # openpyxl raises many kinds (KeyError, InvalidFileException, ...)
            raise ImportFileError(f"{self.path.name} is not a readable XLSX file") from None
        self._closers.append(wb)
        ws = wb.worksheets[0] if wb.worksheets else None
        if ws is None:
            raise ImportFileError(f"{self.path.name} has no worksheet")
        max_row = getattr(ws, "max_row", None)
        self.estimated_rows = max_row - 1 if isinstance(max_row, int) and max_row > 0 else None
        self._raw = ws.iter_rows(values_only=True)

    def __iter__(self) -> Iterator[Row]:
        assert self._raw is not None, "use Table as a context manager"
        header = self._header
        width = len(header)
        count = 0
        ended = 1  # the header ends on line 1 (or later, if it had a multi-line cell)
        if self._line_of_record is not None:
            ended = self._line_of_record()
        for line, cells in enumerate(self._raw, start=2):
            if self._line_of_record is not None:
                line, ended = ended + 1, self._line_of_record()
            texts = [cell_text(c) for c in cells]
            if not any(texts):
                continue  # blank lines (Excel leaves them at the end) are not rows
            count += 1
            if count > self.max_rows:
                raise ImportFileError(f"{self.path.name} has more than "
                                      f"{plural(self.max_rows, 'row')}; split the file")
            problem = None
            for name, value in zip(header, cells, strict=False):
                if isinstance(value, int | float) and not isinstance(value, bool) \
                        and abs(value) >= 1e15:
                    # Excel keeps 15 significant digits: an 18-digit ID typed as a number
                    # has already lost its last ones.
                    problem = (name, "the spreadsheet stores this cell as a number, which "
                               "loses digits; format the column as text and type it again")
            if len(texts) > width:
                if any(texts[width:]):
                    problem = problem or ("row", f"the row has {plural(len(texts), 'cell')}, "
                                                 f"the header {width}")
                texts = texts[:width]
            elif len(texts) < width:
                texts.extend([""] * (width - len(texts)))
            yield Row(line, dict(zip(header, texts, strict=True)), problem)


def _count_lines(binary: IO[bytes]) -> int:
    lines = 0
    last = b"\n"
    while chunk := binary.read(1 << 20):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)


def _decoded(reader: Iterator[list[str]], path: Path) -> Iterator[list[str]]:
    """Turn decoding and CSV syntax errors into one clear message about the file."""
    line = 1
    try:
        for cells in reader:
            yield cells
            line += 1
    except UnicodeDecodeError:
        raise ImportFileError(
            f"{path.name} is not UTF-8 text (line {_first_non_utf8_line(path)}); "
            "save it as 'CSV UTF-8' or as .xlsx"
        ) from None
    except csv.Error as exc:
        raise ImportFileError(f"{path.name}: line {line} is not valid CSV: {exc}") from None


def _first_non_utf8_line(path: Path) -> int:
    # The text layer decodes ahead in blocks, so find the line itself by reading again.
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def open_table(path: Path | str, columns: Sequence[str], *, max_rows: int = MAX_ROWS,
               max_bytes: int = MAX_FILE_BYTES) -> Table:
    """Open ``path`` and check its header: ``with open_table(p, cols) as t: for row in t``."""
    return Table(Path(path), columns, max_rows=max_rows, max_bytes=max_bytes)
