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
    time_channel_calls(runtime)
    return ServerTiming(create_app(runtime=runtime))


def server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing`` → {"app": ms, "channel": ms, …}."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";dur=")
        if name and rest:
            out[name] = float(rest)
    return out


def create_hello() -> ASGIApp:
    """The yardstick of bench/lookup_load.py (see _hello.py), in the same ``ServerTiming``
    wrapper as the service."""
    from _hello import make_app

    return ServerTiming(make_app())
