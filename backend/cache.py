"""Redis, or an in-process stand-in (fakeredis) for the embedded default.

Redis holds only what may be lost: rate-limit counters, QR tokens, caches. When the
configured Redis goes away, callers fall back to the in-process store: slower to share
between processes, never wrong about money (that lives in the database).
"""

from __future__ import annotations

import logging
from typing import Any

import fakeredis
import redis

log = logging.getLogger(__name__)


def make_redis(url: str) -> redis.Redis:
    if url:
        return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                    health_check_interval=30)
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


class RateLimiter:
    """Fixed-window counters: ``hit`` counts an event, ``exceeded`` tells if a key is over."""

    def __init__(self, client: redis.Redis, prefix: str = "rl") -> None:
        self.client = client
        self.prefix = prefix
        self._fallback: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())

    def _run(self, fn: Any) -> Any:
        try:
            return fn(self.client)
        except redis.RedisError as exc:
            log.warning("redis unavailable, using the in-process rate limiter: %s", exc)
            return fn(self._fallback)

    def hit(self, key: str, window_s: int) -> int:
        full = f"{self.prefix}:{key}"

        def _hit(c: redis.Redis) -> int:
            pipe = c.pipeline()
            pipe.incr(full)
            pipe.expire(full, window_s, nx=True)
            count, _ = pipe.execute()
            return int(count)

        return int(self._run(_hit))

    def count(self, key: str) -> int:
        full = f"{self.prefix}:{key}"
        value = self._run(lambda c: c.get(full))
        return int(value or 0)

    def counts(self, keys: list[str]) -> list[int]:
        """Several keys' counts in one round trip (MGET)."""
        full = [f"{self.prefix}:{key}" for key in keys]
        return [int(v or 0) for v in self._run(lambda c: c.mget(full))]

    def exceeded(self, keys: list[str], limit: int) -> bool:
        return any(self.count(k) >= limit for k in keys)

    def reset(self, key: str) -> None:
        full = f"{self.prefix}:{key}"
        self._run(lambda c: c.delete(full))
