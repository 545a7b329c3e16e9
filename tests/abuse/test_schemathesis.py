"""Every operation of the published contract, fuzzed in-process with Schemathesis.

The document is the committed miniprogram_contracts/openapi.json (what the mini-program and
the desk are built against; tests/contracts keeps it equal to ``create_app().openapi()``);
the app under test is a sandbox one with a seeded village, an admin, a finance user, an
agent and a resident. Each operation gets schema-valid and schema-violating requests, each
with one of the tokens (or none), and every answer must be no 5xx, a status the operation
documents, a documented content type, and a body that matches the documented schema —
error answers included.

Bounded: ``MAX_EXAMPLES`` per operation and generation mode, derandomized, no shrinking,
no example database. ``SCHEMATHESIS_EXAMPLES=200`` runs a larger sweep by hand.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import Phase, given
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.runtime import Runtime
from miniprogram_contracts.generate import HERE
from tests.factories import VILLAGE
from tests.orders.helpers import seed

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "8"))


def no_unexpected_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx only where the operation documents it: a channel that cannot be reached (502,
    504: the sandbox's simulator is not served here), /readyz's 503, the declaration's
    deliberate 500 — never an exception of ours (``internal_error``)."""
    if response.status_code < 500:
        return None
    documented = case.operation.definition.raw.get("responses", {})
    code = ""
    if "json" in (response.headers.get("content-type") or [""])[0]:
        code = (response.json().get("error") or {}).get("code", "")
    if str(response.status_code) not in documented or code == "internal_error":
        raise AssertionError(f"server error {response.status_code} {response.text[:300]}")
    return None


CHECKS = [no_unexpected_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
ROLES = ("admin", "finance", "agent", "resident", "anonymous")


def _tokens(app: Any, rt: Runtime) -> dict[str, dict[str, str]]:
    from fastapi.testclient import TestClient

    seed(rt)
    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="admin1", password="admin-pass", role="admin")
        create_staff_user(s, username="fin1", password="finance-pass", role="finance")
    logins = {"admin": ("admin1", "admin-pass"), "finance": ("fin1", "finance-pass"),
              "agent": ("agent1", "agent-pass")}
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    with TestClient(app) as c:
        for role, (user, password) in logins.items():
            r = c.post("/api/v1/auth/staff", json={"username": user, "password": password})
            assert r.status_code == 200, r.text
            headers[role] = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = c.post("/api/v1/auth/wechat", json={"code": "sandbox:fuzz"})
        assert r.status_code == 200, r.text
        headers["resident"] = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert VILLAGE
    return headers


@pytest.fixture
def fuzzed(rt: Runtime) -> Iterator[tuple[Any, dict[str, dict[str, str]]]]:
    from backend.app import create_app

    app = create_app(runtime=rt)
    yield app, _tokens(app, rt)


def _failure_key(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' | '.join(lines)[:400]}"


def _fuzz(operation: Any, mode: GenerationMode, examples: int, client: Any,
          tokens: dict[str, dict[str, str]]) -> tuple[int, list[str]]:
    """(requests sent, failures found) for one operation in one generation mode."""
    sent, found = 0, []

    @hypothesis.settings(max_examples=examples, derandomize=True, database=None,
                         deadline=None, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), role=st.sampled_from(ROLES))
    def run(case: Any, role: str) -> None:
        nonlocal sent
        sent += 1
        try:
            case.call_and_validate(session=client, headers=tokens[role], checks=CHECKS)
        except BaseExceptionGroup as group:     # schemathesis' FailureGroup
            found.extend(f"[{role}] {_failure_key(e)} <- {case.as_curl_command()}"
                         for e in group.exceptions)
        except Exception as exc:
            found.append(f"[{role}] {_failure_key(exc)} <- {case.as_curl_command()}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # nothing to break: no parameters and no body (the notify routes, /healthz)
        assert mode == GenerationMode.NEGATIVE, operation.label
    return sent, sorted(set(found))


def test_every_operation_answers_as_documented(
        fuzzed: tuple[Any, dict[str, dict[str, str]]], backend_name: str) -> None:
    app, tokens = fuzzed
    # PostgreSQL: a lighter pass over the same operations (its own types, its own errors)
    examples = MAX_EXAMPLES if backend_name == "sqlite" else max(1, MAX_EXAMPLES // 3)
    schema = schemathesis.openapi.from_dict(json.loads((HERE / "openapi.json").read_text()))
    schema.app = app
    operations = [result.ok() for result in schema.get_all_operations()]
    requests = 0
    failures: dict[str, list[str]] = {}
    started = time.monotonic()
    # one client (one lifespan) for the run: schemathesis would otherwise start the app's
    # lifespan for every request
    with asgi.get_client(app) as client:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                sent, found = _fuzz(operation, mode, examples, client, tokens)
                requests += sent
                if found:
                    failures[f"{operation.label} ({mode})"] = found
    took = time.monotonic() - started
    print(f"\nschemathesis ({backend_name}): {len(operations)} operations, {requests} requests, "
          f"{len(failures)} operation/mode pairs failing, {took:.1f} s")
    assert len(operations) >= 52
    assert not failures, "\n".join(f"{k}:\n  " + "\n  ".join(v) for k, v in failures.items())
