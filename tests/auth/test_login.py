from __future__ import annotations

import io

import jwt
import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.errors import Conflict, ValidationFailed
from backend.runtime import Runtime
from tests.factories import TOWN, VILLAGE, add_regions


@pytest.fixture
def staff(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        create_staff_user(s, username="agent1", password="correct horse", role="agent",
                          village_code=VILLAGE)
        create_staff_user(s, username="town1", password="correct horse", role="town_staff",
                          town_code=TOWN)


def test_wechat_sandbox_login_gives_a_resident_token(client: TestClient, rt: Runtime) -> None:
    r = client.post("/api/v1/auth/wechat", json={"code": "sandbox:demo"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["openid"] == "demo"
    claims = jwt.decode(body["access_token"], rt.app_secret, algorithms=["HS256"],
                        options={"verify_iss": False})
    assert claims["sub"] == "wx:demo" and claims["role"] == "resident"


@pytest.mark.parametrize("code", ["demo", "sandbox:", "sandbox:bad id!", ""])
def test_wechat_bad_code_is_refused(client: TestClient, code: str) -> None:
    r = client.post("/api/v1/auth/wechat", json={"code": code})
    assert r.status_code in (401, 422)
    assert r.json()["error"]["code"] in ("unauthorized", "validation_error")


def test_staff_login_and_role(client: TestClient, staff: None) -> None:
    r = client.post("/api/v1/auth/staff", json={"username": "agent1", "password": "correct horse"})
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "agent"


def test_wrong_password_and_unknown_user_look_the_same(client: TestClient, staff: None) -> None:
    a = client.post("/api/v1/auth/staff", json={"username": "agent1", "password": "nope-nope"})
    b = client.post("/api/v1/auth/staff", json={"username": "ghost", "password": "nope-nope"})
    assert a.status_code == b.status_code == 401
    assert a.json() == b.json()
    assert a.json()["error"]["code"] == "unauthorized"


def test_repeated_login_failures_are_rate_limited(client: TestClient, staff: None,
                                                  rt: Runtime) -> None:
    for _ in range(rt.settings.login_failure_limit):
        assert client.post("/api/v1/auth/staff",
                           json={"username": "town1", "password": "wrong-one"}).status_code == 401
    r = client.post("/api/v1/auth/staff", json={"username": "town1", "password": "correct horse"})
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"


def test_password_is_stored_hashed(rt: Runtime, staff: None) -> None:
    from sqlalchemy import select

    from backend.auth.models import StaffUser

    with unit_of_work(rt.sessions) as s:
        stored = s.scalar(select(StaffUser.password_hash).where(StaffUser.username == "agent1"))
    assert stored is not None and stored.startswith("$argon2") and "correct horse" not in stored


def test_create_user_rules(rt: Runtime, staff: None) -> None:
    with unit_of_work(rt.sessions) as s:
        with pytest.raises(ValidationFailed, match="village"):
            create_staff_user(s, username="a2", password="12345678", role="agent")
        with pytest.raises(ValidationFailed, match="role"):
            create_staff_user(s, username="a3", password="12345678", role="king")
        with pytest.raises(ValidationFailed, match="department"):
            create_staff_user(s, username="d1", password="12345678", role="department",
                              department="army")
        with pytest.raises(Conflict):
            create_staff_user(s, username="agent1", password="12345678", role="admin")


def test_missing_or_bad_token(client: TestClient) -> None:
    body = {"name": "张三", "id_number": "370406196903150011", "year": 2021}
    r = client.post("/api/v1/residents/lookup", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = client.post("/api/v1/residents/lookup", json=body,
                    headers={"Authorization": "Bearer not.a.token"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_users_create_command(rt: Runtime, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from backend import __main__ as cli
    from backend.config import get_settings

    with unit_of_work(rt.sessions) as s:
        add_regions(s)
    monkeypatch.setattr(cli, "_runtime", lambda: rt)
    get_settings.cache_clear()
    assert cli.main(["users", "create", "--username", "fin", "--password", "finance-pass",
                     "--role", "finance"]) == 0
    assert "created finance fin" in capsys.readouterr().out
    assert cli.main(["users", "create", "--username", "ag", "--password", "agent-pass",
                     "--role", "agent"]) == 2
    assert "village" in capsys.readouterr().err
    # the password from standard input: not in ps, not in the shell's history
    monkeypatch.setattr("sys.stdin", io.StringIO("audit-pass-1\n"))
    assert cli.main(["users", "create", "--username", "aud", "--password-stdin",
                     "--role", "auditor"]) == 0
    from argon2 import PasswordHasher
    from sqlalchemy import select

    from backend.auth.models import StaffUser

    with unit_of_work(rt.sessions) as s:
        stored = s.scalars(select(StaffUser.password_hash).where(
            StaffUser.username == "aud")).one()
        assert PasswordHasher().verify(stored, "audit-pass-1")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main(["users", "create", "--username", "aud2", "--password-stdin",
                     "--role", "auditor"]) == 2
    assert "no password" in capsys.readouterr().err
