from __future__ import annotations

from fastapi import APIRouter

from backend.deps import ClientIp, CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import JSON_BODY, LOGGED_IN, errors
from backend.residents import service
from backend.residents.schemas import LookupRequest, LookupResponse

router = APIRouter(prefix="/api/v1/residents", tags=["residents"])


@router.post("/lookup", response_model=LookupResponse, responses=errors(
    *LOGGED_IN, *JSON_BODY, "invalid_id_number", "not_found", "rate_limited"))
def lookup(body: LookupRequest, rt: RuntimeDep, session: SessionDep,
           principal: CurrentPrincipal, ip: ClientIp) -> LookupResponse:
    return service.lookup(rt, session, principal, ip, name=body.name,
                          id_number=body.id_number, year=body.year)
