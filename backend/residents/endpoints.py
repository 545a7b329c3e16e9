from __future__ import annotations

import asyncio
import functools

from fastapi import APIRouter, Response

from backend.deps import ClientIp, CurrentPrincipal, RuntimeDep
from backend.errors import JSON_BODY, LOGGED_IN, errors
from backend.residents import service
from backend.residents.schemas import LookupRequest, LookupResponse

router = APIRouter(prefix="/api/v1/residents", tags=["residents"])


@router.post("/lookup", response_model=LookupResponse, responses=errors(
    *LOGGED_IN, *JSON_BODY, "invalid_id_number", "not_found", "rate_limited"))
async def lookup(body: LookupRequest, rt: RuntimeDep, principal: CurrentPrincipal,
                 ip: ClientIp) -> Response:
    # One hop to a lookup thread for the Redis and database reads. The answer is a
    # LookupResponse, validated as it is built and written to JSON there: FastAPI would
    # validate and serialize it again.
    answer = await asyncio.get_running_loop().run_in_executor(rt.lookup_threads, functools.partial(
        service.lookup_json, rt, principal, ip, name=body.name, id_number=body.id_number,
        year=body.year))
    return Response(answer, media_type="application/json")
