from __future__ import annotations

import asyncio
import contextvars
import functools
import json
from typing import Any

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.auth.service import check_staff_token
from backend.deps import ClientIp, CurrentPrincipal, RuntimeDep
from backend.errors import JSON_BODY, LOGGED_IN, AppError, answer_error, errors
from backend.ops import ROUTE_KEY
from backend.residents import service
from backend.residents.schemas import LookupRequest, LookupResponse
from backend.runtime import Runtime
from backend.security.tokens import Principal, read_token

router = APIRouter(prefix="/api/v1/residents", tags=["residents"])
LOOKUP_PATH = "/api/v1/residents/lookup"


async def _lookup(rt: Runtime, principal: Principal, ip: str, body: LookupRequest) -> Response:
    """The lookup's answer, for the route and the lane alike: one hop to a lookup thread for
    the Redis and database reads (on the event loop through redis.asyncio and psycopg's
    async pool they cost more CPU than the hop: ``bench/README.md``, "Lookups"). The
    answer is a LookupResponse, validated as it is built and written to JSON there: FastAPI
    would validate and serialize it again."""
    # (in the request's context: its log lines carry its request id)
    answer = await asyncio.get_running_loop().run_in_executor(rt.lookup_threads, functools.partial(
        contextvars.copy_context().run, service.lookup_json, rt, principal, ip,
        name=body.name, id_number=body.id_number, year=body.year))
    return Response(answer, media_type="application/json")


def _header(scope: Scope, name: bytes) -> str | None:
    # as Starlette's Headers.get: the first of that name, latin-1
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _json_content(content_type: str | None) -> bool:
    """Content types that FastAPI surely reads as JSON (``application/json``, with or without
    parameters); anything else is left to it."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json"


class LookupLane:
    """Resident lookups answered ahead of FastAPI's routing (ASGI middleware).

    On a deadline day lookups are, with the channels' notifications, most of the requests;
    routing, solving the route's five dependencies and the exception layers cost about a
    third of a lookup's server CPU (``bench/README.md``, "Lookups"). The lane answers
    ``POST /api/v1/residents/lookup`` when it is the common case — a bearer token that
    verifies, a JSON body that ``LookupRequest`` accepts — with the route's own handler
    (``_lookup``) and the route's own checks (``read_token``; a staff token's account check
    in a thread, as ``deps.get_principal``). Anything else (no or a bad token, a body that
    is not valid) goes on to FastAPI with the body as it came, so the route answers it as
    it always did. The route below stays as what documents it (OpenAPI) and serves it where
    the lane is not installed. The lane sits inside the body limit, which still counts the
    bytes.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != LOOKUP_PATH
                or scope["method"] != "POST"):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break                      # the client went away: FastAPI says what it says
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        app = scope["app"]
        rt: Runtime = app.state.runtime
        checked = self._common_case(rt, scope, messages, b"".join(chunks))
        if checked is not None:
            principal, body = checked
            scope[ROUTE_KEY] = LOOKUP_PATH   # counted under its route (backend.ops.RequestLog)
            try:
                if principal.is_staff:
                    await run_in_threadpool(check_staff_token, rt, principal)
                client = scope.get("client")
                response = await _lookup(rt, principal, client[0] if client else "unknown",
                                         body)
            except AppError as exc:
                response = answer_error(exc)     # as the app's handler answers it
            await response(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _common_case(rt: Runtime, scope: Scope, messages: list[Message],
                     raw: bytes) -> tuple[Principal, LookupRequest] | None:
        """The caller and the body, when FastAPI would take both as they are; else None."""
        if messages[-1]["type"] != "http.request" or not raw:
            return None
        authorization = _header(scope, b"authorization")
        if not authorization:
            return None
        scheme, _, credentials = authorization.partition(" ")   # as HTTPBearer
        credentials = credentials.strip()
        if not credentials or scheme.lower() != "bearer":
            return None
        if not _json_content(_header(scope, b"content-type")):
            return None
        try:
            principal = read_token(rt.app_secret, credentials)
            data: Any = json.loads(raw)                     # as Request.json()
            body = LookupRequest.model_validate(data)
        except Exception:
            return None
        return principal, body


@router.post("/lookup", response_model=LookupResponse, responses=errors(
    *LOGGED_IN, *JSON_BODY, "invalid_id_number", "not_found", "rate_limited"))
async def lookup(body: LookupRequest, rt: RuntimeDep, principal: CurrentPrincipal,
                 ip: ClientIp) -> Response:
    return await _lookup(rt, principal, ip, body)
