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

from backend.audit import service as audit
from backend.auth.models import STAFF_ROLES, StaffUser
from backend.cache import address_key
from backend.clock import BusinessClock
from backend.db import unit_of_work
from backend.errors import (
    AppError,
    Conflict,
    Forbidden,
    NotFound,
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
# How long a process may go on trusting an account's active flag and token_version it read.
STAFF_STATE_TTL_S = 30


def create_staff_user(session: Session, *, username: str, password: str, role: str,
                      town_code: str | None = None, village_code: str | None = None,
                      department: str | None = None, clock: BusinessClock | None = None,
                      by: Principal | None = None, via: str = "cli") -> StaffUser:
    """Create a staff account, recorded in the audit trail (``user.create``) in the same
    transaction: by ``by`` (None: the system, e.g. the CLI on the server), at ``clock``'s
    time (None: real time)."""
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
    audit.record(session, clock or BusinessClock(), by, "user.create", "staff_user", user.id,
                 details={"username": username, "role": role, "town_code": town_code,
                          "village_code": village_code, "department": department,
                          "via": via})
    return user


def staff_principal(user: StaffUser) -> Principal:
    return Principal(sub=f"staff:{user.id}", role=user.role, town_code=user.town_code,
                     village_code=user.village_code, department=user.department,
                     token_version=user.token_version)


def _state_key(staff_id: int) -> str:
    return f"staff:state:{staff_id}"


def _staff_state(rt: Runtime, staff_id: int) -> tuple[bool, int]:
    """(active, token_version) of an account: kept in Redis for STAFF_STATE_TTL_S, so a
    change made by another process without a shared Redis shows within that time."""
    key = _state_key(staff_id)
    # Redis down: the database says (RedisOutage logs the outage once)
    cached = rt.redis_outage.run(lambda: rt.redis.get(key), lambda: None)
    if cached is not None:
        text = cached.decode() if isinstance(cached, bytes) else str(cached)
        active, _, version = text.partition(":")
        return active == "1", int(version)
    with rt.engine.connect() as conn:
        row = conn.execute(select(col(StaffUser.active), col(StaffUser.token_version))
                           .where(col(StaffUser.id) == staff_id)).first()
    state = (bool(row[0]), int(row[1])) if row is not None else (False, -1)
    # (not kept while Redis is down: the next request reads the database again)
    rt.redis_outage.run(lambda: rt.redis.set(key, f"{int(state[0])}:{state[1]}",
                                             ex=STAFF_STATE_TTL_S), lambda: None)
    return state


def check_staff_token(rt: Runtime, principal: Principal) -> None:
    """A staff token is good while its account is active and nothing revoked it since."""
    staff_id = principal.sub.removeprefix("staff:")
    if not staff_id.isdigit():
        raise Unauthorized("the access token is not valid")
    active, version = _staff_state(rt, int(staff_id))
    if not active or version != principal.token_version:
        raise Unauthorized("the access token has been revoked; log in again")


def set_staff_active(rt: Runtime, username: str, active: bool, *,
                     by: Principal | None = None, reason: str | None = None) -> StaffUser:
    """Deactivate (revoking every token the account holds) or reactivate a staff account.

    Reactivation does not revive the old tokens: deactivation moved ``token_version`` on.
    """
    with unit_of_work(rt.sessions) as s:
        user = s.scalar(select(StaffUser).where(col(StaffUser.username) == username)
                        .with_for_update())
        if user is None:
            raise NotFound(f"no staff account {username!r}")
        if user.active and not active:
            user.token_version += 1
        was = user.active
        user.active = active
        s.flush()
        audit.record(s, rt, by, "user.activate" if active else "user.deactivate",
                     "staff_user", user.id, reason=reason,
                     details={"username": username, "role": user.role, "was_active": was})
    assert user.id is not None
    key = _state_key(user.id)

    def forget() -> bool:
        rt.redis.delete(key)
        return True

    if not rt.redis_outage.run(forget, lambda: False):
        log.warning("Redis is unreachable: staff account %s's cached state lapses within %d s "
                    "(until then other processes may still take its old tokens)", username,
                    STAFF_STATE_TTL_S)
    log.info("staff account %s %s", username, "activated" if active else "deactivated")
    return user


def slowdown_s(failures: int, cap_s: float) -> float:
    """The wait before checking a password, by the account's recent failures from anywhere:
    0.25 s after the first, doubling, never over ``cap_s``."""
    if failures <= 0:
        return 0.0
    return float(min(cap_s, 0.25 * 2 ** min(failures - 1, 32)))


def _login_keys(username: str, client_ip: str) -> tuple[str, str, str]:
    """The failure counters of (account, address), the address and the account; an address
    as ``address_key`` counts it (IPv6 by its /64)."""
    name, address = username.lower(), address_key(client_ip)
    return f"login:pair:{address}:{name}", f"login:ip:{address}", f"login:user:{name}"


def login_throttle(rt: Runtime, username: str, client_ip: str) -> float:
    """Refuse (429) an address that failed too often, for this account or across accounts;
    else the seconds to wait before trying the password.

    Failures lock only the (account, address) pair: anyone can type a username, so
    failures from elsewhere slow the account's logins down instead of locking the owner out.
    """
    s = rt.settings
    pair, ip, account = _login_keys(username, client_ip)
    if (rt.limiter.count(pair) >= s.login_failure_limit
            or rt.limiter.count(ip) >= 4 * s.login_failure_limit):
        raise RateLimited("too many failed logins; wait a few minutes and try again")
    return slowdown_s(rt.limiter.count(account), s.login_slowdown_max_s)


def login_staff(rt: Runtime, session: Session, username: str, password: str,
                client_ip: str) -> tuple[str, StaffUser]:
    """Check the password (the caller has waited ``login_throttle``'s time first).

    A failure is reserved on the three counters before the password is checked, atomically
    against the address's limits (``RateLimiter.reserve``: concurrent attempts can not all
    slip past a check made before any of them counted); a success gives it back, and clears
    its (account, address) count as before."""
    s = rt.settings
    pair, ip, account = keys = _login_keys(username, client_ip)
    reservation = rt.limiter.reserve(
        [(pair, s.login_failure_limit), (ip, 4 * s.login_failure_limit), (account, None)],
        s.login_failure_window_s)
    if reservation is None:
        raise RateLimited("too many failed logins; wait a few minutes and try again")
    try:
        user = session.scalar(select(StaffUser).where(col(StaffUser.username) == username))
        try:
            _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
            ok = user is not None and user.active
        except (VerificationError, InvalidHashError):
            ok = False
    except BaseException:
        rt.limiter.release(reservation)     # failed before an answer: not a failed login
        raise
    if not ok or user is None:
        log.info("staff login failed")      # counted: the reservation stays
        raise Unauthorized("wrong username or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    # the pair only is cleared: others' failures still slow this account
    rt.limiter.release(reservation, reset=[keys[0]])
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
