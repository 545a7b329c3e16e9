"""Annotated dependency aliases for the routes.

The dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in
a worker thread, and each such hop costs more than what these do (``bench/README.md``,
"Lookups"). Only the staff token's account check, which may read Redis or the database,
goes to a thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend.auth.service import check_staff_token
from backend.db import unit_of_work
from backend.errors import Forbidden, Unauthorized
from backend.runtime import Runtime
from backend.security.tokens import Principal, read_token

_bearer = HTTPBearer(auto_error=False)


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    """One request, one transaction: commit once at the end, or roll back."""
    with unit_of_work(rt.sessions) as session:
        yield session


# scope="function": the commit runs when the endpoint returns, before the answer is sent. By
# default FastAPI ends a yield dependency after the response: a client's next request could
# then miss what its last one wrote, and a failed commit would follow an answer of success.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def get_principal(
    rt: RuntimeDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("log in first: send Authorization: Bearer <token>")
    principal = read_token(rt.app_secret, creds.credentials)     # an HMAC: no I/O
    if principal.is_staff:
        # the account's state, from Redis or the database: in the thread pool
        await run_in_threadpool(check_staff_token, rt, principal)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: str):  # type: ignore[no-untyped-def]
    async def _check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in roles:
            raise Forbidden(f"this needs one of the roles: {', '.join(roles)}")
        return principal

    return Depends(_check)


async def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


ClientIp = Annotated[str, Depends(client_ip)]
