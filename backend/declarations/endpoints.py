from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from backend.declarations import service
from backend.declarations.service import CSV
from backend.deps import CurrentPrincipal, RuntimeDep
from backend.errors import LOGGED_IN, errors

router = APIRouter(prefix="/api/v1/declarations", tags=["declarations"])
CODE = r"^[0-9A-Za-z_-]{1,32}$"


@router.get("/{town_code}/{date}.csv", response_class=Response,
            responses={**errors(*LOGGED_IN, "validation_error", "forbidden", "not_found",
                                "day_not_closed", "declaration_mismatch"),
                       200: {"content": {CSV: {"schema": {"type": "string",
                                                          "format": "binary"}}},
                             "description": "The declaration as CSV (UTF-8 with BOM)."}})
def declaration_csv(rt: RuntimeDep, principal: CurrentPrincipal,
                    town_code: Annotated[str, Path(pattern=CODE)],
                    day: Annotated[date, Path(alias="date")]) -> Response:
    """A town's declaration (申报入库) of one closed business day, for the e-tax bureau's
    entrusted collection (委托代征): one row per item paid whose payment was posted into
    that day, one negative row per refund of an item paid posted into it, with the
    resident's full ID number; then totals per insurance and overall. Duplicate payments
    and their refunds are not in it. Its totals are checked against the ledger before it
    is served.

    Finance only (admins, auditors, town staff: 403). An unknown town: 404; a day not
    closed: 409 `day_not_closed`; a bad date: 422. Each download is in the audit trail
    (`declaration.downloaded`, with the file's SHA-256). See docs/declarations.md.
    """
    d = service.declaration(rt, principal, town_code, day)
    return Response(d.content, media_type=CSV, headers={
        "Content-Disposition": f"attachment; filename=\"{d.filename}\"",
        "Cache-Control": "no-store"})
