from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlmodel import col

from backend.deps import SessionDep, require_roles
from backend.errors import LOGGED_IN, errors
from backend.outbox.models import OutboxJob

router = APIRouter(prefix="/api/v1/admin", tags=["operations"])


class JobOut(BaseModel):
    id: int
    kind: str
    payload: dict[str, Any]
    status: str
    tries: int
    run_at: datetime
    last_error: str | None
    created_at: datetime


@router.get("/outbox", response_model=list[JobOut],
            dependencies=[require_roles("finance", "admin", "auditor")],
            responses=errors(*LOGGED_IN, "validation_error", "forbidden"))
def list_jobs(session: SessionDep,
              status: Annotated[Literal["pending", "done", "dead"], Query()] = "dead",
              limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[JobOut]:
    """Jobs that failed for good (``dead``) are what staff must look at."""
    rows = session.scalars(select(OutboxJob).where(col(OutboxJob.status) == status)
                           .order_by(col(OutboxJob.id).desc()).limit(limit))
    return [JobOut.model_validate(r, from_attributes=True) for r in rows]
