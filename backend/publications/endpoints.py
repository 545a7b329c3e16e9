"""Publications (公示): a village's roster before collection and its paid list after, as
XLSX or PDF, and their published versions."""
from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from backend.db import unit_of_work
from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import LOGGED_IN, errors
from backend.publications import service
from backend.publications.models import PublicationVersion
from backend.publications.pdf import write_pdf
from backend.publications.schemas import ChangeCounts, VersionOut, VersionsOut
from backend.publications.service import PDF, XLSX, Kind
from backend.residents.service import policy_for

router = APIRouter(prefix="/api/v1/publications", tags=["publications"])
CODE = r"^[0-9A-Za-z_-]{1,32}$"
VillageCode = Annotated[str, Path(pattern=CODE)]
Year = Annotated[int, Query(ge=2000, le=2100)]
Version = Annotated[int | None, Query(ge=1, le=100000, description=(
    "a published version; left out: the latest one, or the draft before any"))]
SCOPE = """Scope: town staff of the village's town, the village's agent, finance, auditors and
admins; others 403. An unknown village or version: 404; an unknown `kind`: 422; a `year`
without a policy: 422."""
FILE_DOC = """The latest published version of the list (`?version=N`: that one), with its
version number (第N版) and publication window (公示期); a version published after another has
a second sheet (PDF: a last section) `变更` listing what changed: residents added, removed,
and items whose state, amount or payer changed (old → new). Before anything is published:
the live rows, titled 草稿 (draft), with the window a publication today would open. The
`X-Publication-Version` header says which: `N` or `draft`.

`roster` (公示清册, before collection): each resident, each item's state, what it owes and who
paid it; `paid` (已缴费名单, after): the items paid, by whom. Names and ID numbers masked as
everywhere in the API (张*, 370406********1234); no phone numbers.

""" + SCOPE


def _file(p: service.Publication, body: bytes, media: str, ext: str) -> Response:
    return Response(body, media_type=media, headers={
        "Content-Disposition": f"attachment; filename=\"{p.filename(ext)}\"; "
                               f"filename*=UTF-8''{quote(p.title_filename(ext))}",
        "X-Publication-Version": str(p.version or "draft")})


def _binary(media: str, what: str) -> dict[int | str, dict[str, object]]:
    return {200: {"content": {media: {"schema": {"type": "string", "format": "binary"}}},
                  "description": what}}


@router.get("/{village_code}/{kind}.xlsx", response_class=Response, description=FILE_DOC,
            responses={**errors(*LOGGED_IN, "validation_error", "forbidden", "not_found"),
                       **_binary(XLSX, "The publication as an XLSX workbook.")})
def publication_xlsx(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
                     village_code: VillageCode, kind: Kind, year: Year,
                     version: Version = None) -> Response:
    """A village's publication (公示) as XLSX."""
    p = service.publication(rt, session, principal, village_code, kind, year, version)
    return _file(p, service.write_xlsx(p), XLSX, "xlsx")


@router.get("/{village_code}/{kind}.pdf", response_class=Response, description=FILE_DOC + """

A4 landscape, the table's header row on every page, a subset of a CJK font embedded. The
server needs the font (`PDF_FONT_PATH`, Debian's fonts-wqy-microhei): without it 503
`pdf_font_unavailable`.""",
            responses={**errors(*LOGGED_IN, "validation_error", "forbidden", "not_found",
                                "pdf_font_unavailable"),
                       **_binary(PDF, "The publication as a PDF document.")})
def publication_pdf(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
                    village_code: VillageCode, kind: Kind, year: Year,
                    version: Version = None) -> Response:
    """A village's publication (公示) as PDF."""
    p = service.publication(rt, session, principal, village_code, kind, year, version)
    return _file(p, write_pdf(p, rt.settings.pdf_font_path), PDF, "pdf")


def _out(v: PublicationVersion) -> VersionOut:
    counts = service.change_counts(v.changes)
    return VersionOut(village_code=v.village_code, year=v.year, kind=v.kind,  # type: ignore[arg-type]
                      version=v.version, published_at=v.published_at,
                      published_by=v.published_by, window_start=v.window_start,
                      window_end=v.window_end, correction=v.correction,
                      content_hash=v.content_hash, residents=v.residents,
                      changes=ChangeCounts(**counts) if counts else None)


@router.get("/{village_code}/versions", response_model=VersionsOut, description="""
The published versions of a village's lists for a year (both kinds, or `kind`), by kind
then version.

""" + SCOPE, responses=errors(*LOGGED_IN, "validation_error", "forbidden", "not_found"))
def publication_versions(rt: RuntimeDep, session: SessionDep, principal: CurrentPrincipal,
                         village_code: VillageCode, year: Year,
                         kind: Kind | None = None) -> VersionsOut:
    """The published versions of a village's lists."""
    village, _ = service.village_in_scope(session, principal, village_code)
    policy_for(rt, year)     # a year without a policy: 422
    return VersionsOut(village_code=village.code, year=year,
                       versions=[_out(v) for v in service.versions(session, village.code,
                                                                   year, kind)])


@router.post("/{village_code}/{kind}", status_code=201, response_model=VersionOut,
             responses=errors(*LOGGED_IN, "validation_error", "forbidden", "not_found",
                              "publication_unchanged", "publication_version_taken"))
def publish(rt: RuntimeDep, principal: CurrentPrincipal, village_code: VillageCode,
            kind: Kind, year: Year) -> VersionOut:
    """Publish a village's list as it stands now: the next version, recorded with the rows
    (masked), who published it and when (the business clock), and written to the audit
    trail.

    Version 1 opens the publication window (公示期: the policy's `roster_publication_days`
    from the business day, 3 in Shanting). A version published within the latest one's
    window is a correction (更正): it keeps that window and its files list what changed. One
    published after the window closed opens a new window. Nothing changed since the latest
    version: 409 `publication_unchanged`; another version published at the same moment: 409
    `publication_version_taken`.

    Scope: town staff of the village's town and finance; others (auditors, admins and
    agents read the files only) 403. An unknown village: 404; an unknown `kind` or a `year`
    without a policy: 422.
    """
    with unit_of_work(rt.sessions) as session:
        return _out(service.publish(rt, session, principal, village_code, kind, year))
