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
