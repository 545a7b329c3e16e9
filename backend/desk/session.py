"""Who is at the desk: the session cookie, CSRF tokens, and the roles the desk admits.

The session cookie holds the same access token the API's staff login issues (HttpOnly,
SameSite=Strict, Secure behind https). Every POST form carries a CSRF token derived from
that session's token with APP_SECRET, so a page of another site can neither read nor forge
it; the login form, before there is a session, carries a random token also set as a
cookie (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt
from fastapi import Request, Response
from sqlalchemy import select
from sqlmodel import col

from backend.auth.models import StaffUser
from backend.auth.service import check_staff_token
from backend.errors import Unauthorized
from backend.runtime import Runtime
from backend.security.tokens import ISSUER, Principal, read_token

COOKIE = "desk_session"
LOGIN_COOKIE = "desk_login"
COOKIE_PATH = "/desk"
LOGIN_COOKIE_TTL_S = 3600

#: The staff roles the desk serves; agents and department users have their own screens.
DESK_ROLES = ("finance", "town_staff", "auditor", "admin")
#: Who may see the district-wide pages (statements, runs, refunds, day close).
DISTRICT_ROLES = ("finance", "auditor", "admin")
#: Who may act on them (upload, resolve, approve, close).
ACTING_ROLES = ("finance",)

ROLE_NAMES = {"finance": "财务", "town_staff": "乡镇工作人员", "auditor": "审计",
              "admin": "管理员", "agent": "代办员", "department": "部门用户"}


class LoginRequired(Exception):
    """No usable session: back to the login page, saying why (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeskRefusal(Exception):
    """A page to show instead of what was asked (403 out of scope, 404, 409...)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


@dataclass(frozen=True)
class DeskUser:
    principal: Principal
    username: str
    csrf: str

    @property
    def role(self) -> str:
        return self.principal.role

    @property
    def role_name(self) -> str:
        return ROLE_NAMES.get(self.role, self.role)

    @property
    def sees_district(self) -> bool:
        return self.role in DISTRICT_ROLES

    @property
    def may_act(self) -> bool:
        return self.role in ACTING_ROLES

    @property
    def staff_id(self) -> int | None:
        sub = self.principal.sub
        return int(sub[6:]) if sub.startswith("staff:") and sub[6:].isdigit() else None


def csrf_for(secret: str, session_token: str) -> str:
    return hmac.new(secret.encode(), b"desk-csrf\0" + session_token.encode(),
                    hashlib.sha256).hexdigest()


def _is_expired(secret: str, token: str) -> bool:
    """A token that is good in every way but its age (so the page says "expired")."""
    try:
        jwt.decode(token, secret, algorithms=["HS256"], issuer=ISSUER,
                   options={"verify_exp": False, "require": ["exp", "sub", "role"]})
    except jwt.PyJWTError:
        return False
    return True


def current_user(request: Request, rt: Runtime) -> DeskUser:
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired("login")
    try:
        principal = read_token(rt.app_secret, token)
    except Unauthorized:
        raise LoginRequired("expired" if _is_expired(rt.app_secret, token)
                            else "login") from None
    if not principal.is_staff:
        raise LoginRequired("login")
    try:
        check_staff_token(rt, principal)
    except Unauthorized:
        raise LoginRequired("revoked") from None
    if principal.role not in DESK_ROLES:
        raise role_refusal(principal.role)
    staff_id = int(principal.sub.removeprefix("staff:"))
    with rt.engine.connect() as conn:
        username = conn.scalar(select(col(StaffUser.username))
                               .where(col(StaffUser.id) == staff_id)) or principal.sub
    return DeskUser(principal, str(username), csrf_for(rt.app_secret, token))


def role_refusal(role: str) -> DeskRefusal:
    return DeskRefusal(403, "无权使用财务工作台",
                       f"{ROLE_NAMES.get(role, role)}账号不能使用财务工作台。财务工作台供财务、"
                       "乡镇工作人员、审计和管理员使用；代办员请使用代办员小程序。")


def require_district(user: DeskUser) -> None:
    if not user.sees_district:
        raise DeskRefusal(403, "无权访问",
                          "这一页面只对财务、审计和管理员开放；乡镇工作人员可查看本镇的日报解台账。")


def require_acting(user: DeskUser) -> None:
    if not user.may_act:
        raise DeskRefusal(403, "无权操作", "只有财务人员可以进行这一操作。")


def check_csrf(expected: str, given: str | None) -> None:
    if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise DeskRefusal(403, "请求已被拒绝",
                          "表单校验失败（可能来自其他网站，或页面已过期）。请回到页面刷新后重试。")


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def _secure(rt: Runtime) -> bool:
    return urlsplit(rt.settings.public_base_url).scheme == "https"


def set_session(response: Response, rt: Runtime, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=rt.settings.access_token_ttl_s,
                        path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(rt))
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)


def set_login_nonce(response: Response, rt: Runtime, nonce: str) -> None:
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_COOKIE_TTL_S, path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=_secure(rt))


def clear_session(response: Response, rt: Runtime) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=_secure(rt))
