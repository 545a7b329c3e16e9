"""The service as the benchmarks serve it: ``uvicorn _server:create --factory --app-dir bench``.

``create()`` builds the app exactly as ``python -m backend serve`` does (Settings from the
environment, ``configure_logging(LOG_LEVEL)``, ``create_app()``) and wraps it in
:class:`ServerTiming`, which adds a ``Server-Timing`` header to every answer:

- ``app;dur=<ms>``: from the request reaching the app to the start of the answer
  (``time.perf_counter()``; everything the service does, the channel call included);
- ``channel;dur=<ms>``: time spent inside the payment adapters' ``create`` (the call to the
  channel — the simulator over loopback HTTP), when there was one;
- ``cpu;dur=<ms>``: the CPU time the service's process used meanwhile (all its threads:
  exact for requests sent one at a time; unlike the times, hardly moved by other work on the
  machine), and ``channelcpu``: of that, the CPU of the adapter's ``create`` (our signing
  and verifying);
- ``sandbox;dur=<ms>``: of that, the simulator's own server time (what the real channel's
  side would be), measured by this same middleware around the ``/sandbox/…`` request, when
  the simulator is served in-process (``PAYMENT_SANDBOX=1`` alone).

``create_simulator()`` serves the channel simulator alone, in its own process, so that its
CPU (RSA signing and verifying, JSON) does not compete with the service's on one event loop
and GIL: with ``BENCH_SIMULATOR_URL`` set, the service's channel clients call that server
instead of the ``/sandbox`` routes mounted in the service (``Channels.sandbox_base``). The
simulator's own server time is then read from it: ``GET /bench/sandbox-ms`` answers the
running total of its ``/sandbox/…`` requests' server times.

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
        if scope["path"] == "/bench/sandbox-ms":
            body = f"{_SANDBOX_MS[0]:.3f}".encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        times: dict[str, float] = {}
        token = _REQUEST_TIMES.set(times)
        start, cpu_start = time.perf_counter(), time.process_time()
        sandbox = scope["path"].startswith("/sandbox/")
        seen = _SANDBOX_MS[0]

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                total = (time.perf_counter() - start) * 1000
                times["cpu"] = (time.process_time() - cpu_start) * 1000
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


def _timed(name: str, fn: Any, cpu: bool = False) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            times = _REQUEST_TIMES.get()
            if times is not None:
                times[name] = times.get(name, 0.0) + (time.perf_counter() - start) * 1000
                if cpu:
                    times[name + "cpu"] = times.get(name + "cpu", 0.0) + (
                        time.thread_time() - cpu_start) * 1000

    return wrapper


def time_channel_calls(runtime: Any) -> None:
    for client in runtime.channels.clients.values():
        client.create = _timed("channel", client.create, cpu=True)


# With BENCH_PARTS=1: where a request's server time goes, as more Server-Timing parts.
# (module, function): wrapped where callers look them up at call time (module globals)
PARTS = [
    ("backend.orders.endpoints", "run_idempotent"),    # the endpoint's work, in the pool
    ("backend.idempotency.service", "_claim"),
    ("backend.idempotency.service", "_finish"),
    ("backend.orders.service", "_write_order"),
    ("backend.orders.service", "_priced_items"),
    ("backend.orders.service", "_open_at_channel"),
    ("backend.orders.service", "render"),
    ("backend.orders.scan", "qr_content_for_token"),
    ("backend.orders.qr", "_render"),
]


def time_parts(runtime: Any) -> None:
    """Wrap PARTS, and time and count the SQL statements (``sql``, ``sqln``)."""
    import importlib

    from sqlalchemy import event

    for module_name, name in PARTS:
        module = importlib.import_module(module_name)
        setattr(module, name, _timed(name, getattr(module, name)))

    def before(conn: Any, *args: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def after(conn: Any, *args: Any) -> None:
        times = _REQUEST_TIMES.get()
        if times is not None:
            times["sql"] = times.get("sql", 0.0) + (
                time.perf_counter() - conn.info.pop("bench_t0")) * 1000
            times["sqln"] = times.get("sqln", 0.0) + 1

    event.listen(runtime.engine, "before_cursor_execute", before)
    event.listen(runtime.engine, "after_cursor_execute", after)


def _check_code_root() -> None:
    import backend

    if not Path(backend.__file__).resolve().is_relative_to(ROOT.resolve()):
        raise RuntimeError(f"the service code was imported from {backend.__file__}, "
                           f"not from {ROOT}")


def _point_at_simulator(channels: Any) -> None:
    """With ``BENCH_SIMULATOR_URL``: the channels' base URLs are that server's (before any
    client or simulator is built from them)."""
    url = os.environ.get("BENCH_SIMULATOR_URL", "").rstrip("/")
    if url:
        channels.sandbox_base = lambda channel: f"{url}/sandbox/{channel}"


def create() -> ASGIApp:
    from backend.app import create_app
    from backend.config import get_settings
    from backend.logs import configure_logging
    from backend.runtime import Runtime

    _check_code_root()
    settings = get_settings()
    configure_logging(settings.log_level)
    runtime = Runtime(settings)
    _point_at_simulator(runtime.channels)
    time_channel_calls(runtime)
    if os.environ.get("BENCH_PARTS"):
        time_parts(runtime)
    return ServerTiming(create_app(runtime=runtime))


def create_simulator() -> ASGIApp:
    """The channel simulator alone (the ``/sandbox`` routes ``create_app`` mounts in sandbox
    mode), with the service's settings: the same key files, so each side verifies the
    other's signatures as in the service's own process; notifications go to
    ``PUBLIC_BASE_URL`` (the service)."""
    from fastapi import FastAPI

    from backend.channels import Channels
    from backend.clock import BusinessClock
    from backend.config import get_settings
    from backend.logs import configure_logging

    _check_code_root()
    settings = get_settings()
    configure_logging(settings.log_level)
    clock = BusinessClock(settings.collect_now)
    channels = Channels(settings, clock.now,
                        move_clock=clock.advance_to if clock.movable else None)
    _point_at_simulator(channels)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(channels.sandbox_router())

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return ServerTiming(app)


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
