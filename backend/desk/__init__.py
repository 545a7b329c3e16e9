"""The finance desk (财务工作台): web pages under /desk/ (see router.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.desk.render import HERE, DeskHeaders, page
from backend.desk.router import LOGIN_MESSAGES, page_context, router
from backend.desk.session import (
    DeskRefusal,
    DeskUser,
    LoginRequired,
    clear_session,
    current_user,
)
from backend.errors import AppError

PREFIX = "/desk"


def _on_desk(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


def _refusal_page(request: Request, status: int, title: str, message: str) -> Response:
    try:
        user: DeskUser | None = current_user(request, request.app.state.runtime)
    except Exception:   # noqa: BLE001 - no usable session: the page without a menu
        user = None
    context = page_context(request, user, "", title=title, message=message)
    return page(request, "message.html", context, status_code=status)


def install(app: FastAPI) -> None:
    """Mount the desk's pages and stylesheet; its errors answer as pages, not JSON."""
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="desk-static")
    app.add_middleware(DeskHeaders, prefix=PREFIX)

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        reason = exc.reason if exc.reason in LOGIN_MESSAGES else "login"
        response = RedirectResponse(f"{PREFIX}/login?m={reason}", status_code=303)
        clear_session(response, request.app.state.runtime)
        return response

    async def refusal(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DeskRefusal)
        return _refusal_page(request, exc.status, exc.title, exc.message)

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(DeskRefusal, refusal)

    # The API's handlers answer JSON; under /desk/ the same errors answer as a page.
    titles: dict[type[Exception], str] = {
        AppError: "操作未完成", RequestValidationError: "请求不对",
        StarletteHTTPException: "页面不存在"}
    for kind, title in titles.items():
        api_handler: Any = app.exception_handlers[kind]

        async def handler(request: Request, exc: Exception, api_handler: Any = api_handler,
                          title: str = title) -> Response:
            if not _on_desk(request):
                return await api_handler(request, exc)  # type: ignore[no-any-return]
            status = getattr(exc, "status", None) or getattr(exc, "status_code", None) or 422
            if isinstance(exc, StarletteHTTPException) and exc.status_code != 404:
                title = "请求不对"
            message = (exc.message if isinstance(exc, AppError)
                       else "页面不存在。" if status == 404
                       else "请求的内容不完整或格式不对，请回到页面重试。")
            return _refusal_page(request, int(status), title, message)

        app.add_exception_handler(kind, handler)
