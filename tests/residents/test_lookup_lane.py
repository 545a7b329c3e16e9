"""The lookup lane (``residents.endpoints.LookupLane``: ``POST /api/v1/residents/lookup``
answered ahead of FastAPI's routing) answers exactly what the route answers — status,
headers and bytes — for hits, misses and every error, on SQLite and PostgreSQL, with the
app's lifespan and without it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.auth.service import create_staff_user, set_staff_active
from backend.db import unit_of_work
from backend.departments.models import DepartmentListing
from backend.residents.endpoints import LookupLane
from backend.residents.models import Death
from backend.runtime import Runtime
from backend.security.tokens import Principal, issue_token
from tests.contract_check import check_response
from tests.factories import OTHER_VILLAGE, TOWN, VILLAGE, add_regions, add_resident

PATH = "/api/v1/residents/lookup"


@pytest.fixture
def people(rt: Runtime) -> dict[str, str]:
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        _, zhang = add_resident(s, rt.pii, "张三", date(1969, 3, 15), seq=11,
                                last_pension_tier_yuan=300)
        wang, wang_id = add_resident(s, rt.pii, "王芳", date(1980, 5, 20), seq=22,
                                     categories="dibao")
        s.add(DepartmentListing(department="civil_affairs", resident_id=wang.id,
                                insurance="medical", year=2021))
        _, li = add_resident(s, rt.pii, "李四", date(1956, 7, 1), seq=33,
                             village=OTHER_VILLAGE)
        _, dead = add_resident(s, rt.pii, "刘五", date(1950, 1, 1), seq=44)
        s.add(Death(id_hash=rt.pii.hash(dead), id_masked="x", name="刘五",
                    died_on=date(2020, 5, 1)))
        create_staff_user(s, username="agent1", password="agent-pass", role="agent",
                          village_code=VILLAGE)
        create_staff_user(s, username="town1", password="town-pass1", role="town_staff",
                          town_code=TOWN)
        create_staff_user(s, username="gone1", password="gone-pass1", role="agent",
                          village_code=VILLAGE)
    return {"zhang": zhang, "wang": wang_id, "li": li, "dead": dead}


def _without_lane(app: FastAPI) -> FastAPI:
    # before its first request, when Starlette builds the middleware stack
    app.user_middleware = [m for m in app.user_middleware if m.cls is not LookupLane]
    return app


@pytest.fixture
def variants(rt: Runtime) -> Iterator[dict[str, TestClient]]:
    """The same runtime served three ways: the lane and the route alone (FastAPI), each with
    the app's lifespan as ``serve`` runs it, and the lane without the lifespan. Each answer
    is checked against the OpenAPI contract too."""
    lane = TestClient(create_app(runtime=rt))
    route = TestClient(_without_lane(create_app(runtime=rt)))
    threads = TestClient(create_app(runtime=rt))
    for c in (lane, route, threads):
        c.event_hooks["response"].append(check_response)
    with lane, route:     # (their lifespans close the runtime at the end)
        yield {"lane": lane, "route": route, "lane, no lifespan": threads}


def _resident(rt: Runtime, sub: str) -> dict[str, str]:
    token = issue_token(rt.app_secret, Principal(sub=f"wx:{sub}", role="resident"), 600)
    return {"Authorization": f"Bearer {token}"}


def _staff(client: TestClient, user: str, password: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/staff", json={"username": user, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _body(name: str, number: str, year: int = 2021) -> dict[str, Any]:
    return {"name": name, "id_number": number, "year": year}


def _same(variants: dict[str, TestClient], headers: dict[str, str], *,
          json_body: Any = None, content: bytes | None = None) -> tuple[int, Any]:
    """Sends one request to each variant; they must answer alike. The status and body."""
    answers = {}
    for name, client in variants.items():
        if content is not None:
            r = client.post(PATH, headers=headers, content=content)
        else:
            r = client.post(PATH, headers=headers, json=json_body)
        # (every answer carries its own request id)
        answers[name] = (r.status_code, [(k, v) for k, v in r.headers.multi_items()
                                         if k != "x-request-id"], r.content)
    first = answers["lane"]
    for name, answer in answers.items():
        assert answer == first, f"{name} answered otherwise than the lane"
    return first[0], json.loads(first[2]) if first[2] else None


def test_hits_answer_alike(rt: Runtime, people: dict[str, str],
                           variants: dict[str, TestClient]) -> None:
    h = _resident(rt, "hits")
    for name, key in (("张三", "zhang"), ("王芳", "wang"), ("刘五", "dead"), ("李四", "li")):
        status, body = _same(variants, h, json_body=_body(name, people[key]))
        assert status == 200 and body["resident"]["name"].startswith(name[0])
    # full-width and spacing variants of the name
    status, _ = _same(variants, h, json_body=_body(" 张 三 ", people["zhang"]))
    assert status == 200
    # parameters of the JSON content type, and a year given as a string: FastAPI's reading
    status, _ = _same(variants, {**h, "Content-Type": "application/json; charset=utf-8"},
                      content=json.dumps(_body("张三", people["zhang"], "2021")).encode())
    assert status == 200
    assert rt.limiter.counts(["lookup:caller:wx:hits"]) == [0]      # hits are not counted


def test_misses_answer_alike_and_count_on_every_path(rt: Runtime, people: dict[str, str],
                                                     variants: dict[str, TestClient]) -> None:
    cases = {"wrong-name": _body("某某", people["zhang"]),
             "unknown": _body("张三", "11010519491231002X")}
    for sub, body in cases.items():
        status, answer = _same(variants, _resident(rt, sub), json_body=body)
        assert (status, answer["error"]["code"]) == (404, "not_found")
        # one miss per variant, on both counters
        assert rt.limiter.counts([f"lookup:caller:wx:{sub}"]) == [len(variants)]
    assert rt.limiter.counts(["lookup:ip:testclient"]) == [len(cases) * len(variants)]


@pytest.mark.parametrize("case", ["no-year", "year-range", "empty-name", "not-an-object",
                                  "not-json", "empty", "text-plain", "no-content-type",
                                  "bad-checksum", "unknown-year"])
def test_bad_bodies_answer_alike(rt: Runtime, people: dict[str, str],
                                 variants: dict[str, TestClient], case: str) -> None:
    h = _resident(rt, "bodies")
    good = json.dumps(_body("张三", people["zhang"])).encode()
    requests: dict[str, tuple[dict[str, str], bytes]] = {
        "no-year": ({}, json.dumps({"name": "张三", "id_number": people["zhang"]}).encode()),
        "year-range": ({}, json.dumps(_body("张三", people["zhang"], 1999)).encode()),
        "empty-name": ({}, json.dumps(_body("", people["zhang"])).encode()),
        "not-an-object": ({}, b'["a", 1]'),
        "not-json": ({}, b'{"name": "x",'),
        "empty": ({}, b""),
        "text-plain": ({"Content-Type": "text/plain"}, good),
        "no-content-type": ({"Content-Type": ""}, good),
        "bad-checksum": ({}, json.dumps(_body("张三", people["zhang"][:-1] + (
            "0" if people["zhang"][-1] != "0" else "1"))).encode()),
        "unknown-year": ({}, json.dumps(_body("张三", people["zhang"], 2030)).encode()),
    }
    extra, content = requests[case]
    headers = {**h, "Content-Type": "application/json", **extra}
    if headers["Content-Type"] == "":
        del headers["Content-Type"]
    status, answer = _same(variants, headers, content=content)
    assert 400 <= status < 500 and answer["error"]["code"] in (
        "validation_error", "invalid_id_number")


@pytest.mark.parametrize("case", ["none", "basic", "bearer-empty", "not-a-token",
                                  "other-secret", "expired"])
def test_bad_tokens_answer_alike(rt: Runtime, people: dict[str, str],
                                 variants: dict[str, TestClient], case: str) -> None:
    who = Principal(sub="wx:t", role="resident")
    headers = {"none": {},
               "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
               "bearer-empty": {"Authorization": "Bearer "},
               "not-a-token": {"Authorization": "Bearer abc.def.ghi"},
               "other-secret": {"Authorization": "Bearer " + issue_token("x" * 40, who, 600)},
               "expired": {"Authorization": "Bearer " + issue_token(rt.app_secret, who, -5)},
               }[case]
    status, answer = _same(variants, headers, json_body=_body("张三", people["zhang"]))
    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    # an invalid body with no token: the route's order (the token first) is kept
    status, answer = _same(variants, headers, json_body={"name": "张三"})
    assert status == 401


def test_over_the_limits_answers_alike(rt: Runtime, people: dict[str, str],
                                       variants: dict[str, TestClient]) -> None:
    for _ in range(rt.settings.lookup_miss_limit):
        rt.limiter.hit("lookup:caller:wx:limited", rt.settings.lookup_miss_window_s)
    status, answer = _same(variants, _resident(rt, "limited"),
                           json_body=_body("张三", people["zhang"]))
    assert (status, answer["error"]["code"]) == (429, "rate_limited")
    for _ in range(rt.settings.lookup_ip_miss_limit):
        rt.limiter.hit("lookup:ip:testclient", rt.settings.lookup_miss_window_s)
    status, _ = _same(variants, _resident(rt, "fresh"), json_body=_body("张三", people["zhang"]))
    assert status == 429


def test_staff_scope_answers_alike(rt: Runtime, people: dict[str, str],
                                   variants: dict[str, TestClient]) -> None:
    login = variants["lane"]
    agent, town = _staff(login, "agent1", "agent-pass"), _staff(login, "town1", "town-pass1")
    cases: list[tuple[dict[str, str], str, str, int]] = [
        (agent, "张三", "zhang", 200), (agent, "李四", "li", 404),
        (town, "王芳", "wang", 200), (town, "李四", "li", 404)]
    for headers, name, key, want in cases:
        status, _ = _same(variants, headers, json_body=_body(name, people[key]))
        assert status == want
    gone = _staff(login, "gone1", "gone-pass1")
    assert _same(variants, gone, json_body=_body("张三", people["zhang"]))[0] == 200
    set_staff_active(rt, "gone1", False)
    status, answer = _same(variants, gone, json_body=_body("张三", people["zhang"]))
    assert (status, answer["error"]["code"]) == (401, "unauthorized")


def test_other_methods_and_paths_pass_through(rt: Runtime, people: dict[str, str],
                                              variants: dict[str, TestClient]) -> None:
    send: dict[str, Callable[[TestClient], Any]] = {
        "get": lambda c: c.get(PATH, headers=_resident(rt, "m")),
        "slash": lambda c: c.post(PATH + "/", headers=_resident(rt, "m"),
                                  json=_body("张三", people["zhang"]), follow_redirects=False),
    }
    for do in send.values():
        a, b = do(variants["lane"]), do(variants["route"])
        assert (a.status_code, a.content) == (b.status_code, b.content)


def test_the_body_limit_still_counts_the_lanes_bytes(rt: Runtime, people: dict[str, str],
                                                     variants: dict[str, TestClient]) -> None:
    """A body over the limit, declared or streamed (chunked: counted as it comes), is
    refused with the same 413 whichever answers the path."""
    from backend.app import MAX_BODY_BYTES

    h = {**_resident(rt, "big"), "Content-Type": "application/json"}
    answers = []
    for client in variants.values():
        declared = client.post(PATH, headers=h, content=b" " * (MAX_BODY_BYTES + 1))
        streamed = client.post(PATH, headers=h, content=iter(
            [b'{"name": "' + b"x" * MAX_BODY_BYTES, b'"}']))
        answers.append([(r.status_code, r.content) for r in (declared, streamed)])
    assert answers[0][0][0] == answers[0][1][0] == 413
    assert all(a == answers[0] for a in answers)
