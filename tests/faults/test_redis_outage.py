"""Redis (the test's own redis-server) stopped in the middle of a stream of payment
notifications and lookups, then started again: payments go on being applied, none lost;
rate limits count in the process meanwhile (still refusing over the limit); ``/readyz``
says ``degraded``; the outage is logged once when it starts and once when it ends, not once
per request; and once Redis answers again the limits count there again."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import httpx
import redis

from backend.config import Settings
from backend.residents.idnumber import make_id_number
from backend.security.tokens import Principal, issue_token
from bench import _support as sup
from tests.faults.conftest import Orders, OwnRedis, applied, once_each, serve, wait_for

N = 200
UP, DOWN = range(1, 61), range(61, 141)          # the rest: after Redis is back
MISS_LIMIT = 3
NOBODY = make_id_number("370406", date(1969, 3, 15), 99)   # valid, and registered nowhere


def _lookup(base_url: str, caller: str) -> int:
    token = issue_token(sup.APP_SECRET, Principal(sub=f"wx:{caller}", role="resident"), 600)
    r = httpx.post(base_url + "/api/v1/residents/lookup", timeout=10,
                   headers={"Authorization": f"Bearer {token}"},
                   json={"name": "某某", "id_number": NOBODY, "year": 2021})
    return r.status_code


def _readiness(base_url: str) -> tuple[int, str]:
    r = httpx.get(base_url + "/readyz", timeout=10)
    return r.status_code, str(r.json()["status"])


def test_payments_go_on_through_a_redis_outage(live_settings: Settings, own_redis: OwnRedis,
                                               tmp_path: Path) -> None:
    settings = live_settings.model_copy(update={"redis_url": own_redis.url})
    log = tmp_path / "serve.log"
    server = serve(settings, log, extra_env={"REDIS_RETRY_S": "0.5",
                                             "LOOKUP_MISS_LIMIT": str(MISS_LIMIT)}).spawn()
    store = redis.Redis.from_url(own_redis.url)
    try:
        orders = Orders(settings, N)
        server.ready()
        base = server.base_url
        # Redis up: a miss is counted there
        assert orders.send(base, UP).taken == set(UP)
        assert _lookup(base, "fault-a") == 404
        assert store.get("rl:lookup:caller:wx:fault-a") == b"1"
        assert _readiness(base) == (200, "ready")

        own_redis.stop()
        statuses: list[int] = []
        others: list[int] = []

        def lookups() -> None:
            statuses.extend(_lookup(base, "fault-b") for _ in range(MISS_LIMIT + 2))
            others.extend(_lookup(base, f"fault-c{k}") for k in range(10))

        side = threading.Thread(target=lookups)
        side.start()
        down = orders.send(base, DOWN)
        side.join(30)
        assert down.taken == set(DOWN), (down.refused, down.lost)
        # the limit still holds, counted in the process
        assert statuses == [404] * MISS_LIMIT + [429] * 2
        assert others == [404] * 10
        assert _readiness(base) == (200, "degraded")

        own_redis.start()             # empty, on the same port

        def counted_in_redis() -> bool:
            caller = f"fault-d{len(counted)}"
            counted.append(_lookup(base, caller))
            return store.get(f"rl:lookup:caller:wx:{caller}") == b"1"

        counted: list[int] = []
        wait_for("lookup misses counted in Redis again", counted_in_redis, timeout_s=15,
                 every_s=0.2)
        assert _readiness(base) == (200, "ready")
        after = orders.send(base, range(DOWN.stop, N + 1))
        assert after.taken == set(range(DOWN.stop, N + 1))
    finally:
        server.stop()
        store.close()
    assert applied(settings.database_url, range(1, N + 1)) == once_each(N)
    lines = log.read_text()
    started, ended = (lines.count("Redis is unreachable"),
                      lines.count("Redis answers again after"))
    assert (started, ended) == (1, 1), (started, ended)
    print(f"\nredis outage: {len(UP)} + {len(DOWN)} (down) + {N - DOWN.stop + 1} notifications "
          f"all taken at once and applied once; {len(statuses) + len(others)} lookups while "
          f"down (limit held in-process: {statuses}); back on Redis after {len(counted)} "
          f"lookups; logged {started} outage start, {ended} end")
