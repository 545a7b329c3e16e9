"""Serving an app on a real loopback port, for tests whose peers call back over HTTP."""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

# Below the kernel's ephemeral range (ip_local_port_range, 32768 up): a port picked there
# could be taken meanwhile by any outgoing connection (to PostgreSQL, Redis, a channel).
_PORTS = (20000, 32000)


def free_port() -> int:
    for _ in range(200):
        port = random.randrange(*_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


class ServedApp:
    """A FastAPI app served by uvicorn in a thread on 127.0.0.1 (loopback only).

    ``options`` are uvicorn options over the test defaults: pass
    ``backend.__main__.uvicorn_options(...)`` to serve the app as ``serve`` does.
    """

    def __init__(self, app: FastAPI, port: int | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.port = port or free_port()
        # bound now, and handed to uvicorn: nothing can take the port in between
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", self.port))
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, **{
            "log_level": "warning", "lifespan": "off", "limit_concurrency": 200,
            **(options or {}), "host": "127.0.0.1", "port": self.port})
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={
            "sockets": [self.socket]}, daemon=True)

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
        self.socket.close()
