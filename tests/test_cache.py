"""Redis outages: the in-process store answers meanwhile, and the outage is logged once when
it starts and once when it ends, not once per call (backend.cache.RedisOutage)."""

from __future__ import annotations

import logging

import fakeredis
import pytest

from backend.cache import RateLimiter, RedisOutage, make_redis
from tests.servers import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_logged_once_at_its_start_and_once_at_its_end(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = RedisOutage(retry_s=5, clock=clock)
    limiter = RateLimiter(make_redis(f"redis://127.0.0.1:{free_port()}/0"), outage=outage)
    tried: list[str] = []
    real_run = outage.usable

    def counting() -> bool:
        usable = real_run()
        if usable:
            tried.append("redis")
        return usable

    outage.usable = counting  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="backend.cache"):
        # Redis refuses: the counts go on in this process, over the limit as usual
        assert [limiter.hit("lookup:caller:a", 600) for _ in range(30)] == list(range(1, 31))
        assert limiter.count("lookup:caller:a") == 30 and outage.down
        assert tried == ["redis"]                 # tried once, then left alone
        clock.now += 5.1
        assert limiter.count("lookup:caller:a") == 30      # tried again: still down
        assert tried == ["redis", "redis"]
        limiter.client = fakeredis.FakeRedis(server=fakeredis.FakeServer())   # Redis is back
        assert limiter.count("lookup:caller:a") == 30      # within the wait: not tried yet
        clock.now += 5.1
        assert limiter.count("lookup:caller:a") == 0       # Redis's own count again
        assert not outage.down
        assert limiter.hit("lookup:caller:a", 600) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "backend.cache"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Redis is unreachable (") and "tried every 5 s" in lines[0]
    assert lines[1] == ("Redis answers again after 10.2 s; 32 calls used this process's own "
                        "store meanwhile")
