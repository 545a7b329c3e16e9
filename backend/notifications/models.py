"""The notification inbox (回调收件箱): every channel notification is a row first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, String, text
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime, utcnow

#: Outcomes that are anomalies for staff: a channel's word that disagrees with ours (another
#: amount; a transaction id another trade holds). Counted from the inbox at every scrape
#: (collect_anomalies_total), whichever process recorded them — serve or a worker.
ANOMALY_KINDS = ("amount_mismatch", "transaction_conflict", "shared_transaction")
ANOMALY_WHERE = "outcome IN ('amount_mismatch', 'transaction_conflict', 'shared_transaction')"


class InboxNotification(SQLModel, table=True):
    __tablename__ = "notification_inbox"
    __table_args__ = (
        Index("ix_inbox_anomalies", "outcome", postgresql_where=text(ANOMALY_WHERE),
              sqlite_where=text(ANOMALY_WHERE)),
        # A verified event is applied once: its key is unique per channel.
        Index("uq_inbox_event", "channel", "dedupe_key", unique=True,
              postgresql_where=text("dedupe_key IS NOT NULL"),
              sqlite_where=text("dedupe_key IS NOT NULL")),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    dedupe_key: str | None = Field(default=None, sa_column=Column(String(128)))
    out_trade_no: str | None = Field(default=None, max_length=64)
    verified: bool
    # applied | duplicate | partly_duplicate | rejected | unknown_order | amount_mismatch | …
    outcome: str = Field(max_length=32)
    detail: str | None = Field(default=None, max_length=500)
    headers: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    body: str
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class NotificationRejection(SQLModel, table=True):
    """Rejected notifications counted, not kept: beyond ``NOTIFY_REJECTED_KEPT_PER_MINUTE``
    full inbox rows per channel and minute, a forged or malformed notification only adds one
    to its (channel, minute, outcome) row here, which keeps the first one's detail, headers
    and body (cut to ``REJECTED_BODY_BYTES``) as a sample. A flood cannot fill the database.
    """

    __tablename__ = "notification_rejections"
    __table_args__ = (
        Index("uq_notification_rejections", "channel", "minute", "outcome", unique=True),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    minute: datetime = Field(sa_type=UTCDateTime)       # the real time, to the minute (UTC)
    outcome: str = Field(max_length=32)                 # rejected | malformed
    count: int
    first_detail: str | None = Field(default=None, max_length=500)
    first_headers: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    first_body: str
    last_at: datetime = Field(sa_type=UTCDateTime)
