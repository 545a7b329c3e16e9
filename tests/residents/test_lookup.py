from __future__ import annotations

from datetime import date

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.departments.models import DepartmentListing
from backend.residents.models import Death
from backend.runtime import Runtime
from tests.factories import OTHER_VILLAGE, TOWN, VILLAGE, add_regions, add_resident


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
    return {"zhang": zhang, "wang": wang_id, "li": li, "dead": dead}


def _resident_token(client: TestClient, openid: str = "demo") -> dict[str, str]:
    r = client.post("/api/v1/auth/wechat", json={"code": f"sandbox:{openid}"})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _staff_token(client: TestClient, user: str, password: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/staff", json={"username": user, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def lookup(client: TestClient, headers: dict[str, str], name: str, number: str,
           year: int = 2021):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/residents/lookup", headers=headers,
                       json={"name": name, "id_number": number, "year": year})


def test_lookup_answers_items_for_2021(client: TestClient, people: dict[str, str]) -> None:
    r = lookup(client, _resident_token(client), "张三", people["zhang"])
    assert r.status_code == 200, r.text
    body = r.json()
    res = body["resident"]
    assert res["name"] == "张*"
    assert res["id_number_masked"] == people["zhang"][:6] + "********" + people["zhang"][-4:]
    assert res["age"] == 52 and res["village_code"] == VILLAGE and res["deceased"] is False
    assert body["year"] == 2021 and body["late"] is False
    pension, medical = body["items"]
    assert pension["insurance"] == "pension" and pension["status"] == "unpaid"
    assert pension["default_tier_yuan"] == 300
    assert [t["tier_yuan"] for t in pension["tiers"]] == [
        300, 500, 600, 800, 1000, 1500, 2000, 2500, 3000, 4000, 5000]
    assert pension["tiers"][0] == {"tier_yuan": 300, "amount_due_fen": 30000,
                                   "government_pays_fen": 0, "subsidy_fen": 3000}
    assert medical == {**medical, "insurance": "medical", "status": "unpaid", "eligible": True,
                       "amount_due_fen": 28000, "government_pays_fen": 0,
                       "paying_department": None, "benefit_start": "2021-01-01"}
    # nothing personal beyond the masks
    assert people["zhang"] not in r.text and "张三" not in r.text


def test_lookup_department_pays_and_half_and_deceased(client: TestClient,
                                                       people: dict[str, str]) -> None:
    h = _resident_token(client)
    wang = lookup(client, h, "王芳", people["wang"]).json()
    medical = wang["items"][1]
    assert medical["status"] == "government_paid"
    assert medical["paying_department"] == "civil_affairs"
    assert medical["amount_due_fen"] == 0 and medical["government_pays_fen"] == 28000
    assert wang["items"][0]["tiers"][0]["tier_yuan"] == 100  # dibao may choose tier 100

    li = lookup(client, h, "李四", people["li"]).json()
    assert li["items"][0]["status"] == "not_eligible" and li["items"][0]["reason"] == "over_59"
    assert li["items"][1]["amount_due_fen"] == 14000
    assert li["items"][1]["paying_department"] == "finance"

    dead = lookup(client, h, "刘五", people["dead"]).json()
    assert dead["resident"]["deceased"] is True
    assert {i["status"] for i in dead["items"]} == {"not_eligible"}


def test_name_or_id_mismatch_is_the_same_not_found(client: TestClient,
                                                    people: dict[str, str]) -> None:
    h = _resident_token(client)
    wrong_name = lookup(client, h, "张四", people["zhang"])
    wrong_id = lookup(client, h, "张三", people["wang"])
    from backend.residents.idnumber import make_id_number
    unknown = lookup(client, h, "张三", make_id_number("370406", date(1969, 3, 15), 999))
    assert wrong_name.status_code == wrong_id.status_code == unknown.status_code == 404
    assert wrong_name.json() == wrong_id.json() == unknown.json()
    assert wrong_name.json()["error"]["code"] == "not_found"


def test_bad_checksum_is_invalid_id_number(client: TestClient, people: dict[str, str]) -> None:
    number = people["zhang"]
    bad = number[:17] + ("0" if number[17] != "0" else "1")
    r = lookup(client, _resident_token(client), "张三", bad)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_id_number" and "checksum" in err["message"]
    assert bad not in r.text


def test_validation_error_names_the_field(client: TestClient, people: dict[str, str]) -> None:
    r = client.post("/api/v1/residents/lookup", headers=_resident_token(client),
                    json={"name": "张三", "id_number": people["zhang"]})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"
    assert "year" in r.json()["error"]["message"]


def test_unknown_year_is_a_clear_error(client: TestClient, people: dict[str, str]) -> None:
    r = lookup(client, _resident_token(client), "张三", people["zhang"], year=2030)
    assert r.status_code == 422 and "2030" in r.json()["error"]["message"]


def test_misses_are_rate_limited_per_caller(client: TestClient, people: dict[str, str],
                                            rt: Runtime) -> None:
    h = _resident_token(client, "fisher")
    for _ in range(rt.settings.lookup_miss_limit):
        assert lookup(client, h, "某某", people["zhang"]).status_code == 404
    r = lookup(client, h, "张三", people["zhang"])  # even a right guess is refused now
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"


def test_misses_are_rate_limited_per_ip(client: TestClient, people: dict[str, str],
                                        rt: Runtime) -> None:
    # a fresh caller per attempt: only the per-IP counter can stop this
    rt.settings.lookup_ip_miss_limit = 15
    for i in range(rt.settings.lookup_ip_miss_limit):
        assert lookup(client, _resident_token(client, f"x{i}"), "某某",
                      people["zhang"]).status_code == 404
    r = lookup(client, _resident_token(client, "fresh"), "张三", people["zhang"])
    assert r.status_code == 429


def test_staff_scope(client: TestClient, people: dict[str, str]) -> None:
    agent = _staff_token(client, "agent1", "agent-pass")
    assert lookup(client, agent, "张三", people["zhang"]).status_code == 200
    assert lookup(client, agent, "李四", people["li"]).status_code == 404  # other town
    town = _staff_token(client, "town1", "town-pass1")
    assert lookup(client, town, "王芳", people["wang"]).status_code == 200
    assert lookup(client, town, "李四", people["li"]).status_code == 404


def test_ref_is_bound_to_the_caller(client: TestClient, people: dict[str, str],
                                    rt: Runtime) -> None:
    from backend.errors import NotFound
    from backend.security.tokens import RefCodec

    a = lookup(client, _resident_token(client, "alice"), "张三", people["zhang"]).json()
    again = lookup(client, _resident_token(client, "alice"), "张三", people["zhang"]).json()
    b = lookup(client, _resident_token(client, "bob"), "张三", people["zhang"]).json()
    assert a["resident"]["ref"] == again["resident"]["ref"] != b["resident"]["ref"]
    codec = RefCodec(rt.pii.ref_key)
    rid = codec.read(a["resident"]["ref"], "wx:alice")
    assert isinstance(rid, int)
    with pytest.raises(NotFound):
        codec.read(a["resident"]["ref"], "wx:bob")
    assert people["zhang"] not in a["resident"]["ref"]
