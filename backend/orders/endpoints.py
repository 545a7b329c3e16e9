from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from backend.deps import CurrentPrincipal, RuntimeDep, SessionDep
from backend.errors import JSON_BODY, LOGGED_IN, NotFound, error_response, errors
from backend.idempotency.service import Finish, Replay, request_hash, run_idempotent
from backend.orders import qr, scan, service
from backend.orders.schemas import OrderCreate, OrderOut

router = APIRouter(tags=["orders"])
#: What making an order can answer besides a malformed body (agents' QR codes too).
ORDER_CREATE_ERRORS = ("forbidden", "not_eligible", "window_closed", "item_already_paid",
                       "item_in_pending_order", "idempotency_conflict", "channel_error",
                       "channel_timeout")
CHANNEL_CALL_ERRORS = ("channel_error", "channel_timeout")
IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key")]


def _page(description: str, json_error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A landing-page answer: HTML for the wallet's browser (and maybe a JSON error)."""
    content: dict[str, Any] = {"text/html": {"schema": {"type": "string"}}}
    if json_error is not None:
        content.update(json_error["content"])
        description += "; or as JSON:\n" + json_error["description"]
    return {"description": description, "content": content}


def idempotent_json(rt: Any, principal: Any, key: str | None, request: Request, body: Any,
                    work: Any, status: int = 201, *, finishes_itself: bool = False
                    ) -> JSONResponse:
    """``work()`` makes the answer; with ``finishes_itself``, ``work(on_answer)``, and it
    calls ``on_answer(session, answer)`` in its last transaction (the key's answer is
    stored there)."""
    digest = request_hash(request.method, request.url.path, body.model_dump(mode="json"))

    def _work(*finish: Finish) -> tuple[int, Any]:
        if not finish:
            return status, work().model_dump(mode="json")
        return status, work(lambda s, answer: finish[0](s, status, answer.model_dump(
            mode="json"))).model_dump(mode="json")

    try:
        code, payload = run_idempotent(rt, principal.sub, key, digest, _work,
                                       finishes_itself=finishes_itself)
    except Replay as replay:
        code, payload = replay.status, replay.body
    return JSONResponse(status_code=code, content=payload)


@router.post("/api/v1/orders", status_code=201, response_model=OrderOut,
             responses=errors(*LOGGED_IN, *JSON_BODY, *ORDER_CREATE_ERRORS))
def create_order(body: OrderCreate, request: Request, rt: RuntimeDep,
                 principal: CurrentPrincipal,
                 idempotency_key: IdempotencyKeyHeader = None) -> JSONResponse:
    return idempotent_json(rt, principal, idempotency_key, request, body,
                           lambda on_answer: service.create_order(rt, principal, body,
                                                                  on_answer=on_answer),
                           finishes_itself=True)


@router.get("/api/v1/orders/{order_no}", response_model=OrderOut,
            responses=errors(*LOGGED_IN, "not_found"))
def get_order(order_no: str, rt: RuntimeDep, session: SessionDep,
              principal: CurrentPrincipal) -> OrderOut:
    return service.get_order(rt, session, principal, order_no)


@router.post("/api/v1/orders/{order_no}/close", response_model=OrderOut, responses=errors(
    *LOGGED_IN, "not_found", "forbidden", "order_not_payable", *CHANNEL_CALL_ERRORS))
def close_order(order_no: str, rt: RuntimeDep, principal: CurrentPrincipal) -> OrderOut:
    return service.close_order(rt, principal, order_no)


@router.post("/api/v1/orders/{order_no}/sync", response_model=OrderOut,
             responses=errors(*LOGGED_IN, "not_found", "forbidden", *CHANNEL_CALL_ERRORS))
def sync_order(order_no: str, rt: RuntimeDep, principal: CurrentPrincipal) -> OrderOut:
    """Ask the channel now (the mini-program calls this when wx.requestPayment returns)."""
    return service.sync_order(rt, principal, order_no)


@router.get("/api/v1/qr/{token}.{fmt}", tags=["qr codes"], response_class=Response, responses={
    200: {"description": "the QR code image", "content": {"image/png": {}, "image/svg+xml": {}}},
    **errors("not_found")})
async def qr_image(token: str, fmt: str, rt: RuntimeDep) -> Response:
    if fmt not in ("png", "svg"):
        raise NotFound("QR images are .png or .svg")
    content = await run_in_threadpool(scan.qr_content_for_token, rt, token)
    image = await run_in_threadpool(qr.render, content, fmt,
                                     (rt.redis, rt.redis_outage))
    return Response(content=image, media_type="image/png" if fmt == "png" else "image/svg+xml",
                    headers={"Cache-Control": "private, max-age=60"})


@router.get("/pay/{token}", tags=["qr codes"], response_class=HTMLResponse, responses={
    200: {"description": "a page: the order is paid, with a link to its receipt's public "
                          "check page (/r/<token>)"},
    302: {"description": "on to the wallet's trade for this order"},
    404: _page("no QR code with this token (replaced by a newer one, or never made)"),
    409: _page("the payment is still being prepared: scan again"),
    410: _page("the QR code has expired: ask for a new one"),
    502: _page("the payment channel gave no QR content: scan again",
               error_response(["channel_error"])),
    504: error_response(["channel_timeout"])})
def landing(token: str, request: Request, rt: RuntimeDep) -> Response:
    """The aggregate QR's landing page (聚合码): the scanning app decides the channel. Once
    the order is paid it says so and links the payment's receipt (issued now if the worker
    has not yet): how a resident who paid an agent's QR code reaches it."""
    outcome = scan.scan(rt, token, request.headers.get("user-agent", ""))
    if outcome.redirect:
        return RedirectResponse(outcome.redirect, status_code=302)
    return HTMLResponse(outcome.page, status_code=outcome.status)


