"""What every statement parser shares: bounded decompression, exact amounts, Beijing times,
and the once-iterable parsed statement."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import BinaryIO
from zoneinfo import ZoneInfo

from payment_adapters.statements import StatementError, StatementLine, StatementTotals

BEIJING = ZoneInfo("Asia/Shanghai")
DEFAULT_MAX_EXPANDED_BYTES = 1024 * 1024 * 1024
# A deflated CSV bill shrinks about 5–30 times; deflate's ceiling is about 1030. Past this
# ratio (once a few MiB have come out) the file is a bomb, whatever its headers declare.
MAX_RATIO = 200
_RATIO_FLOOR = 8 * 1024 * 1024
_CENT = Decimal("0.01")


class Capped(io.RawIOBase):
    """Reads a decompressing stream and refuses, as it goes, to expand past ``limit`` bytes
    or past ``MAX_RATIO`` times what was read of the compressed input (``consumed``)."""

    def __init__(self, inner: BinaryIO, limit: int, what: str,
                 consumed: Callable[[], int] | None = None) -> None:
        self._inner, self._limit, self._what, self._consumed = inner, limit, what, consumed
        self.expanded = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.expanded += n
        if self.expanded > self._limit:
            raise StatementError(f"{self._what} expands past {self._limit} bytes: refused as a "
                                 "decompression bomb")
        if self._consumed is not None and self.expanded > _RATIO_FLOOR:
            consumed = max(1, self._consumed())
            if self.expanded > MAX_RATIO * consumed:
                raise StatementError(f"{self._what} expands more than {MAX_RATIO} times its "
                                     "compressed size: refused as a decompression bomb")
        return n


def text_lines(raw: io.RawIOBase | BinaryIO, encoding: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) over a binary stream; CRLF and LF."""
    text = io.TextIOWrapper(io.BufferedReader(raw, 1 << 16)  # type: ignore[arg-type]
                            if isinstance(raw, io.RawIOBase) else raw,
                            encoding=encoding, errors="strict", newline=None)
    line_no = 0
    try:
        for line in text:
            line_no += 1
            yield line_no, line.rstrip("\n")
    except UnicodeDecodeError as exc:
        raise StatementError(f"not {encoding} text ({exc.reason})", line=line_no + 1) from exc


_MONEY = re.compile(r"-?\d{1,13}(?:\.\d{1,2})?")
_FEE = re.compile(r"-?\d{1,13}(?:\.\d{1,5})?")
_FEN = re.compile(r"-?\d{1,15}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


class Amounts:
    """Exact yuan/fen parsing with a small cache: a day's bill repeats the same few amounts
    (a year's contribution levels), so most cells are parsed once."""

    def __init__(self) -> None:
        self._yuan: dict[str, int] = {}
        self._fee: dict[str, tuple[int, int]] = {}

    def yuan(self, text: str, line: int, column: str) -> int:
        """'380.00' → 38000 fen; at most 2 decimals, signed; refuses anything else."""
        fen = self._yuan.get(text)
        if fen is None:
            if not _MONEY.fullmatch(text):
                raise StatementError(f"{column} {text!r} is not an amount in yuan with at most "
                                     "two decimals", line=line)
            fen = int(Decimal(text) * 100)
            if len(self._yuan) < 4096:
                self._yuan[text] = fen
        return fen

    def fee(self, text: str, line: int, column: str) -> tuple[int, int]:
        """A fee in yuan with up to 5 decimals → (exact, in 1/100000 yuan; rounded half-up
        to the fen)."""
        got = self._fee.get(text)
        if got is None:
            if not _FEE.fullmatch(text):
                raise StatementError(f"{column} {text!r} is not a fee in yuan with at most "
                                     "five decimals", line=line)
            value = Decimal(text)
            got = (int(value * 100000), int(value.quantize(_CENT, ROUND_HALF_UP) * 100))
            if len(self._fee) < 4096:
                self._fee[text] = got
        return got

    @staticmethod
    def fen(text: str, line: int, column: str) -> int:
        """An integer amount in fen (ChinaUMS)."""
        if not _FEN.fullmatch(text):
            raise StatementError(f"{column} {text!r} is not a whole number of fen", line=line)
        return int(text)


def round_fee_units(units: int) -> int:
    """1/100000 yuan → fen, half-up (away from zero on a tie), as Decimal's ROUND_HALF_UP."""
    sign = -1 if units < 0 else 1
    return sign * ((abs(units) + 500) // 1000)


class Times:
    """:func:`beijing_time` remembering the last time read: a bill is in time order and a
    busy second holds many rows."""

    def __init__(self) -> None:
        self._text = ""
        self._at: datetime | None = None

    def __call__(self, text: str, line: int, column: str) -> datetime:
        if text == self._text and self._at is not None:
            return self._at
        self._at, self._text = beijing_time(text, line, column), text
        return self._at


def beijing_time(text: str, line: int, column: str) -> datetime:
    """'2026-11-28 09:15:02' (Beijing time, no offset in the file) → aware datetime."""
    if not _TIME.fullmatch(text):
        raise StatementError(f"{column} {text!r} is not a time yyyy-MM-dd HH:mm:ss", line=line)
    try:
        return datetime.fromisoformat(text).replace(tzinfo=BEIJING)
    except ValueError:
        raise StatementError(f"{column} {text!r} is not a real time", line=line) from None


def iso_day(text: str, line: int, column: str) -> date:
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise StatementError(f"{column} {text!r} is not a date yyyy-MM-dd", line=line) from None


def count(text: str, line: int, column: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise StatementError(f"{column} {text!r} is not a count", line=line)
    return int(text)


def yuan_str(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def column_index(header: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def check_unique(header: list[str], line: int) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise StatementError(f"column {name!r} appears twice in the header", line=line)
        seen.add(name)


class Statement:
    """A parsed statement: iterate once for its lines; ``totals`` is set when the iteration
    has ended and the statement's own summary agreed with its lines. ``day`` is the business
    day the file says it covers, where the format says it (else None)."""

    def __init__(self, run: Callable[[Statement], Iterator[StatementLine]],
                 day: date | None = None) -> None:
        self.totals: StatementTotals | None = None
        self.day = day
        self._lines: Iterator[StatementLine] | None = run(self)

    def __iter__(self) -> Iterator[StatementLine]:
        if self._lines is None:
            raise RuntimeError("a parsed statement is read once")
        lines, self._lines = self._lines, None
        return lines


def refuse_mismatch(what: str, said: object, found: object, line: int | None) -> StatementError:
    return StatementError(f"the summary says {what} is {said}, the lines add up to {found}: "
                          "the file is truncated or altered", line=line)
