"""A resident's report of a paper receipt (收据) the service does not know, or knows with
another amount: for the town and for auditors.

One row per report. ``status`` moves from ``open`` to ``matched`` when the agent later
records a collection with that paper receipt number for the reported amount (late
recording is normal), or to ``closed`` when the town has dealt with it. Nothing personal is
kept of the reporter: a keyed hash of their address only (``client_hash``), enough to see
that many reports came from one place. The resident's note may hold ID or phone numbers: it
is kept only encrypted with the PII key (``note_encrypted``, kind ``report-note``), and read
back for staff masked (``backend.logs.redact``).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, Index, String, Text
from sqlmodel import Field, SQLModel

from backend.db import Fen, UTCDateTime

KINDS = ("unknown_receipt", "amount_differs")
STATUSES = ("open", "matched", "closed")
#: the PII vault's kind (associated data) of a report's note
NOTE_KIND = "report-note"


class ReceiptReport(SQLModel, table=True):
    __tablename__ = "receipt_reports"
    __table_args__ = (
        # the collection path's look-up (an open report of this village's paper receipt)
        Index("ix_receipt_reports_village_receipt", "village_code", "paper_receipt_no"),
    )
    id: int | None = Field(default=None, primary_key=True)
    # J + business date YYYYMMDD + id zero-padded to 8 digits, e.g. J2020110200000007
    report_no: str = Field(sa_column=Column(String(24), unique=True, nullable=False))
    village_code: str = Field(foreign_key="villages.code", max_length=32)
    town_code: str = Field(foreign_key="towns.code", index=True, max_length=32)
    paper_receipt_no: str = Field(max_length=64)
    amount_fen: int = Field(sa_type=Fen)
    paid_on: date
    # the resident's note (at most 500 characters), AES-SIV under the PII key (kind
    # NOTE_KIND), base64: never in plaintext, in the database, the logs or the audit trail
    note_encrypted: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    kind: str = Field(max_length=16)               # unknown_receipt | amount_differs
    status: str = Field(max_length=8)              # open | matched | closed
    # HMAC-SHA256 of the reporter's address under the PII key (kind "report-ip"): never the
    # address itself
    client_hash: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)        # the business clock
    # the agent's collection with that paper receipt number: at once for amount_differs,
    # once it is recorded for unknown_receipt
    matched_collection_id: int | None = Field(default=None,
                                              foreign_key="agent_collections.id")
    matched_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # closed by the town (or finance, an admin) with the reason: spam, a receipt settled
    # another way; only an open report is closed
    closed_by: int | None = Field(default=None, foreign_key="staff_users.id")
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)   # business clock
    close_reason: str | None = Field(default=None, max_length=500)
