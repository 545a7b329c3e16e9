"""GET /api/v1/progress: exact counts and rates, scopes, and eligibility as the engine's."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from typing import Any

from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user, staff_principal
from backend.db import unit_of_work
from backend.orders.models import BillLine
from backend.policy import CATEGORIES, DEPARTMENTS, ResidentFacts, assess, load_policy
from backend.progress.repository import Group
from backend.progress.service import representative, targets_of
from backend.residents.models import Death, Town, Village
from backend.runtime import Runtime
from backend.security.tokens import Principal, issue_token
from tests.conftest import IN_WINDOW
from tests.factories import OTHER_TOWN, OTHER_VILLAGE, TOWN, VILLAGE, add_regions, add_resident

SOUTH, EMPTY = "370406100202", "370406101202"
PAID_AT = datetime(2020, 11, 1, 2, tzinfo=UTC)


def _seed(rt: Runtime) -> dict[str, dict[str, str]]:
    """Two towns; ages are 2021 − birth year. Returns bearer headers per role."""
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        s.add_all([Village(code=SOUTH, name="南村", town_code=TOWN),
                   Village(code=EMPTY, name="空村", town_code=OTHER_TOWN)])
        s.flush()
        seq = iter(range(1, 1000))
        paid: list[tuple[int, int, str]] = []

        def person(born: int, village: str = VILLAGE, pays: tuple[str, ...] = (),
                   year: int = 2021, died: date | None = None, **kw: Any) -> None:
            r, _ = add_resident(s, rt.pii, "张三", date(born, 5, 6), seq=next(seq),
                                village=village, **kw)
            assert r.id is not None
            paid.extend((r.id, year, i) for i in pays)
            if died:
                s.add(Death(id_hash=r.id_hash, id_masked=r.id_masked, name=r.name,
                            died_on=died))

        person(1970, pays=("pension", "medical"))                 # 51
        person(1965, pays=("medical",), categories="dibao")       # 56, pension unpaid
        person(1990, pays=("pension",))                           # 31, medical unpaid
        person(2000, student=True)                                # 21: no pension
        person(1950, pays=("medical",))                           # 71: no pension
        person(1980, pays=("pension",), employee_pension=True, employee_medical=True)
        person(1975, pays=("medical",), died=date(2020, 6, 1))    # dead before 2021
        person(1985, pays=("pension",), died=date(2021, 3, 1))    # dies during 2021: counts
        person(2015, pays=("medical",), year=2020)                # paid 2020, not 2021
        person(1960, village=SOUTH, pays=("medical",))            # 61
        person(1990, village=SOUTH, pays=("medical",))            # 31, pension unpaid
        person(1970, village=OTHER_VILLAGE, pays=("pension", "medical"))
        person(2022, village=OTHER_VILLAGE)                       # not born in 2021
        s.add_all([BillLine(resident_id=rid, year=y, insurance=i, status="paid",
                            paid_fen=1, paid_at=PAID_AT) for rid, y, i in paid])
        s.add(Town(code="370406199", name="空镇"))           # a town without villages
        headers = {}
        for role, kw in {"finance": {}, "auditor": {}, "town_staff": {"town_code": TOWN},
                         "agent": {"village_code": VILLAGE}}.items():
            user = create_staff_user(s, username=role, password="password-1", role=role, **kw)
            headers[role] = {"Authorization": "Bearer " + issue_token(
                rt.app_secret, staff_principal(user), 600)}
        headers["resident"] = {"Authorization": "Bearer " + issue_token(
            rt.app_secret, Principal(sub="openid-1", role="resident"), 600)}
    return headers


def _m(eligible: int, paid: int, target_bp: int) -> dict[str, Any]:
    rate = paid * 10000 // eligible if eligible else None
    behind = eligible * target_bp > paid * 10000
    need = max(0, -(-eligible * target_bp // 10000) - paid)
    return {"eligible": eligible, "paid": paid, "rate_bp": rate, "target_bp": target_bp,
            "behind": behind, "shortfall": need}


def _measures(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["key"]: {k: m[k] for k in ("eligible", "paid", "rate_bp", "target_bp", "behind",
                                          "shortfall")} for m in body["measures"]}


def test_progress_counts_rates_scopes_and_errors(rt: Runtime, client: TestClient) -> None:
    h = _seed(rt)
    r = client.get("/api/v1/progress", params={"year": 2021}, headers=h["finance"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["year"] == 2021 and body["policy"] == "shanting-2021"
    # the business clock runs on from COLLECT_NOW
    assert 0 <= (datetime.fromisoformat(body["as_of"]) - IN_WINDOW).total_seconds() < 120
    assert [(t["key"], t["target_bp"]) for t in body["targets"]] == [
        ("medical", 10000), ("pension_45_59", 9500), ("pension_16_44", 6000)]
    assert [t["town_code"] for t in body["towns"]] == [TOWN, OTHER_TOWN, "370406199"]
    a, b, empty = body["towns"]
    # 南村's 16–44 band is at 0 % (gap 60 %), ahead of 东村's medical at 42.85 % (gap 57.15 %)
    assert [(v["village_code"], v["gap_bp"]) for v in a["villages"]] == [
        (SOUTH, 6000), (VILLAGE, 5715)]
    east, south = a["villages"][1], a["villages"][0]
    assert _measures(east) == {"medical": _m(7, 3, 10000), "pension_45_59": _m(2, 1, 9500),
                               "pension_16_44": _m(2, 2, 6000)}
    assert _measures(east)["medical"]["rate_bp"] == 4285
    assert _measures(east)["pension_45_59"]["shortfall"] == 1
    assert _measures(south) == {"medical": _m(2, 2, 10000), "pension_45_59": _m(0, 0, 9500),
                                "pension_16_44": _m(1, 0, 6000)}
    assert _measures(south)["pension_45_59"]["rate_bp"] is None
    assert _measures(a) == {"medical": _m(9, 5, 10000), "pension_45_59": _m(2, 1, 9500),
                            "pension_16_44": _m(3, 2, 6000)}
    assert _measures(a)["pension_16_44"] == {"eligible": 3, "paid": 2, "rate_bp": 6666,
                                             "target_bp": 6000, "behind": False,
                                             "shortfall": 0}
    assert [v["village_code"] for v in b["villages"]] == [OTHER_VILLAGE, EMPTY]
    assert _measures(b) == {"medical": _m(1, 1, 10000), "pension_45_59": _m(1, 1, 9500),
                            "pension_16_44": _m(0, 0, 6000)}
    assert empty["villages"] == [] and _measures(empty)["medical"]["rate_bp"] is None
    totals = {m["key"]: (m["eligible"], m["paid"]) for m in body["totals"]}
    assert totals == {"medical": (10, 6), "pension_45_59": (3, 2), "pension_16_44": (3, 2)}

    # a town asked for: only it; town staff get their own town, and 403 for another
    one = client.get("/api/v1/progress", params={"year": 2021, "town": OTHER_TOWN},
                     headers=h["auditor"]).json()
    assert [t["town_code"] for t in one["towns"]] == [OTHER_TOWN]
    assert one["totals"] == b["measures"]
    own = client.get("/api/v1/progress", params={"year": 2021}, headers=h["town_staff"])
    assert own.status_code == 200 and own.json()["towns"] == [a]
    assert client.get("/api/v1/progress", params={"year": 2021, "town": TOWN},
                      headers=h["town_staff"]).json()["towns"] == [a]
    for who, params, status in [
            ("town_staff", {"year": 2021, "town": OTHER_TOWN}, 403),
            ("agent", {"year": 2021}, 403), ("resident", {"year": 2021}, 403),
            ("finance", {"year": 2021, "town": "999"}, 404),
            ("finance", {"year": 2020}, 422), ("finance", {"year": "2021x"}, 422),
            ("finance", {}, 422), ("finance", {"year": 2021, "town": "a b"}, 422)]:
        r = client.get("/api/v1/progress", params=params, headers=h[who])
        assert r.status_code == status, (who, params, r.text)
    r = client.get("/api/v1/progress", params={"year": 2020}, headers=h["finance"])
    assert "year" in r.json()["error"]["message"]
    assert client.get("/api/v1/progress", params={"year": 2021}).status_code == 401


def test_representative_has_the_engines_eligibility() -> None:
    """Grouping residents is only sound while eligibility reads nothing the groups drop."""
    rnd = random.Random(10)
    for policy_id in ("shanting-2021", "testville-2024"):
        policy = load_policy(policy_id)
        year = policy.coverage_year
        for _ in range(3000):
            born = date(rnd.randint(year - 100, year + 1), rnd.randint(1, 12), rnd.randint(1, 28))
            died = rnd.choice([None, date(year - 1, rnd.randint(1, 12), 28),
                               date(year, 1, 1), date(year, rnd.randint(1, 12), 3)])
            facts = ResidentFacts(
                birth_date=born, hukou_type=rnd.choice(["local", "residence_permit",
                                                        "accompanying_child"]),
                employee_pension=rnd.random() < .2, employee_medical=rnd.random() < .2,
                student=rnd.random() < .2,
                categories=frozenset(rnd.sample(sorted(CATEGORIES), rnd.randint(0, 2))),
                died_on=died, last_pension_tier_yuan=rnd.choice([None, *policy.tiers_yuan]),
                department_listings=frozenset(
                    (rnd.choice(DEPARTMENTS), rnd.choice(["pension", "medical"]))
                    for _ in range(rnd.randint(0, 2))))
            now = rnd.choice([policy.window_start, policy.window_end,
                              datetime(year, 6, 1, tzinfo=UTC)])
            group = Group("v", born.year, facts.employee_pension, facts.employee_medical,
                          facts.student, died is not None and died < date(year, 1, 1),
                          False, False, 1)
            full, rep = assess(policy, facts, now), assess(policy, representative(group, year),
                                                           now)
            assert (full.age, full.pension.eligible, full.medical.eligible) == (
                rep.age, rep.pension.eligible, rep.medical.eligible), facts
    assert [t.key for t in targets_of(load_policy("testville-2024"))] == [
        "medical", "pension_40_59", "pension_16_39"]
