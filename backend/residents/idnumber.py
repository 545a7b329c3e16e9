"""Citizen ID numbers (公民身份号码, GB 11643-1999)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from stdnum.cn import ric
from stdnum.exceptions import ValidationError

from backend.errors import InvalidIdNumber


@dataclass(frozen=True)
class CitizenId:
    number: str
    birth_date: date

    @property
    def region(self) -> str:
        return self.number[:6]


def parse_id_number(raw: object, *, today: date | None = None) -> CitizenId:
    """Normalise and check an 18-character ID number; raise ``InvalidIdNumber`` saying why.

    The region code is not checked against a list: residence-permit holders come from
    everywhere and the lists lag behind real codes.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidIdNumber("id_number is required")
    number = raw.strip().upper()
    if len(number) != 18:
        raise InvalidIdNumber(f"id_number must be 18 characters, got {len(number)}")
    if not number[:17].isdigit() or not (number[17].isdigit() or number[17] == "X"):
        raise InvalidIdNumber("id_number must be 17 digits followed by a digit or X")
    if ric.calc_check_digit(number) != number[17]:
        raise InvalidIdNumber("id_number checksum (the last character) does not match")
    try:
        born = ric.get_birth_date(number)
    except ValidationError:
        raise InvalidIdNumber("id_number holds no valid birth date (characters 7–14)") from None
    if born.year < 1890 or (today is not None and born > today):
        raise InvalidIdNumber("id_number holds an impossible birth date")
    return CitizenId(number=number, birth_date=born)


def make_id_number(region: str, born: date, sequence: int) -> str:
    """Build a valid number (for the demo generator and tests)."""
    body = f"{region}{born:%Y%m%d}{sequence % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")
