"""The service as the benchmarks serve it: ``uvicorn _server:create --factory --app-dir bench``.

``create()`` builds the app exactly as ``python -m backend serve`` does (Settings from the
environment, ``configure_logging(LOG_LEVEL)``, ``create_app()``) and wraps it in
:class:`ServerTiming`, which adds a ``Server-Timing`` header to every answer:

- ``app;dur=<ms>``: from the request reaching the app to the start of the answer
  (``time.perf_counter()``; everything the service does, the channel call included);
- ``channel;dur=<ms>``: time spent inside the payment adapters' ``create`` (the call to the
  channel — here the in-process simulator over loopback HTTP), when there was one;
- ``sandbox;dur=<ms>``: of that, the simulator's own server time (what the real channel's
  side would be), measured by this same middleware around the ``/sandbox/…`` request.

Nothing in ``backend/`` is changed: the adapters' ``create`` methods are wrapped on the
instances this process uses.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

# The service's code: the benchmark's frozen copy when it made one (see _support.py). First
# on the path: `python -m uvicorn` puts the working directory there.
ROOT = Path(os.environ.get("BENCH_CODE_ROOT") or Path(__file__).resolve().parent.parent)
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))

from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

# One dict per request: the ASGI task sets it; run_in_threadpool copies the context into the
# worker thread, and the dict itself is shared, so the thread's additions are seen here.
_REQUEST_TIMES: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "bench_request_times", default=None)


# Server times of the simulator's own requests (/sandbox/…), in arrival order. A request that
# calls the channel reports, as "sandbox", those that ended while it ran: exact when requests
# are sent one at a time (order_create.py), a mix of neighbours' under concurrency.
_SANDBOX_MS = [0.0]     # running total


class ServerTiming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        times: dict[str, float] = {}
        token = _REQUEST_TIMES.set(times)
        start = time.perf_counter()
        sandbox = scope["path"].startswith("/sandbox/")
        seen = _SANDBOX_MS[0]

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                total = (time.perf_counter() - start) * 1000
                if sandbox:
                    _SANDBOX_MS[0] += total
                elif _SANDBOX_MS[0] > seen:
                    times["sandbox"] = _SANDBOX_MS[0] - seen
                parts = [f"app;dur={total:.3f}"]
                parts += [f"{k};dur={v:.3f}" for k, v in times.items()]
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", ", ".join(parts).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            _REQUEST_TIMES.reset(token)


def _timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times = _REQUEST_TIMES.get()
            if times is not None:
                times[name] = times.get(name, 0.0) + (time.perf_counter() - start) * 1000

    return wrapper


def time_channel_calls(runtime: Any) -> None:
    for client in runtime.channels.clients.values():
        client.create = _timed("channel", client.create)


def what_if(runtime: Any) -> None:
    """Experiments, off unless asked for (nothing in backend/ changes): the engine built
    with other pool settings — BENCH_POOL="size,overflow", BENCH_NO_PRE_PING=1."""
    pool = os.environ.get("BENCH_POOL")
    no_ping = os.environ.get("BENCH_NO_PRE_PING") == "1"
    if not (pool or no_ping):
        return
    from backend.db import make_engine

    kw: dict[str, Any] = {}
    if pool:
        size, overflow = pool.split(",")
        kw.update(pool_size=int(size), max_overflow=int(overflow))
    if no_ping:
        kw["pool_pre_ping"] = False
    runtime.__dict__["engine"] = make_engine(runtime.settings.resolved_database_url, **kw)


class ThreadLimit:
    """BENCH_THREADS=N: the size of the thread pool sync endpoints run in (anyio's default
    limiter, 40), set on the first request (it belongs to the event loop)."""

    def __init__(self, app: ASGIApp, tokens: int) -> None:
        self.app, self.tokens, self.done = app, tokens, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.done:
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = self.tokens
            self.done = True
        await self.app(scope, receive, send)


def create() -> ASGIApp:
    import backend
    from backend.app import create_app
    from backend.config import get_settings
    from backend.logs import configure_logging
    from backend.runtime import Runtime

    if not Path(backend.__file__).resolve().is_relative_to(ROOT.resolve()):
        raise RuntimeError(f"the service code was imported from {backend.__file__}, "
                           f"not from {ROOT}")
    settings = get_settings()
    configure_logging(settings.log_level)
    runtime = Runtime(settings)
    what_if(runtime)
    time_channel_calls(runtime)
    app: ASGIApp = ServerTiming(create_app(runtime=runtime))
    if os.environ.get("BENCH_THREADS"):
        app = ThreadLimit(app, int(os.environ["BENCH_THREADS"]))
    return app


def server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing`` → {"app": ms, "channel": ms, …}."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";dur=")
        if name and rest:
            out[name] = float(rest)
    return out
