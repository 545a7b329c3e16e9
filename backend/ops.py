"""What operations use: the request log and its metrics, /healthz, /readyz, /metrics."""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import metrics
from backend.errors import error_response
from backend.logs import redact, request_id

access_log = logging.getLogger("backend.access")
log = logging.getLogger(__name__)

# A request id a proxy or the caller already gave (X-Request-Id) is kept when it is short and
# plain; anything else gets a new one. Either way the answer carries it.
_GIVEN_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# Methods counted by name; any other (a scanner's invention) is "other": the series stay few.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The scope key a lane (an ASGI middleware answering a path ahead of the router) sets to the
# path template it answers, so that its requests are counted under their route.
ROUTE_KEY = "collect.route"


class RequestLog:
    """Outermost ASGI middleware: gives every request an id (``X-Request-Id``; in every log
    line written for it), counts it and its latency by route template
    (``collect_http_requests_total``, ``collect_http_request_duration_seconds``) and writes
    one access line: method, path (masked, no query string: a query may carry a secret),
    route, status, milliseconds, client address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route, status) → its counter and histogram children: labels() looked up
        # once (routes are templates, so the keys are few)
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _GIVEN_ID.fullmatch(value):
                    rid = value.decode()
                break
        if rid is None:
            rid = secrets.token_hex(8)
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500   # what the client gets if the app fails before answering
        header = (b"x-request-id", rid.encode())

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # logged here, where the request id is known, and answered with it
            log.exception("unhandled error")
            if started:
                raise   # half an answer is out: the server closes the connection
            await INTERNAL_ERROR(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            label = (getattr(route, "path", None) or scope.get(ROUTE_KEY)
                     or metrics.UNMATCHED)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (method, label, status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (
                    metrics.REQUESTS.labels(method, label, str(status)),
                    metrics.LATENCY.labels(method, label))
            series[0].inc()
            series[1].observe(elapsed)
            client = scope.get("client")
            path = scope["path"]
            access_log.info("%s %s %d", method, path, status, extra={
                "method": method, "path": redact(path), "route": label, "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "client": client[0] if client else None})
            request_id.reset(token)


INTERNAL_ERROR = JSONResponse(status_code=500, content={"error": {
    "code": "internal_error", "message": "an unexpected error; it has been logged"}})

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and answering (liveness: no database or Redis involved, so that an
    outage of either does not get every process restarted)."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "not_ready"]
    # database, migrations, redis: "ok…" or what is wrong
    checks: dict[str, str]


@router.get("/readyz", response_model=Readiness, responses={503: {
    "model": Readiness,
    "description": "not ready: the database is unreachable or not at the newest migration"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready for traffic: the database answers and is at the newest migration. Redis is
    checked too; without it the service still takes payments (rate limits count per
    process), so it answers 200 with ``"status": "degraded"``. Without ``REDIS_URL`` (one
    process, its own in-process store) there is no Redis to miss: ready."""
    checks = await run_in_threadpool(_readiness, request.app.state.runtime)
    failed = checks["database"] != "ok" or checks["migrations"] != "ok"
    status = ("not_ready" if failed else "ready" if checks["redis"].startswith("ok")
              else "degraded")
    return JSONResponse(status_code=503 if failed else 200,
                        content={"status": status, "checks": checks})


def _readiness(rt: Any) -> dict[str, str]:
    from backend.migrate import head_revision

    checks = {"database": "ok", "migrations": "ok", "redis": "ok"}
    try:
        with rt.engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        head = head_revision()
        if current != head:
            checks["migrations"] = f"the database is at {current}, the code needs {head}"
    except Exception as exc:
        log.warning("readyz: the database is not reachable: %s", exc)
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    if rt.settings.redis_url:
        # Always asked (this is the check), but logged as the outage is: once when it
        # starts and once when it ends, not at every probe.
        try:
            rt.redis.ping()
        except Exception as exc:
            rt.redis_outage.failed(exc)
            checks["redis"] = (f"unreachable: {type(exc).__name__}; rate limits count in "
                               "each process meanwhile")
        else:
            rt.redis_outage.ok()
    else:
        checks["redis"] = "ok (in-process store: REDIS_URL is not set)"
    return checks


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus text format"},
    403: error_response(["forbidden"], "the client's address is not in METRICS_ALLOW")})
async def metrics_text(request: Request) -> Response:
    """Prometheus metrics, to the addresses ``METRICS_ALLOW`` lists (no login)."""
    rt = request.app.state.runtime
    host = request.client.host if request.client else ""
    if not _allowed(host, rt.settings.metrics_networks):
        return JSONResponse(status_code=403, content={"error": {
            "code": "forbidden",
            "message": f"metrics are served only to the addresses METRICS_ALLOW lists; "
                       f"{host or 'this client'} is not one of them"}})
    body = await run_in_threadpool(metrics.render, rt)
    return Response(content=body, media_type=metrics.CONTENT_TYPE)


def _allowed(host: str, networks: tuple[Any, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
