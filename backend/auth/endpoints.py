from __future__ import annotations

import anyio
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from backend.auth import service
from backend.auth.schemas import StaffLogin, StaffToken, WechatLogin, WechatToken
from backend.deps import ClientIp, RuntimeDep, SessionDep
from backend.errors import JSON_BODY, errors

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post("/wechat", response_model=WechatToken,
             responses=errors(*JSON_BODY, "unauthorized", "wechat_login_blocked",
                              "wechat_unavailable"))
def login_wechat(body: WechatLogin, rt: RuntimeDep) -> WechatToken:
    token, openid = service.login_wechat(rt, body.code)
    return WechatToken(access_token=token, openid=openid)


@router.post("/staff", response_model=StaffToken,
             responses=errors(*JSON_BODY, "unauthorized", "rate_limited"))
async def login_staff(body: StaffLogin, rt: RuntimeDep, session: SessionDep,
                      ip: ClientIp) -> StaffToken:
    delay = await run_in_threadpool(service.login_throttle, rt, body.username, ip)
    if delay:
        # waited here, not in a worker thread: a flood of logins ties up no threads
        await anyio.sleep(delay)
    token, user = await run_in_threadpool(service.login_staff, rt, session, body.username,
                                          body.password, ip)
    return StaffToken(access_token=token, role=user.role)
