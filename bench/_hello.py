"""The yardstick of bench/lookup_load.py: a FastAPI hello-world served the same way as the
service (``_server:create_hello``: same uvicorn command line and workers, same
``ServerTiming`` wrapper). It takes the lookup's own request body, validated by the same
pydantic model, and answers a small JSON object; ``/healthz`` answers without a database.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations.
"""

from fastapi import FastAPI

from backend.residents.schemas import LookupRequest


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/api/v1/residents/lookup")
    async def lookup(body: LookupRequest) -> dict[str, object]:
        return {"hello": "world", "year": body.year}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
