"""Serving an app on a real loopback port, for tests whose peers call back over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServedApp:
    """A FastAPI app served by uvicorn in a thread on 127.0.0.1 (loopback only).

    ``options`` are uvicorn options over the test defaults: pass
    ``backend.__main__.uvicorn_options(...)`` to serve the app as ``serve`` does.
    """

    def __init__(self, app: FastAPI, port: int | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, **{
            "log_level": "warning", "lifespan": "off", "limit_concurrency": 200,
            **(options or {}), "host": "127.0.0.1", "port": self.port})
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.server.started:
                return self
            time.sleep(0.02)
        raise RuntimeError("the test server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
