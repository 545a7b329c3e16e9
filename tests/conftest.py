"""Shared fixtures: every database test runs on SQLite and on real PostgreSQL + Redis.

On a laptop without PostgreSQL or Redis those variants skip; in CI (``CI=true``) a missing
service is a failure, never a skip.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

from backend.config import Settings
from backend.migrate import upgrade
from backend.models import metadata
from backend.runtime import Runtime

PG_ADMIN = os.environ.get("TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_PII_KEY = base64.b64encode(b"k" * 32).decode()
IN_WINDOW = datetime.fromisoformat("2020-11-02T09:00:00+08:00")


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services are required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"rc_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    return REDIS


@pytest.fixture(params=["sqlite", "postgres"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if backend_name == "postgres":
        db, cache = request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url")
        redis.Redis.from_url(cache).flushdb()
    else:
        db, cache = request.getfixturevalue("sqlite_url"), ""
    return Settings(database_url=db, redis_url=cache, data_dir=tmp_path, pii_key=TEST_PII_KEY,
                    app_secret="test-secret-" + "x" * 32, collect_now=IN_WINDOW,
                    payment_sandbox=True)


def _wipe(rt: Runtime) -> None:
    tables = [t.name for t in reversed(metadata.sorted_tables)]
    with rt.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings)
    _wipe(runtime)
    yield runtime
    runtime.close()


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    from backend.app import create_app

    app = create_app(rt.settings)
    app.state.runtime = rt
    with TestClient(app) as c:
        yield c
