"""The lookup's miss limits hold under concurrency and count an IPv6 client by its /64.

A miss is reserved on both counters before the lookup reads anything
(``RateLimiter.reserve``) and given back on a hit, so callers racing past the limit can not
all be answered ``not_found``: the reviewer's scenario, threads released together by a
barrier against one caller, got 16 misses answered under a limit of 10 when the counters
were read first and incremented after the miss.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import date

import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.db import unit_of_work
from backend.errors import AppError
from backend.residents.idnumber import make_id_number
from backend.residents.service import lookup_json
from backend.runtime import Runtime
from backend.security.tokens import Principal, issue_token
from tests.factories import add_regions, add_resident

THREADS = 16
ROUNDS = 3
IP_LIMIT = 6


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"lookup_ip_miss_limit": IP_LIMIT})


@pytest.fixture
def zhang(rt: Runtime) -> str:
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        _, number = add_resident(s, rt.pii, "张三", date(1969, 3, 15), seq=11,
                                 last_pension_tier_yuan=300)
    return number


NOBODY = make_id_number("370406", date(1969, 3, 15), 99)


def _race(jobs: list[Callable[[], object]]) -> Counter[str]:
    """Runs the jobs in threads, ``len(jobs)`` at a time released together by a barrier,
    ROUNDS times; what they answered: "ok" or an error's code."""
    answers: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], object]) -> None:
        for _ in range(ROUNDS):
            barrier.wait(timeout=30)
            try:
                job()
                answer = "ok"
            except AppError as exc:
                answer = exc.code
            with lock:
                answers[answer] += 1

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return answers


def _lookup(rt: Runtime, sub: str, ip: str, name: str, number: str) -> Callable[[], object]:
    principal = Principal(sub=sub, role="resident")
    return lambda: lookup_json(rt, principal, ip, name=name, id_number=number, year=2021)


def test_concurrent_misses_of_one_caller_stop_at_the_limit(rt: Runtime, zhang: str) -> None:
    limit = rt.settings.lookup_miss_limit
    assert THREADS * ROUNDS > limit + THREADS      # enough to race past the limit
    # a miss and a wrong name, from addresses of their own: the caller's limit is the one
    jobs = [_lookup(rt, "wx:racer", f"10.1.{n}.1", "某某", NOBODY if n % 2 else zhang)
            for n in range(THREADS)]
    answers = _race(jobs)
    assert answers == {"not_found": limit, "rate_limited": THREADS * ROUNDS - limit}
    assert rt.limiter.counts(["lookup:caller:wx:racer"]) == [limit]


def test_concurrent_hits_are_given_back_and_misses_stay_under_the_limit(
        rt: Runtime, zhang: str) -> None:
    """Hits and misses of one caller at once (a quarter misses): a hit's reservation is
    given back, so the count is the misses answered, never more than the limit."""
    limit = rt.settings.lookup_miss_limit
    jobs = [_lookup(rt, "wx:mixed", "10.2.0.1", "张三", NOBODY if n % 4 == 0 else zhang)
            for n in range(THREADS)]
    answers = _race(jobs)
    assert sum(answers.values()) == THREADS * ROUNDS
    assert answers["not_found"] <= limit
    # the first round: at least `limit` reservations, at most a quarter of them misses
    assert answers["ok"] >= limit - THREADS // 4
    assert rt.limiter.counts(["lookup:caller:wx:mixed"]) == [answers["not_found"]]


def test_concurrent_misses_from_one_ipv6_prefix_stop_at_the_address_limit(
        rt: Runtime, zhang: str) -> None:
    """Many callers, each from its own address of one /64: the prefix's limit holds."""
    jobs = [_lookup(rt, f"wx:rotating-{n}", f"2001:db8:5:7::{n + 1:x}", "某某", NOBODY)
            for n in range(THREADS)]
    answers = _race(jobs)
    assert answers == {"not_found": IP_LIMIT, "rate_limited": THREADS * ROUNDS - IP_LIMIT}
    assert rt.limiter.counts(["lookup:ip:2001:db8:5:7::/64"]) == [IP_LIMIT]


def test_two_addresses_of_one_ipv6_prefix_share_the_address_limit(
        rt: Runtime, zhang: str) -> None:
    """Through the app (its lane): an IPv6 client rotating its address within its /64 is
    still one address to the limit; another /64, and an IPv4 client, are not."""
    from backend.app import create_app

    app = create_app(runtime=rt)     # (no lifespan: it would close the test's runtime)

    def lookup(ip: str, sub: str) -> int:
        token = issue_token(rt.app_secret, Principal(sub=sub, role="resident"), 600)
        return TestClient(app, client=(ip, 40000)).post(
            "/api/v1/residents/lookup", headers={"Authorization": f"Bearer {token}"},
            json={"name": "某某", "id_number": NOBODY, "year": 2021}).status_code

    for n in range(IP_LIMIT):                      # fresh callers, alternating addresses
        ip = "2001:db8:1:2::1" if n % 2 else "2001:db8:1:2:ffff:0:0:9"
        assert lookup(ip, f"wx:v6-{n}") == 404
    assert lookup("2001:db8:1:2::abcd", "wx:v6-next") == 429      # the /64 is over
    assert lookup("2001:db8:1:3::1", "wx:v6-next") == 404         # another /64 is not
    assert lookup("10.9.9.9", "wx:v4") == 404
    assert rt.limiter.counts(["lookup:ip:2001:db8:1:2::/64", "lookup:ip:2001:db8:1:3::/64",
                              "lookup:ip:10.9.9.9"]) == [IP_LIMIT, 1, 1]
