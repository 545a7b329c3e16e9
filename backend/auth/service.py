"""Logins: WeChat mini-program (code2session) and staff passwords (argon2)."""

from __future__ import annotations

import logging
import re

import httpx
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.auth.models import STAFF_ROLES, StaffUser
from backend.errors import (
    AppError,
    Conflict,
    Forbidden,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from backend.logs import redact_library_urls
from backend.policy import DEPARTMENTS
from backend.residents.models import Town, Village
from backend.runtime import Runtime
from backend.security.tokens import Principal, issue_token

log = logging.getLogger(__name__)
redact_library_urls()     # the jscode2session URL carries the AppSecret
_hasher = PasswordHasher()
# Verifying against this keeps an unknown username as slow as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-real-password")
_OPENID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def create_staff_user(session: Session, *, username: str, password: str, role: str,
                      town_code: str | None = None, village_code: str | None = None,
                      department: str | None = None) -> StaffUser:
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{2,64}", username or ""):
        raise ValidationFailed("username: 2–64 letters, digits or _ . @ -")
    if len(password or "") < 8:
        raise ValidationFailed("password: at least 8 characters")
    if role not in STAFF_ROLES:
        raise ValidationFailed(f"role: one of {', '.join(STAFF_ROLES)}")
    if role == "agent":
        village = session.get(Village, village_code) if village_code else None
        if village is None:
            raise ValidationFailed("an agent needs --village with a known village code")
        town_code = village.town_code
    elif role == "town_staff":
        if not town_code or session.get(Town, town_code) is None:
            raise ValidationFailed("town staff need --town with a known town code")
        village_code = None
    elif role == "department":
        if department not in DEPARTMENTS:
            raise ValidationFailed(f"a department user needs --department, one of "
                                   f"{', '.join(DEPARTMENTS)}")
        town_code = village_code = None
    else:
        town_code = village_code = department = None
    if session.scalar(select(col(StaffUser.id)).where(col(StaffUser.username) == username)):
        raise Conflict(f"username {username!r} is taken", code="username_taken")
    user = StaffUser(username=username, password_hash=_hasher.hash(password), role=role,
                     town_code=town_code, village_code=village_code, department=department)
    session.add(user)
    session.flush()
    return user


def staff_principal(user: StaffUser) -> Principal:
    return Principal(sub=f"staff:{user.id}", role=user.role, town_code=user.town_code,
                     village_code=user.village_code, department=user.department)


def login_staff(rt: Runtime, session: Session, username: str, password: str,
                client_ip: str) -> tuple[str, StaffUser]:
    s = rt.settings
    keys = [f"login:user:{username.lower()}", f"login:ip:{client_ip}"]
    # An account locks after a few failures; an address after more (many accounts).
    if (rt.limiter.count(keys[0]) >= s.login_failure_limit
            or rt.limiter.count(keys[1]) >= 4 * s.login_failure_limit):
        raise RateLimited("too many failed logins; wait a few minutes and try again")
    user = session.scalar(select(StaffUser).where(col(StaffUser.username) == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
        ok = user is not None and user.active
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or user is None:
        for key in keys:
            rt.limiter.hit(key, s.login_failure_window_s)
        log.info("staff login failed")
        raise Unauthorized("wrong username or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    rt.limiter.reset(keys[0])
    return issue_token(rt.app_secret, staff_principal(user), s.access_token_ttl_s), user


class WechatUnavailable(AppError):
    """WeChat could not say who this is right now (busy, rate-limited, unreachable)."""

    status, code = 503, "wechat_unavailable"


# jscode2session errcodes that mean "this code will never work" (40029 invalid, 40163 used).
_BAD_CODE = {40029: "is not valid or has expired", 40163: "has already been used"}


def code_to_openid(rt: Runtime, code: str) -> str:
    """wx.login code → openid: WeChat's code2session, or the simulator's ``sandbox:<openid>``.

    One ``GET /sns/jscode2session`` per login, with a timeout; no access_token is involved
    (fetching one per login would spend the daily quota of /cgi-bin/token and invalidate the
    token the previous fetch got). The session_key in the answer is never kept, logged or
    returned: nothing here decrypts mini-program data.
    """
    s = rt.settings
    if s.sandbox:
        openid = code.removeprefix("sandbox:") if code.startswith("sandbox:") else ""
        if not _OPENID.fullmatch(openid):
            raise Unauthorized("the login code is not valid (the simulator takes "
                               "'sandbox:<openid>')")
        return openid
    url = s.wechat_api_base_url.rstrip("/") + "/sns/jscode2session"
    params = {"appid": s.wechat_appid, "secret": s.wechat_app_secret, "js_code": code,
              "grant_type": "authorization_code"}
    try:
        response = httpx.get(url, params=params, timeout=s.wechat_login_timeout_s)
        answer = response.json()
    except httpx.HTTPError as exc:
        log.warning("code2session failed: %s", type(exc).__name__)
        raise WechatUnavailable("WeChat login is unavailable; try again") from None
    except ValueError:
        log.warning("code2session answered HTTP %s with a body that is not JSON",
                    response.status_code)
        raise WechatUnavailable("WeChat login is unavailable; try again") from None
    if not isinstance(answer, dict):
        log.warning("code2session answered a JSON %s", type(answer).__name__)
        raise WechatUnavailable("WeChat login is unavailable; try again")
    errcode = answer.get("errcode") or 0
    if not isinstance(errcode, int):
        log.warning("code2session answered an errcode that is not a number")
        raise WechatUnavailable("WeChat login is unavailable; try again")
    if errcode in _BAD_CODE:
        log.info("code2session refused the code: errcode=%s", errcode)
        raise Unauthorized(f"the login code {_BAD_CODE[errcode]}; call wx.login again")
    if errcode == 40226:
        log.info("code2session blocked a high-risk user: errcode=40226")
        raise Forbidden("WeChat blocked this login (a high-risk account)",
                        code="wechat_login_blocked")
    if errcode:
        # -1 busy, 45011 rate limit; anything else (a wrong appid/secret) is ours to fix.
        level = logging.WARNING if errcode in (-1, 45011) else logging.ERROR
        log.log(level, "code2session failed: errcode=%s errmsg=%s", errcode,
                str(answer.get("errmsg", ""))[:200])
        raise WechatUnavailable("WeChat login is unavailable; try again")
    wx_openid = answer.get("openid")
    if not isinstance(wx_openid, str) or not _OPENID.fullmatch(wx_openid):
        log.warning("code2session answered without a usable openid")
        raise WechatUnavailable("WeChat login is unavailable; try again")
    return wx_openid


def login_wechat(rt: Runtime, code: str) -> tuple[str, str]:
    openid = code_to_openid(rt, code)
    principal = Principal(sub=f"wx:{openid}", role="resident")
    return issue_token(rt.app_secret, principal, rt.settings.access_token_ttl_s), openid
