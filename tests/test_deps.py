"""A request's transaction commits before its answer is sent (``backend.deps.SessionDep``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from backend.deps import SessionDep, get_runtime
from backend.runtime import Runtime


def test_the_session_commits_before_the_answer_is_sent(rt: Runtime) -> None:
    order: list[str] = []
    app = FastAPI()
    app.dependency_overrides[get_runtime] = lambda: rt

    @app.post("/write")
    def write(session: SessionDep) -> dict[str, bool]:
        event.listen(session, "after_commit", lambda _: order.append("commit"))
        session.execute(text("SELECT 1"))
        return {"ok": True}

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        async def watched(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                order.append("answer")
            await send(message)
        await app(scope, receive, watched)

    with TestClient(asgi) as client:   # type: ignore[arg-type]
        assert client.post("/write").status_code == 200
    assert order == ["commit", "answer"]


def test_a_failed_commit_is_an_error_answer_not_a_success(rt: Runtime) -> None:
    app = FastAPI()
    app.dependency_overrides[get_runtime] = lambda: rt

    @app.post("/write")
    def write(session: SessionDep) -> dict[str, bool]:
        def refuse(_: Session) -> None:
            raise RuntimeError("the database refused the commit")
        event.listen(session, "before_commit", refuse)
        return {"ok": True}

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/write").status_code == 500


def test_dependencies_that_only_read_the_request_take_no_thread() -> None:
    """FastAPI runs a plain ``def`` dependency in the thread pool: one hand-off per request
    (py-spy found it on every notification). Those that only read the request are async."""
    import inspect

    from backend.deps import client_ip, require_roles

    assert inspect.iscoroutinefunction(get_runtime)
    assert inspect.iscoroutinefunction(client_ip)
    assert inspect.iscoroutinefunction(require_roles("agent").dependency)


def test_the_busiest_routes_are_matched_first(rt: Runtime) -> None:
    """Routes are tried one by one, router by router: the channels' notifications first,
    then lookups."""
    from fastapi.routing import APIRoute

    from backend.app import create_app

    paths = []
    for r in create_app(runtime=rt).router.routes:
        inner = getattr(r, "original_router", None)      # an included router
        for route in (inner.routes if inner is not None else [r]):
            if isinstance(route, APIRoute) and route.path.startswith("/api/"):
                paths.append(route.path)
    assert paths[:3] == ["/api/v1/notify/wechat", "/api/v1/notify/alipay",
                         "/api/v1/notify/unionpay"]
    assert paths[3].startswith("/api/v1/residents")
