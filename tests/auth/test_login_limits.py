"""Failed logins: limited per (account, address) and per address; an account only slows."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user
from backend.config import Settings
from backend.db import unit_of_work
from backend.runtime import Runtime

RIGHT = {"username": "fin", "password": "finance-pass"}
WRONG = {"username": "fin", "password": "not-the-password"}
SLOWDOWN_CAP_S = 0.2


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"login_slowdown_max_s": SLOWDOWN_CAP_S})


@pytest.fixture
def address(rt: Runtime) -> Iterator[dict[str, TestClient]]:
    """One app, reached from three addresses."""
    from backend.app import create_app

    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    app = create_app(runtime=rt)
    yield {name: TestClient(app, client=(ip, 40000)) for name, ip in
           (("A", "10.0.0.1"), ("B", "10.0.0.2"), ("C", "10.0.0.3"))}


def _login(client: TestClient, body: dict[str, str]) -> int:
    return client.post("/api/v1/auth/staff", json=body).status_code


def test_failures_from_one_address_do_not_lock_the_owner_out(
        rt: Runtime, address: dict[str, TestClient]) -> None:
    limit = rt.settings.login_failure_limit
    for _ in range(limit):
        assert _login(address["A"], WRONG) == 401
    started = time.monotonic()
    assert _login(address["B"], RIGHT) == 200          # the owner, elsewhere: slowed only
    assert time.monotonic() - started >= SLOWDOWN_CAP_S
    r = address["A"].post("/api/v1/auth/staff", json=RIGHT)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"


def test_one_address_trying_many_accounts_is_limited(
        rt: Runtime, address: dict[str, TestClient]) -> None:
    for n in range(4 * rt.settings.login_failure_limit):
        assert _login(address["C"], {"username": f"guess{n}", "password": "password1"}) == 401
    assert _login(address["C"], RIGHT) == 429
    assert _login(address["B"], RIGHT) == 200


@pytest.mark.parametrize("failures,delay", [(0, 0.0), (1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0),
                                            (5, 3.0), (50, 3.0), (10**6, 3.0)])
def test_the_slowdown_grows_with_the_account_failures_and_is_capped(failures: int,
                                                                   delay: float) -> None:
    from backend.auth.service import slowdown_s

    assert slowdown_s(failures, cap_s=3.0) == delay


def test_concurrent_failures_from_one_address_stop_at_the_limit(rt: Runtime) -> None:
    """Wrong passwords for one account from one address, all at once (released together by
    a barrier): each failure is reserved before the password is checked, so exactly the
    limit of them are answered 401 and the rest 429 (checking the counts first and counting
    after the password let every attempt past the check through)."""
    import threading

    from backend.auth.service import login_staff
    from backend.errors import AppError

    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    limit = rt.settings.login_failure_limit
    threads_n = 8
    assert threads_n > limit
    barrier = threading.Barrier(threads_n)
    answers: list[str] = []

    def attempt() -> None:
        barrier.wait(timeout=30)
        try:
            with unit_of_work(rt.sessions) as session:
                login_staff(rt, session, "fin", "not-the-password", "10.0.0.7")
            answers.append("ok")
        except AppError as exc:
            answers.append(exc.code)

    threads = [threading.Thread(target=attempt) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(answers) == sorted(["unauthorized"] * limit
                                     + ["rate_limited"] * (threads_n - limit))
    assert rt.limiter.counts(["login:pair:10.0.0.7:fin", "login:ip:10.0.0.7",
                              "login:user:fin"]) == [limit, limit, limit]


def test_a_success_gives_its_reservation_back(rt: Runtime,
                                              address: dict[str, TestClient]) -> None:
    assert _login(address["A"], WRONG) == 401
    assert _login(address["A"], RIGHT) == 200
    # the pair cleared as before; the address's and the account's failures are the one
    assert rt.limiter.counts(["login:pair:10.0.0.1:fin", "login:ip:10.0.0.1",
                              "login:user:fin"]) == [0, 1, 1]


def test_an_ipv6_address_is_limited_by_its_64(rt: Runtime) -> None:
    """Failures from one address of a /64 lock the account for the whole /64 (its holder
    may rotate through it), not for another /64; an IPv4-mapped address is its IPv4."""
    from backend.app import create_app

    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    app = create_app(runtime=rt)

    def at(ip: str) -> TestClient:
        return TestClient(app, client=(ip, 40000))

    for n in range(rt.settings.login_failure_limit):
        assert _login(at(f"2001:db8:7:8::{n + 1}"), WRONG) == 401
    assert _login(at("2001:db8:7:8:aaaa:bbbb:cccc:dddd"), RIGHT) == 429
    assert _login(at("2001:db8:7:9::1"), RIGHT) == 200
    for _ in range(rt.settings.login_failure_limit):
        assert _login(at("::ffff:10.0.0.5"), WRONG) == 401
    assert _login(at("10.0.0.5"), RIGHT) == 429
    assert rt.limiter.counts(["login:pair:2001:db8:7:8::/64:fin",
                              "login:pair:10.0.0.5:fin"]) == [5, 5]

