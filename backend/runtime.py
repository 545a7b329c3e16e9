"""What a running service holds once: settings, database, keys, Redis, clock, policy."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import anyio
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from backend.cache import RateLimiter, RedisOutage, make_redis
from backend.channels import Channels
from backend.clock import BusinessClock
from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.notifications.tally import RejectionTally
from backend.policy import Policy, load_policy
from backend.security.pii import PiiVault
from backend.security.tokens import RefCodec

log = logging.getLogger(__name__)

# Threads per process that answer resident lookups (Redis and database reads).
LOOKUP_THREADS = 8


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.resolved_database_url,
                           pool_size=self.settings.db_pool_size)

    @cached_property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    @cached_property
    def notify_limiter(self) -> anyio.CapacityLimiter:
        """The threads that apply notifications: their own, so a burst of notifications
        neither waits behind other requests nor takes every connection from them."""
        return anyio.CapacityLimiter(self.settings.notify_threads)

    @cached_property
    def lookup_threads(self) -> ThreadPoolExecutor:
        """The threads that answer lookups: asyncio's executor, a hop of about 18 µs of CPU
        where anyio's worker threads (run_in_threadpool) cost 45–65 µs (``bench/README.md``,
        "Lookups"); their own, so that a burst of lookups queues here instead of taking
        every request thread."""
        return ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="lookup")

    @cached_property
    def pii(self) -> PiiVault:
        return PiiVault(self.settings.pii_key_bytes)

    @cached_property
    def refs(self) -> RefCodec:
        """Residents' caller-bound refs (made once: its AES-SIV key schedule is per object)."""
        return RefCodec(self.pii.ref_key)

    @cached_property
    def app_secret(self) -> str:
        return self.settings.app_secret_value

    @cached_property
    def receipt_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key receipts are signed with (RECEIPT_SIGNING_KEY)."""
        from backend.receipts.service import load_private_key

        return load_private_key(self.settings.receipt_signing_key_pem)

    @cached_property
    def redis(self) -> redis.Redis:
        return make_redis(self.settings.redis_url)

    @cached_property
    def redis_outage(self) -> RedisOutage:
        """Whether Redis is down, for everything of this process that uses it."""
        return RedisOutage(self.settings.redis_retry_s)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis, outage=self.redis_outage)

    @cached_property
    def clock(self) -> BusinessClock:
        return BusinessClock(self.settings.collect_now)

    @cached_property
    def channels(self) -> Channels:
        clock = self.clock
        return Channels(self.settings, clock.now,
                        move_clock=clock.advance_to if clock.movable else None)

    @cached_property
    def policy(self) -> Policy:
        return load_policy(self.settings.policy)

    @cached_property
    def rejections(self) -> RejectionTally:
        """Rejected notifications only counted, not yet written (notifications.service)."""
        return RejectionTally()

    def close(self) -> None:
        if "rejections" in self.__dict__:
            from backend.notifications.service import flush_rejections

            try:
                flush_rejections(self)
            except Exception:
                log.exception("the last counts of rejected notifications could not be written")
        if "lookup_threads" in self.__dict__:
            self.lookup_threads.shutdown(wait=False, cancel_futures=True)
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
