"""What ``POST /r/report`` takes and answers: a resident's report of a paper receipt."""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: a report's amount: a household's year of both insurances stays far below 100,000 yuan
MAX_AMOUNT_FEN = 10_000_000
MAX_NOTE_CHARS = 500
CODE = r"^[0-9A-Za-z_-]{1,32}$"
# printable ASCII without spaces, as the agents record their paper receipt numbers
PAPER_RECEIPT_NO = r"^[\x21-\x7e]{1,64}$"
# a note may run over lines; other control characters are refused (PostgreSQL takes no NUL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

ReportKind = Literal["unknown_receipt", "amount_differs"]
ReportStatus = Literal["open", "matched", "closed"]


class ReceiptReportIn(BaseModel):
    """A paper receipt (收据) the resident holds: which village's agent gave it, its number,
    the amount and the day paid, and anything else they want the town to know."""

    model_config = ConfigDict(extra="forbid")

    village_code: str = Field(pattern=CODE, description="The village (村/社区) whose agent "
                              "took the money; `GET /r/report` lists the district's villages.")
    paper_receipt_no: str = Field(
        # checked by _printable (a plain message, not the pattern), documented as a pattern
        min_length=1, max_length=64, json_schema_extra={"pattern": PAPER_RECEIPT_NO},
        description="The number printed or written on the paper receipt: letters, digits "
                    "and signs, no spaces (full-width characters are read as their ASCII "
                    "forms, surrounding spaces dropped).")
    amount_fen: int = Field(strict=True, gt=0, le=MAX_AMOUNT_FEN,
                            description="What the resident paid, in fen (380 yuan = 38000).")
    paid_on: date = Field(description="The day paid: not after today (the business clock), "
                                      "and at most 3 years ago.")
    note: str | None = Field(default=None, max_length=MAX_NOTE_CHARS,
                             description="Anything else for the town (optional): kept "
                                         "encrypted, never shown on a public page; the "
                                         "town's staff read it with ID and phone numbers "
                                         "masked.")

    @field_validator("paper_receipt_no", mode="before")
    @classmethod
    def _as_typed(cls, value: object) -> object:
        # a phone's Chinese keyboard types full-width digits (０００１) and stray spaces
        if isinstance(value, str):
            return unicodedata.normalize("NFKC", value).strip()
        return value

    @field_validator("paper_receipt_no")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not re.fullmatch(PAPER_RECEIPT_NO, value):
            raise ValueError("letters, digits and signs only, no spaces, as the agent "
                             "recorded it (e.g. No0003 for 'No 0003')")
        return value

    @field_validator("note")
    @classmethod
    def _no_control(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("control characters are not taken (line breaks are)")
        return value or None


class ReceiptReportForm(BaseModel):
    """The public page's form (``application/x-www-form-urlencoded``): the amount in yuan as
    typed. The answer is then a page (HTML), whatever the outcome."""

    village_code: str
    paper_receipt_no: str
    amount_yuan: str = Field(description="Yuan with at most two decimals: 380, 380.5, "
                                         "380.50 (converted to fen exactly).")
    paid_on: str = Field(description="YYYY-MM-DD")
    note: str | None = None


class ReceiptReportOut(BaseModel):
    """A report recorded for the town and auditors (201): the paper receipt is not known in
    that village (`unknown_receipt`), or known with another amount (`amount_differs`)."""

    recorded: Literal[True] = True
    report_no: str = Field(description="`J` + business date YYYYMMDD + 8 digits, e.g. "
                                       "J2020110200000007: quote it to the town.")
    kind: ReportKind
    status: ReportStatus = Field(description="`open` when recorded; `matched` once the "
                                             "agent records that paper receipt for the "
                                             "amount; `closed` by the town.")
    known: bool = Field(description="Whether the service knows a collection with that paper "
                                    "receipt number in the village (true: `amount_differs`).")
    matches: Literal[False] = False
    repeat: bool = Field(description="true: the same report (village, number, amount, day) "
                                     "was open already; this is it, nothing new recorded.")
    village_code: str
    village_name: str
    paper_receipt_no: str
    amount_fen: int
    paid_on: date
    reported_at: datetime = Field(description="When it was recorded, on the business clock, "
                                              "Beijing time (+08:00).")


class ReceiptKnownOut(BaseModel):
    """The paper receipt is recorded in that village for that amount (200): nothing is
    recorded. Only that it is known, the business day it was recorded on and its amount —
    nothing about who paid."""

    recorded: Literal[False] = False
    known: Literal[True] = True
    matches: Literal[True] = True
    recorded_on: date = Field(description="The business day the agent recorded it.")
    amount_fen: int


# --------------------------------------------------------------------------- for staff
MAX_CLOSE_REASON_CHARS = 500


class ReceiptReportItem(BaseModel):
    """A resident's report as the town, finance, auditors and admins read it."""

    id: int = Field(description="The row's id: pass the last page's `next_after_id` as "
                                "`after_id` for the next page.")
    report_no: str
    village_code: str
    village_name: str
    town_code: str
    paper_receipt_no: str
    amount_fen: int = Field(description="What the resident says they paid, in fen.")
    paid_on: date
    kind: ReportKind
    status: ReportStatus
    created_at: datetime = Field(description="When it was reported (business clock, "
                                             "Beijing time).")
    note: str | None = Field(description="What the resident wrote, with ID and phone numbers "
                                         "masked (370406********1234, 138****5678); null "
                                         "when they wrote nothing.")
    matched_order_no: str | None = Field(
        description="The order of the agent's collection with that paper receipt number: "
                    "`matched` reports, and `amount_differs` ones (the collection recorded "
                    "with another amount); null when none is known.")
    matched_at: datetime | None = Field(description="When a later collection matched it.")
    closed_at: datetime | None = Field(description="When it was closed (business clock).")
    closed_by: str | None = Field(description="The staff member who closed it (username).")
    close_reason: str | None = Field(description="Why it was closed, as they wrote it (ID "
                                                 "and phone numbers masked).")


class ReceiptReportPage(BaseModel):
    reports: list[ReceiptReportItem] = Field(description="Oldest first (by `id`).")
    next_after_id: int | None = Field(
        description="More reports follow: ask again with `after_id` set to this.")


class ReceiptReportCloseIn(BaseModel):
    """Why the report is closed: spam, a mistaken report, settled with the resident..."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_CLOSE_REASON_CHARS,
                        description="Why (1–500 characters, not only spaces): kept on the "
                                    "report and in the audit trail.")

    @field_validator("reason")
    @classmethod
    def _said(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("say why the report is closed (not only spaces)")
        if _CONTROL.search(value):
            raise ValueError("control characters are not taken (line breaks are)")
        return value
