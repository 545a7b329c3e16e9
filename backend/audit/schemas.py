from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class AuditEventOut(BaseModel):
    id: int
    occurred_at: datetime = Field(description="When it happened, by the business clock.")
    recorded_at: datetime = Field(description="When it was written, by the real clock.")
    actor: str = Field(description="The staff member's username, or `system`.")
    actor_id: int | None
    actor_role: str
    action: str = Field(description="e.g. `refund.approve`, `day.close`, `user.create`.")
    subject_type: str
    subject_id: str
    reason: str | None
    details: dict[str, Any] = Field(description="What changed; ID and phone numbers masked.")
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next_after_id: int | None = Field(
        description="More events follow: ask again with `after_id` set to this.")


class AuditVerified(BaseModel):
    ok: bool
    checked: int = Field(description="Events whose link held, from the first on.")
    head: str | None = Field(default=None, description="ok: the hash of the last event; note it "
                             "down to show later that nothing was cut off the end.")
    broken_id: int | None = Field(default=None, description="Not ok: the first event whose link "
                                  "does not hold.")
    problem: str | None = Field(
        default=None, description="Not ok: `hash` (the event was changed) or `prev_hash` (an "
                                  "event before it was removed or changed).")
