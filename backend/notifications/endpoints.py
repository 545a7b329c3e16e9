from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.errors import errors
from backend.notifications.service import handle_async
from backend.ops import ROUTE_KEY
from payment_adapters.base import Channel

router = APIRouter(prefix="/api/v1/notify", tags=["channel notifications"])
# Each channel reads its own answer; a failure answer makes it send the notification again.
WECHAT_FAILURE = {"type": "object", "required": ["code", "message"],
                  "properties": {"code": {"const": "FAIL"}, "message": {"type": "string"}}}


async def _notify(channel: Channel, request: Request) -> Response:
    # No dependencies to solve: the busiest route takes what it needs from the app.
    rt = request.app.state.runtime
    body = await request.body()   # the raw bytes: signatures are over them
    pool = getattr(request.app.state, "notify_pool", None)
    answer = await handle_async(rt, pool, channel, request.headers, body)
    return Response(content=answer.body, status_code=answer.status,
                    media_type=answer.media_type)


class NotificationLane:
    """The channels' notifications answered ahead of FastAPI's routing (ASGI middleware).

    On a deadline day they are most of the requests, and the routing, dependency solving and
    exception layers cost them about a quarter of their CPU. The lane answers exactly these
    three paths with the routes' own handler (``_notify``) and passes everything else on;
    the routes below stay as what documents them (OpenAPI) and serve them where the lane is
    not installed. It sits inside the body limit, which still counts the bytes.
    """

    PATHS = {f"/api/v1/notify/{c.value}": c for c in Channel}

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = (self.PATHS.get(scope["path"])
                   if scope["type"] == "http" and scope["method"] == "POST" else None)
        if channel is None:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_KEY] = scope["path"]   # counted under its route (backend.ops.RequestLog)
        response = await _notify(channel, Request(scope, receive))
        await response(scope, receive, send)


@router.post("/wechat", status_code=204, responses={
    204: {"description": "verified and recorded (a repeat too)"},
    400: {"description": "not verified, or names an order it does not match: WeChat Pay "
                         "sends it again",
          "content": {"application/json": {"schema": WECHAT_FAILURE}}},
    **errors("payload_too_large")})
async def notify_wechat(request: Request) -> Response:
    return await _notify(Channel.WECHAT, request)


@router.post("/alipay", response_class=PlainTextResponse, responses={
    200: {"description": "`success` when verified and recorded (a repeat too); `fail` "
                         "otherwise, and Alipay sends it again"},
    **errors("payload_too_large")})
async def notify_alipay(request: Request) -> Response:
    return await _notify(Channel.ALIPAY, request)


@router.post("/unionpay", response_class=PlainTextResponse, responses={
    200: {"description": "`SUCCESS` when verified and recorded (a repeat too); `FAILED` "
                         "otherwise, and ChinaUMS sends it again"},
    **errors("payload_too_large")})
async def notify_unionpay(request: Request) -> Response:
    return await _notify(Channel.UNIONPAY, request)
