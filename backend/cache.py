"""Redis, or an in-process stand-in (fakeredis) for the embedded default.

Redis holds only what may be lost: rate-limit counters, QR tokens, caches. When the
configured Redis goes away, callers fall back to the in-process store: slower to share
between processes, never wrong about money (that lives in the database). An outage is a
state (:class:`RedisOutage`): after a failed call Redis is left alone for a few seconds, then
tried again; its start and its end are logged once each, not once per request.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import fakeredis
import redis

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_S = 5.0


class RedisOutage:
    """Whether Redis is taken to be down, shared by everything of a process that uses it.

    A failed call starts an outage (one WARNING); during it callers skip Redis and use
    their fallback, but every ``retry_s`` one call tries Redis again; the first call that
    works ends the outage (one WARNING, with how long it lasted and how many calls did
    without Redis). A Redis that hangs instead of refusing costs one socket timeout per
    ``retry_s``, not one per request.
    """

    def __init__(self, retry_s: float = RETRY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._skipped = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def usable(self) -> bool:
        """Try Redis now? Always outside an outage; in one, once every ``retry_s``."""
        if self._down_since is None:
            return True
        with self._lock:
            if self._down_since is None:
                return True
            now = self._clock()
            if now >= self._retry_at:
                self._retry_at = now + self.retry_s     # this caller probes; the others skip
                return True
            self._skipped += 1
            return False

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            now = self._clock()
            started = self._down_since is None
            if started:
                self._down_since, self._skipped = now, 0
            else:
                self._skipped += 1
            self._retry_at = now + self.retry_s
        if started:
            log.warning("Redis is unreachable (%s): rate limits and caches use this process's "
                        "own store until it answers again (tried every %g s)", exc,
                        self.retry_s)

    def ok(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted, skipped = self._clock() - self._down_since, self._skipped
            self._down_since = None
        log.warning("Redis answers again after %.1f s; %d calls used this process's own "
                    "store meanwhile", lasted, skipped)

    def run(self, fn: Callable[[], T], fallback: Callable[[], T]) -> T:
        """``fn()`` (a Redis call), or ``fallback()`` when Redis is down or the call fails."""
        if self.usable():
            try:
                result = fn()
            except redis.RedisError as exc:
                self.failed(exc)
            else:
                self.ok()
                return result
        return fallback()


def make_redis(url: str) -> redis.Redis:
    if url:
        return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                    health_check_interval=30)
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def address_key(client_ip: str) -> str:
    """What the per-address limits count a client under: an IPv4 address as it is, an IPv6
    address by its /64 (one subscriber's prefix: its holder may rotate through all of it),
    an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as its IPv4 address. Anything that is
    not an address (``unknown``, a test client's name) as it is."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # (from the integer: a scoped address, fe80::1%eth0, is its /64 too)
        return str(ipaddress.ip_network((int(address), 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class Reservation:
    """Events counted ahead by ``RateLimiter.reserve``, on the store that counted them."""

    keys: tuple[str, ...]          # full keys (with the limiter's prefix)
    window_s: int
    on_redis: bool                 # False: this process's own store (Redis was down)


class RateLimiter:
    """Fixed-window counters: ``hit`` counts an event, ``exceeded`` tells if a key is over;
    ``reserve`` counts an event ahead, atomically against its limits, and ``release`` gives
    it back when it turned out not to count."""

    def __init__(self, client: redis.Redis, outage: RedisOutage, prefix: str = "rl") -> None:
        self.client = client
        self.prefix = prefix
        self.outage = outage
        self._fallback: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())

    def _run(self, fn: Any) -> Any:
        """On Redis, or — while it is down — on this process's own counters."""
        return self.outage.run(lambda: fn(self.client), lambda: fn(self._fallback))

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

    def ttl(self, key: str) -> int | None:
        """Seconds until a key's window ends (None: no window running)."""
        full = f"{self.prefix}:{key}"
        left = int(self._run(lambda c: c.ttl(full)))
        return left if left > 0 else None

    def exceeded(self, keys: list[str], limit: int) -> bool:
        return any(self.count(k) >= limit for k in keys)

    def reset(self, key: str) -> None:
        full = f"{self.prefix}:{key}"
        self._run(lambda c: c.delete(full))

    def reserve(self, limits: Sequence[tuple[str, int | None]],
                window_s: int) -> Reservation | None:
        """Count one event on every key at once, unless that takes one past its limit
        (``None``: no limit, only counted); then count nothing and answer None.

        The counts are incremented first and compared after (one round trip: INCR and
        EXPIRE NX for each key in one MULTI/EXEC), so concurrent callers can not all pass
        a check made before any of them counted: of callers racing for the last events
        under a limit, exactly as many as are left get a reservation. A refused caller's
        increments are given back (a second round trip, on refusals only), so counts stay
        the events that counted. Give a reservation back with ``release`` when its event
        turns out not to count (a lookup that found the resident)."""
        keys = tuple(f"{self.prefix}:{key}" for key, _ in limits)

        def _reserve(c: redis.Redis) -> list[int]:
            pipe = c.pipeline()
            for full in keys:
                pipe.incr(full)
                pipe.expire(full, window_s, nx=True)
            return [int(n) for n in pipe.execute()[::2]]

        on_redis = True

        def _fallback() -> list[int]:
            nonlocal on_redis
            on_redis = False
            return _reserve(self._fallback)

        counts = self.outage.run(lambda: _reserve(self.client), _fallback)
        reservation = Reservation(keys, window_s, on_redis)
        if any(limit is not None and n > limit for (_, limit), n in zip(limits, counts,
                                                                         strict=True)):
            self.release(reservation)
            return None
        return reservation

    def release(self, reservation: Reservation, *, reset: Sequence[str] = ()) -> None:
        """Give a reservation back, on the store that made it (in one round trip); the keys
        in ``reset`` (unprefixed) are deleted instead. If Redis made it and is down now, the
        reservation stays counted until its window ends (never fewer than happened). One
        reserved just before its key's window ended and given back after another caller
        started the next window takes one from that window's count (at a window's edge
        only)."""
        gone = {f"{self.prefix}:{key}" for key in reset}
        back = [k for k in reservation.keys if k not in gone]

        def _release(c: redis.Redis) -> None:
            pipe = c.pipeline()
            for full in back:
                pipe.decr(full)
                # a window that ended meanwhile: DECR made the key afresh; let it go too
                pipe.expire(full, reservation.window_s, nx=True)
            for full in gone:
                pipe.delete(full)
            counts = pipe.execute()[:2 * len(back):2]
            under = [full for full, n in zip(back, counts, strict=True) if int(n) < 0]
            if under:       # (rare) put back what the fresh keys lost: they count from 0
                pipe = c.pipeline()
                for full in under:
                    pipe.incr(full)
                pipe.execute()

        if reservation.on_redis:
            self.outage.run(lambda: _release(self.client), lambda: None)
        else:
            _release(self._fallback)
