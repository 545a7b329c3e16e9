"""create_app(): routers, middleware, error handlers, lifespan."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.agents.endpoints import router as agents_router
from backend.audit.endpoints import router as audit_router
from backend.auth.endpoints import router as auth_router
from backend.config import Settings, get_settings
from backend.declarations.endpoints import router as declarations_router
from backend.departments.endpoints import router as departments_router
from backend.desk import install as install_desk
from backend.errors import AppError, answer_error, document_errors
from backend.ledger.endpoints import router as ledger_router
from backend.notifications.endpoints import NotificationLane
from backend.notifications.endpoints import router as notify_router
from backend.ops import RequestLog
from backend.ops import router as ops_router
from backend.orders.endpoints import router as orders_router
from backend.outbox.endpoints import router as outbox_router
from backend.progress.endpoints import router as progress_router
from backend.publications.endpoints import router as publications_router
from backend.receipts.endpoints import router as receipts_router
from backend.receipts.report_endpoints import router as receipt_reports_router
from backend.receipts.report_staff import router as receipt_report_staff_router
from backend.reconciliation.endpoints import router as reconciliation_router
from backend.refunds.endpoints import router as refunds_router
from backend.residents.endpoints import LookupLane
from backend.residents.endpoints import router as residents_router
from backend.runtime import Runtime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # JSON bodies; statement uploads get their own limit

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited"}


# FastAPI's HTTPException detail for a body it could not read as JSON (not a JSON syntax error)
BODY_UNPARSED = "There was an error parsing the body"


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse a request body over the limit (TigerStyle: limits on everything).

    A declared Content-Length over the limit is refused before reading; a chunked body is
    counted as it streams in and cut off at the limit, never buffered whole.
    """

    def __init__(self, app: ASGIApp, limit: int,
                 larger: Sequence[tuple[re.Pattern[str], int]] = ()) -> None:
        # larger: paths (statement uploads) whose bodies may be this big instead
        self.app, self.limit, self.larger = app, limit, tuple(larger)

    @staticmethod
    def _too_large(limit: int) -> JSONResponse:
        message = f"the request body is over {limit} bytes"
        return JSONResponse(status_code=413, content={"error": {
            "code": "payload_too_large", "message": message}})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = next((n for pattern, n in self.larger if pattern.fullmatch(path)), self.limit)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._too_large(limit)(scope, receive, send)
                return
        seen = 0
        answered = False   # we sent the 413 ourselves; whatever the app says after is dropped

        async def counting_receive() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not answered:
                    answered = True
                    await self._too_large(limit)(scope, receive, send)
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _flush_rejections(rt: Runtime) -> None:
    """Once a second, the counts of rejected notifications this process holds are written,
    so that a flood's last second is not left in memory until the next one."""
    from backend.notifications.service import flush_rejections
    from backend.notifications.tally import FLUSH_EVERY_S

    while True:
        await asyncio.sleep(FLUSH_EVERY_S)
        if rt.rejections.pending():
            try:
                await run_in_threadpool(flush_rejections, rt)
            except Exception:
                log.exception("the counts of rejected notifications could not be written; "
                              "kept for the next try")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime(settings or get_settings())
    runtime.settings.check_live_mode()
    # loaded now: a key that cannot be read would otherwise surface at the first agent's
    # collection (its receipt is issued in its transaction) as a 500
    runtime.receipt_key  # noqa: B018

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = None
        if runtime.settings.worker_in_serve:
            from backend.worker.runner import start_in_thread

            stop = start_in_thread(runtime)
        pool = None
        if runtime.postgres:
            # payment notifications' common case, applied on the event loop
            from backend.notifications.service import open_notify_pool

            pool = app.state.notify_pool = await open_notify_pool(runtime)
        flusher = asyncio.create_task(_flush_rejections(runtime))
        yield
        flusher.cancel()
        if pool is not None:
            app.state.notify_pool = None
            await pool.close()
        if stop is not None:
            stop.set()
        runtime.close()

    # /docs and /redoc load Swagger UI and ReDoc from this package, not from a CDN: a
    # district's intranet has no internet.
    app = FastAPIOffline(title="Resident insurance collection", version="0.1.0",
                         lifespan=lifespan)
    app.state.runtime = runtime
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return answer_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            position = next(e["loc"][-1] for e in exc.errors() if e.get("type") == "json_invalid")
            return JSONResponse(status_code=422, content={"error": {
                "code": "validation_error",
                "message": f"body: not valid JSON (at character {position})",
                "fields": ["body"]}})
        problems = [f"{_field(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        return JSONResponse(status_code=422, content={"error": {
            "code": "validation_error", "message": "; ".join(problems),
            "fields": [_field(tuple(e["loc"])) for e in exc.errors()]}})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # Only the framework answers 400 (our own errors are AppErrors): a body it could
            # not parse — JSON that is not UTF-8, a broken multipart or form. The same 422 as
            # any other malformed body, which every operation with a body documents.
            detail = ("not valid JSON (not UTF-8)" if exc.detail == BODY_UNPARSED
                      else f"not a valid form ({exc.detail})")
            return JSONResponse(status_code=422, content={"error": {
                "code": "validation_error", "message": f"body: {detail}", "fields": ["body"]}})
        code = _HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(status_code=exc.status_code, content={"error": {
            "code": code, "message": str(exc.detail)}})

    # An unexpected exception is logged and answered 500 by backend.ops.RequestLog, with the
    # request's id.

    # Routes are matched in order, one by one: the busiest first (a deadline day's channel
    # notifications and residents' lookups).
    app.include_router(notify_router)
    app.include_router(residents_router)
    app.include_router(ops_router)
    app.include_router(auth_router)
    app.include_router(orders_router)
    app.include_router(agents_router)
    app.include_router(ledger_router)
    app.include_router(outbox_router)
    app.include_router(refunds_router)
    app.include_router(departments_router)
    app.include_router(reconciliation_router)
    app.include_router(progress_router)
    app.include_router(audit_router)
    app.include_router(receipt_report_staff_router)
    app.include_router(publications_router)
    app.include_router(declarations_router)
    # /r/<token> never takes /r/public-key or /r/report (its path convertor leaves them out)
    app.include_router(receipts_router)
    app.include_router(receipt_reports_router)
    if runtime.settings.sandbox:
        app.include_router(runtime.channels.sandbox_router())
    install_desk(app)
    # A statement upload is a file (multipart): STATEMENT_MAX_BYTES, plus the form's own
    # few bytes; the endpoint checks the file itself against the limit and says so.
    uploads = runtime.settings.statement_max_bytes + 64 * 1024
    app.add_middleware(LookupLane)
    app.add_middleware(NotificationLane)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, larger=[
        (re.compile(r"/api/v1/reconciliation/[a-z]+/statements"), uploads),
        (re.compile(r"/desk/statements/upload"), uploads)])
    # outermost: every request gets its id, its count and its access line, whoever answers
    app.add_middleware(RequestLog)
    return app


def create_logged_app() -> FastAPI:
    """``create_app()`` for the server processes ``serve --workers N`` starts: each sets up
    its own (redacting) logging first, as ``serve`` does for itself."""
    from backend.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app()
