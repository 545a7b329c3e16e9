"""Access tokens (JWT, HS256 with APP_SECRET) and resident refs."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from backend.errors import NotFound, Unauthorized

ISSUER = "resident-collection"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a resident (WeChat openid) or a staff member with a scope."""

    sub: str
    role: str
    town_code: str | None = None
    village_code: str | None = None
    department: str | None = None
    # staff only: the account's token_version when the token was issued; deactivating the
    # account moves it on, so every earlier token stops working
    token_version: int = 0

    @property
    def is_staff(self) -> bool:
        return self.role != "resident"


def issue_token(secret: str, principal: Principal, ttl_s: int) -> str:
    now = datetime.now(UTC)
    claims = {
        "iss": ISSUER, "sub": principal.sub, "role": principal.role,
        "iat": now, "exp": now + timedelta(seconds=ttl_s),
    }
    for key in ("town_code", "village_code", "department"):
        if getattr(principal, key):
            claims[key] = getattr(principal, key)
    if principal.is_staff:
        claims["ver"] = principal.token_version
    return jwt.encode(claims, secret, algorithm="HS256")


# Tokens whose signature and claims were checked, by (secret, token): their principal and
# expiry. Verifying a token (base64, JSON, HMAC, the claims) cost more than the rest of a
# lookup's work on the event loop; the same bytes verify the same way every time, and the
# expiry is checked again on every use. Bounded: emptied when full.
_VERIFIED: dict[tuple[str, str], tuple[Principal, float]] = {}
_VERIFIED_MAX = 4096


def read_token(secret: str, token: str) -> Principal:
    known = _VERIFIED.get((secret, token))
    if known is not None:
        principal, expires = known
        if time.time() < expires:     # as PyJWT: expired once exp <= now
            return principal
        raise Unauthorized("the access token has expired; log in again")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], issuer=ISSUER,
                            options={"require": ["exp", "sub", "role"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the access token has expired; log in again") from None
    except jwt.PyJWTError:
        raise Unauthorized("the access token is not valid") from None
    version = claims.get("ver", 0)
    if not isinstance(version, int):
        raise Unauthorized("the access token is not valid")
    principal = Principal(sub=claims["sub"], role=claims["role"],
                          town_code=claims.get("town_code"),
                          village_code=claims.get("village_code"),
                          department=claims.get("department"), token_version=version)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[(secret, token)] = (principal, float(claims["exp"]))
    return principal


class RefCodec:
    """``ref``: an opaque, caller-bound name for a resident that carries no ID number.

    AES-SIV over the row id with the caller's subject as associated data: deterministic
    (the same caller sees the same ref), useless to any other caller.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESSIV(key)

    def make(self, resident_id: int, caller: str) -> str:
        ct = self._aead.encrypt(str(resident_id).encode(), [caller.encode()])
        return base64.urlsafe_b64encode(ct).rstrip(b"=").decode()

    def read(self, ref: str, caller: str) -> int:
        try:
            raw = base64.urlsafe_b64decode(ref + "=" * (-len(ref) % 4))
            return int(self._aead.decrypt(raw, [caller.encode()]))
        except (InvalidTag, ValueError):
            raise NotFound("no resident with this ref for this caller") from None
