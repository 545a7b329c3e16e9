"""A deactivated staff member's tokens stop working at once, and stay dead."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user, set_staff_active
from backend.db import unit_of_work
from backend.errors import NotFound
from backend.runtime import Runtime


@pytest.fixture
def fin(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")


def _login(client: TestClient) -> tuple[int, dict[str, str]]:
    r = client.post("/api/v1/auth/staff", json={"username": "fin", "password": "finance-pass"})
    token = r.json().get("access_token", "") if r.status_code == 200 else ""
    return r.status_code, {"Authorization": f"Bearer {token}"}


def _asks(client: TestClient, headers: dict[str, str]) -> int:
    """A staff request: 404 (no such order) once the token is accepted, else 401."""
    return client.get("/api/v1/orders/NO-SUCH-ORDER", headers=headers).status_code


def test_deactivation_revokes_the_tokens_already_issued(client: TestClient, rt: Runtime,
                                                        fin: None) -> None:
    status, old = _login(client)
    assert status == 200
    assert _asks(client, old) == 404                   # accepted, and its state now cached

    set_staff_active(rt, "fin", False)
    r = client.get("/api/v1/orders/NO-SUCH-ORDER", headers=old)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert _login(client)[0] == 401                    # nor can they log in again

    set_staff_active(rt, "fin", True)
    assert _asks(client, old) == 401                   # reactivation revives no old token
    status, new = _login(client)
    assert status == 200 and _asks(client, new) == 404


def test_users_deactivate_and_activate_commands(client: TestClient, rt: Runtime, fin: None,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from backend import __main__ as cli

    monkeypatch.setattr(cli, "_runtime", lambda: rt)
    status, old = _login(client)
    assert status == 200 and _asks(client, old) == 404
    assert cli.main(["users", "deactivate", "--username", "fin"]) == 0
    assert "deactivated fin" in capsys.readouterr().out
    assert _asks(client, old) == 401 and _login(client)[0] == 401
    assert cli.main(["users", "activate", "--username", "fin"]) == 0
    assert "activated fin" in capsys.readouterr().out
    assert _asks(client, old) == 401
    status, new = _login(client)
    assert status == 200 and _asks(client, new) == 404
    assert cli.main(["users", "deactivate", "--username", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err


def test_an_unknown_account_is_not_found(rt: Runtime) -> None:
    with pytest.raises(NotFound, match="ghost"):
        set_staff_active(rt, "ghost", False)
