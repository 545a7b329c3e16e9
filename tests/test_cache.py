"""Redis outages: the in-process store answers meanwhile, and the outage is logged once when
it starts and once when it ends, not once per call (backend.cache.RedisOutage). Reservations
(``RateLimiter.reserve``: counted first, atomically against the limits) and the key an
address is counted under (``address_key``: IPv6 by its /64)."""

from __future__ import annotations

import logging

import fakeredis
import pytest

from backend.cache import RateLimiter, RedisOutage, address_key, make_redis
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


def _limiter(client: object = None) -> RateLimiter:
    return RateLimiter(client or fakeredis.FakeRedis(server=fakeredis.FakeServer()),  # type: ignore[arg-type]
                       outage=RedisOutage(retry_s=5, clock=Clock()))


def test_a_reservation_counts_first_and_refuses_past_the_limit() -> None:
    limiter = _limiter()
    limits: list[tuple[str, int | None]] = [("a", 2), ("b", 3), ("c", None)]
    first, second = limiter.reserve(limits, 600), limiter.reserve(limits, 600)
    assert first is not None and second is not None
    assert limiter.reserve(limits, 600) is None          # "a" is at its limit: nothing counted
    assert limiter.counts(["a", "b", "c"]) == [2, 2, 2]
    limiter.release(first)
    assert limiter.counts(["a", "b", "c"]) == [1, 1, 1]
    limiter.release(second, reset=["a"])                 # "a" deleted, the others given back
    assert limiter.counts(["a", "b", "c"]) == [0, 0, 0]
    assert limiter.client.ttl("rl:b") > 0                # the window is kept


def test_giving_back_after_the_window_ended_leaves_no_negative_count() -> None:
    limiter = _limiter()
    reservation = limiter.reserve([("a", 2)], 600)
    assert reservation is not None
    limiter.client.delete("rl:a")                        # the window ended meanwhile
    limiter.release(reservation)
    assert limiter.count("a") == 0
    assert limiter.client.ttl("rl:a") in (-2, *range(1, 601))   # gone, or going
    assert limiter.reserve([("a", 2)], 600) is not None
    assert limiter.reserve([("a", 2)], 600) is not None
    assert limiter.reserve([("a", 2)], 600) is None


@pytest.mark.parametrize("down", [False, True])
def test_concurrent_reservations_stop_at_the_limit(down: bool) -> None:
    """16 threads released together, 3 times: exactly the limit reserved, on Redis's store
    and on this process's own while Redis is down."""
    import threading

    limiter = _limiter(make_redis(f"redis://127.0.0.1:{free_port()}/0") if down else None)
    barrier = threading.Barrier(16)
    got: list[bool] = []

    def run() -> None:
        for _ in range(3):
            barrier.wait(timeout=30)
            got.append(limiter.reserve([("caller", 10), ("ip", 200)], 600) is not None)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got.count(True) == 10 and len(got) == 48
    assert limiter.counts(["caller", "ip"]) == [10, 10]
    assert limiter.outage.down is down


def test_a_reservation_is_given_back_where_it_was_made() -> None:
    clock = Clock()
    outage = RedisOutage(retry_s=5, clock=clock)
    limiter = RateLimiter(make_redis(f"redis://127.0.0.1:{free_port()}/0"), outage=outage)
    during = limiter.reserve([("a", 5)], 600)            # Redis down: this process's store
    assert during is not None and not during.on_redis
    redis_back = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    redis_back.set("rl:a", 3)
    limiter.client = redis_back
    clock.now += 5.1
    after = limiter.reserve([("a", 5)], 600)             # Redis again
    assert after is not None and after.on_redis
    limiter.release(during)                              # on this process's store, not Redis
    assert redis_back.get("rl:a") == b"4"
    limiter.client = make_redis(f"redis://127.0.0.1:{free_port()}/0")    # Redis gone again
    limiter.release(after)       # can not reach it: stays counted until its window ends
    assert outage.down


@pytest.mark.parametrize("ip,key", [
    ("10.0.0.1", "10.0.0.1"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2:ffff::", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::1", "::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("::ffff:c000:207", "192.0.2.7"),
    ("unknown", "unknown"),
    ("testclient", "testclient"),
])
def test_the_address_key_is_an_ipv6_addresses_64_and_an_ipv4_address(ip: str, key: str) -> None:
    assert address_key(ip) == key
