"""Reviewer's reproductions of defects found in issue 9's change."""

from __future__ import annotations

from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.runtime import Runtime
from tests.factories import add_regions


def test_login_csrf_without_the_login_cookie_is_refused(client: TestClient,
                                                         rt: Runtime) -> None:
    """A cross-site login form (no desk_login cookie: SameSite=Strict) must not log the
    victim's browser into the attacker's account by sending csrf='-'."""
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    client.cookies.clear()
    r = client.post("/desk/login", data={"username": "fin", "password": "finance-pass",
                                         "csrf": "-"}, follow_redirects=False)
    assert r.status_code == 403, (r.status_code, r.headers.get("set-cookie"))
    assert "desk_session" not in r.headers.get("set-cookie", "")
