from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import LOGGED_IN, errors
from backend.publications import service
from backend.publications.service import TITLES, XLSX, Kind

router = APIRouter(prefix="/api/v1/publications", tags=["publications"])
CODE = r"^[0-9A-Za-z_-]{1,32}$"


@router.get("/{village_code}/{kind}.xlsx", response_class=Response,
            responses={**errors(*LOGGED_IN, "validation_error", "forbidden", "not_found"),
                       200: {"content": {XLSX: {"schema": {"type": "string",
                                                           "format": "binary"}}},
                             "description": "The publication as an XLSX workbook."}})
def publication_xlsx(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
                     village_code: Annotated[str, Path(pattern=CODE)], kind: Kind,
                     year: Annotated[int, Query(ge=2000, le=2100)]) -> Response:
    """A village's publication (公示) as XLSX: `roster` (公示清册, before collection: each
    resident, each item's state, what it owes and who paid it) or `paid` (已缴费名单, after:
    the items paid, by whom).

    Names and ID numbers masked as everywhere in the API (张*, 370406********1234); no phone
    numbers. The header rows carry the village, town, year, kind, the publication window
    (the policy's `roster_publication_days`, 3 in Shanting, from the business day) and the
    generation time. Only XLSX is available.

    Scope: town staff of the village's town, the village's agent, finance, auditors and
    admins; others 403. An unknown village: 404; an unknown `kind`: 422; a `year` without a
    policy: 422.
    """
    p = service.publication(rt, session, principal, village_code, kind, year)
    name = f"{p.village.name}-{p.year}-{TITLES[kind]}.xlsx"
    return Response(service.write_xlsx(p), media_type=XLSX, headers={
        "Content-Disposition": f"attachment; filename=\"{p.filename}\"; "
                               f"filename*=UTF-8''{quote(name)}"})
