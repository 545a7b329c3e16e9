from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from backend.deps import RuntimeDep
from backend.notifications.service import handle
from payment_adapters.base import Channel

router = APIRouter(prefix="/api/v1/notify", tags=["channel notifications"])


async def _notify(channel: Channel, request: Request, rt: RuntimeDep) -> Response:
    body = await request.body()   # the raw bytes: signatures are over them
    answer = await anyio.to_thread.run_sync(handle, rt, channel, request.headers, body,
                                            limiter=rt.notify_limiter)
    return Response(content=answer.body, status_code=answer.status,
                    media_type=answer.media_type)


@router.post("/wechat")
async def notify_wechat(request: Request, rt: RuntimeDep) -> Response:
    return await _notify(Channel.WECHAT, request, rt)


@router.post("/alipay")
async def notify_alipay(request: Request, rt: RuntimeDep) -> Response:
    return await _notify(Channel.ALIPAY, request, rt)


@router.post("/unionpay")
async def notify_unionpay(request: Request, rt: RuntimeDep) -> Response:
    return await _notify(Channel.UNIONPAY, request, rt)
