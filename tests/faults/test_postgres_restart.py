"""PostgreSQL restarted in the middle of a stream of payment notifications — a fast restart
(``pg_ctl restart -m fast``) and an immediate one (``-m immediate``: no shutdown checkpoint,
crash recovery at the start) — on a PostgreSQL the test runs itself.

While it is down, notifications get the channel's failure answer (the channel sends them
again); every payment acknowledged before, during or after is in the database after crash
recovery (``synchronous_commit`` on: the answer goes out after the WAL flush); ``/readyz``
answers 200 again, and the notifications sent again are all applied, once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from backend.config import Settings
from backend.migrate import upgrade
from bench import _support as sup
from tests.faults.conftest import (
    Orders,
    OwnPostgres,
    applied,
    once_each,
    paid_ids,
    resend_until_taken,
    serve,
    wait_for,
)
from tests.servers import free_port

PER_MODE = 120
BEFORE = 40          # sent and answered before the restart begins


@dataclass
class Stack:
    pg: OwnPostgres
    settings: Settings
    orders: Orders
    server: sup.ServerProcess
    log: Path


@pytest.fixture(scope="module")
def stack(redis_url: str, sandbox_keys: dict[str, object],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("postgres-restart")
    pg = OwnPostgres()
    try:
        pg.start()
        with psycopg.connect(pg.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE collect")
        url = pg.url("collect")
        upgrade(url)
        settings = sup.bench_settings(url, tmp / "data", free_port(), redis_url=redis_url,
                                      **sandbox_keys)
        server = serve(settings, tmp / "serve.log").spawn()
        try:
            orders = Orders(settings, 2 * PER_MODE)
            server.ready()
            yield Stack(pg, settings, orders, server, tmp / "serve.log")
        finally:
            server.stop()
    finally:
        pg.close()


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_mid_stream(stack: Stack, mode: str) -> None:
    # each mode its own orders, of every channel: odd ids for one, even for the other
    ids = list(range(1 if mode == "fast" else 2, 2 * PER_MODE + 1, 2))
    with psycopg.connect(stack.settings.database_url) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    base = stack.server.base_url
    before = stack.orders.send(base, ids[:BEFORE])
    assert before.taken == set(ids[:BEFORE])

    took: list[tuple[float, datetime]] = []
    restart = threading.Thread(target=lambda: took.append((stack.pg.restart(mode),
                                                           datetime.now(UTC))))
    t0 = time.monotonic()
    restart.start()
    time.sleep(0.05)      # pg_ctl under way
    # the rest of the stream, paced to span the restart (about 2 s)
    during = stack.orders.send(base, ids[BEFORE:], concurrency=4, pause_s=0.08)
    restart.join(60)
    assert took, "pg_ctl restart did not finish"
    stream_s = time.monotonic() - t0
    # nothing acknowledged was lost, crash recovery included
    acknowledged = before.taken | during.taken
    assert acknowledged <= paid_ids(stack.settings.database_url, ids)
    met = during.in_flight(t0, t0 + took[0][0])
    assert len(met) >= 3, "hardly a notification met the restart: the test proved nothing"
    unanswered = during.unanswered

    wait_for("/readyz answering 200 after the restart", lambda: _ready(base), timeout_s=30,
             every_s=0.2)
    rounds = resend_until_taken(stack.orders, base, unanswered)
    assert applied(stack.settings.database_url, ids) == once_each(PER_MODE)
    # The notification pool's connections all died with the restart. The first notification
    # to meet a dead one has the pool check the others: only the few in flight then (the
    # stream's 4, a few more on a loaded machine while the check runs) meet one, not each
    # of the pool's connections in turn.
    met_dead = _logged_since(stack.log, took[0][1], "a connection of the notification pool "
                             "was lost")
    pool = stack.settings.notify_threads
    assert met_dead < pool, f"{met_dead} notifications met a dead pooled connection ({pool})"
    print(f"\npostgres {mode} restart ({took[0][0]:.1f} s, during a {stream_s:.1f} s stream): "
          f"{len(met)} under way during it; {len(acknowledged)} answered, "
          f"{len(during.refused)} refused and "
          f"{len(during.lost)} unanswered; resent {rounds} -> all {PER_MODE} applied once; "
          f"{met_dead} met a dead pooled connection after the restart")


def _logged_since(log: Path, since: datetime, text: str) -> int:
    """Lines of serve's JSON log written since ``since`` whose message has ``text``."""
    n = 0
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
        if when >= since and text in entry.get("message", ""):
            n += 1
    return n
