"""What the contract fuzzing found, kept as plain tests: a body the framework cannot parse
and ids beyond the database's integers are refused as documented (422), never 400 or 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user
from backend.db import unit_of_work


@pytest.fixture
def admin(client: TestClient) -> dict[str, str]:
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="admin1", password="admin-pass", role="admin")
    r = client.post("/api/v1/auth/staff", json={"username": "admin1", "password": "admin-pass"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_a_json_body_that_is_not_utf8_is_a_422(client: TestClient) -> None:
    r = client.post("/api/v1/auth/staff", content=b"\xff\xfe{", headers={
        "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {"code": "validation_error", "fields": ["body"],
                                 "message": "body: not valid JSON (not UTF-8)"}


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_a_broken_multipart_body_is_a_422(client: TestClient, admin: dict[str, str]) -> None:
    r = client.post("/api/v1/reconciliation/pos/statements", content=b"--b\r\n[]--b--\r\n",
                    headers={**admin, "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("path", ["/api/v1/reconciliation/runs/15377258476586265477120",
                                  "/api/v1/reconciliation/runs/2147483648",
                                  "/api/v1/refunds/2147483648",
                                  "/api/v1/reconciliation/discrepancies?after_id=2147483648",
                                  "/api/v1/reconciliation/discrepancies?run_id=9223372036854775808",
                                  "/api/v1/audit?from=2020-01-01&to=2020-01-02&after_id=2147483648"])
def test_an_id_beyond_the_columns_range_is_a_422(client: TestClient, admin: dict[str, str],
                                                  path: str) -> None:
    r = client.get(path, headers=admin)
    assert r.status_code == 422, r.text
