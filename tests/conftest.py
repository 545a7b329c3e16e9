"""Shared fixtures: every database test runs on SQLite and on real PostgreSQL + Redis.

On a laptop without PostgreSQL or Redis those variants skip; in CI (``CI=true``) a missing
service is a failure, never a skip.
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

from backend.config import Settings
from backend.migrate import upgrade
from backend.models import metadata
from backend.runtime import Runtime
from tests.contract_check import check_response
from tests.servers import ServedApp, free_port

PG_ADMIN = os.environ.get("TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
# pytest-xdist's workers (gw0, gw1, …) each flush their own Redis database: the next ones
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
if _WORKER != "gw0":
    _base, _, _db = REDIS.rpartition("/")
    REDIS = f"{_base}/{int(_db or 0) + int(_WORKER.removeprefix('gw'))}"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_PII_KEY = base64.b64encode(b"k" * 32).decode()
IN_WINDOW = datetime.fromisoformat("2020-11-02T09:00:00+08:00")
# The live service's channel timeout: the in-process simulator answers within it even on a
# loaded 2-core machine running two test workers (2.5 s was seen to run out in CI); a test
# that wants a timeout makes the simulator hang for HANG_S, longer than it.
LIVE_CHANNEL_TIMEOUT_S = 5.0
HANG_S = LIVE_CHANNEL_TIMEOUT_S + 1


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
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrated once; each test gets a copy (the ledger's triggers refuse a DELETE wipe)."""
    path = tmp_path_factory.mktemp("db") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    target = tmp_path / "test.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{sqlite_template}{suffix}")
        if src.exists():
            shutil.copyfile(src, f"{target}{suffix}")
    return f"sqlite:///{target}"


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
def settings(backend_name: str, request: pytest.FixtureRequest, tmp_path: Path,
             sandbox_keys: dict[str, object]) -> Settings:
    if backend_name == "postgres":
        db, cache = request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url")
        redis.Redis.from_url(cache).flushdb()
    else:
        db, cache = request.getfixturevalue("sqlite_url"), ""
    return Settings(database_url=db, redis_url=cache, data_dir=tmp_path, pii_key=TEST_PII_KEY,
                    app_secret="test-secret-" + "x" * 32, collect_now=IN_WINDOW,
                    payment_sandbox=True, login_slowdown_max_s=0.05,
                    # the session's channel keys: generating RSA keys per test is slow
                    **sandbox_keys)  # type: ignore[arg-type]


def _wipe(rt: Runtime) -> None:
    """PostgreSQL is shared by the session: empty it, identities restarted.

    DELETE with ``session_replication_role = replica`` (no triggers: the ledger's refuse a
    DELETE; no foreign-key checks) takes about 35 ms where a TRUNCATE of every table took
    250 ms (it makes new files for each table), and the suite wipes before every test."""
    with rt.engine.begin() as conn:
        if conn.dialect.name != "postgresql":
            return
        sequences = conn.execute(text(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) "
            "FROM pg_sequences WHERE schemaname = current_schema()")).scalars().all()
        conn.execute(text(
            "SET LOCAL session_replication_role = replica;"
            + "".join(f"DELETE FROM {t.name};" for t in reversed(metadata.sorted_tables))
            + "".join(f"ALTER SEQUENCE {seq} RESTART;" for seq in sequences)))


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings)
    _wipe(runtime)
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def sandbox_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Channel keys made once per session (RSA generation is slow), as Settings fields."""
    from backend.channels import _private_pem

    d = tmp_path_factory.mktemp("keys")
    files = {"wechat_mch_private_key": "mch.pem", "sandbox_wechat_private_key": "wx_pay.pem",
             "sandbox_wechat_platform_cert_key": "wx_cert.pem",
             "alipay_app_private_key": "ali_app.pem", "sandbox_alipay_private_key": "ali.pem"}
    for name in files.values():
        _private_pem(d / name)
    return {k: str(d / f) for k, f in files.items()} | {
        "wechat_apiv3_key": "A" * 16 + "b" * 16,
        "unionpay_key": "sandbox-unionpay-communication-key-0123456789"}


class Live:
    """The whole service on a real port, simulator included, as a wallet would see it."""

    def __init__(self, rt: Runtime, served: ServedApp) -> None:
        self.rt, self.served = rt, served
        self.base_url = served.base_url
        self.http = httpx.Client(base_url=served.base_url, timeout=30,
                                 event_hooks={"response": [check_response]})


@pytest.fixture
def live(settings: Settings, sandbox_keys: dict[str, object]) -> Iterator[Live]:
    from backend.app import create_app

    port = free_port()
    live_settings = settings.model_copy(update={
        "public_base_url": f"http://127.0.0.1:{port}",
        "channel_timeout_s": LIVE_CHANNEL_TIMEOUT_S,
        **sandbox_keys})
    runtime = Runtime(live_settings)
    _wipe(runtime)
    app = create_app(runtime=runtime)
    # with its lifespan, as `serve` runs it (on PostgreSQL: the notification pool)
    served = ServedApp(app, port, options={"lifespan": "on"}).start()
    try:
        yield Live(runtime, served)
    finally:
        served.stop()
        runtime.close()


@pytest.fixture
def served(rt: Runtime) -> Iterator[ServedApp]:
    """The app of ``rt`` on a real loopback port (no simulator URLs pointed at it)."""
    from backend.app import create_app

    app = ServedApp(create_app(runtime=rt)).start()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    from backend.app import create_app

    app = create_app(runtime=rt)
    with TestClient(app) as c:
        c.event_hooks["response"].append(check_response)
        yield c
