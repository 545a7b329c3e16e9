from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import NotFound
from backend.idempotency.service import Replay, request_hash, run_idempotent
from backend.orders import qr, scan, service
from backend.orders.schemas import OrderCreate, OrderOut

router = APIRouter(tags=["orders"])
IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key")]


def idempotent_json(rt: Any, principal: Any, key: str | None, request: Request, body: Any,
                    work: Any, status: int = 201) -> JSONResponse:
    digest = request_hash(request.method, request.url.path, body.model_dump(mode="json"))

    def _work() -> tuple[int, Any]:
        return status, work().model_dump(mode="json")

    try:
        code, payload = run_idempotent(rt, principal.sub, key, digest, _work)
    except Replay as replay:
        code, payload = replay.status, replay.body
    return JSONResponse(status_code=code, content=payload)


@router.post("/api/v1/orders", status_code=201, response_model=OrderOut)
def create_order(body: OrderCreate, request: Request, rt: RuntimeDep,
                 principal: CurrentPrincipal,
                 idempotency_key: IdempotencyKeyHeader = None) -> JSONResponse:
    return idempotent_json(rt, principal, idempotency_key, request, body,
                           lambda: service.create_order(rt, principal, body))


@router.get("/api/v1/orders/{order_no}", response_model=OrderOut)
def get_order(order_no: str, rt: RuntimeDep, session: SessionDep,
              principal: CurrentPrincipal) -> OrderOut:
    return service.get_order(rt, session, principal, order_no)


@router.post("/api/v1/orders/{order_no}/close", response_model=OrderOut)
def close_order(order_no: str, rt: RuntimeDep, principal: CurrentPrincipal) -> OrderOut:
    return service.close_order(rt, principal, order_no)


@router.post("/api/v1/orders/{order_no}/sync", response_model=OrderOut)
def sync_order(order_no: str, rt: RuntimeDep, principal: CurrentPrincipal) -> OrderOut:
    """Ask the channel now (the mini-program calls this when wx.requestPayment returns)."""
    return service.sync_order(rt, principal, order_no)


@router.get("/api/v1/qr/{token}.{fmt}", tags=["qr codes"])
async def qr_image(token: str, fmt: str, rt: RuntimeDep) -> Response:
    if fmt not in ("png", "svg"):
        raise NotFound("QR images are .png or .svg")
    content = await run_in_threadpool(scan.qr_content_for_token, rt, token)
    image = await run_in_threadpool(qr.render, content, fmt, rt.redis)
    return Response(content=image, media_type="image/png" if fmt == "png" else "image/svg+xml",
                    headers={"Cache-Control": "private, max-age=60"})


@router.get("/pay/{token}", tags=["qr codes"], include_in_schema=True)
def landing(token: str, request: Request, rt: RuntimeDep) -> Response:
    """The aggregate QR's landing page (聚合码): the scanning app decides the channel."""
    outcome = scan.scan(rt, token, request.headers.get("user-agent", ""))
    if outcome.redirect:
        return RedirectResponse(outcome.redirect, status_code=302)
    return HTMLResponse(outcome.page, status_code=outcome.status)


