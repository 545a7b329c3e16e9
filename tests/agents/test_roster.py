"""The agent's village roster (清册), through HTTP on both databases."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlmodel import col

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.departments.models import DepartmentListing
from backend.residents.models import Death, Resident
from tests.agents.test_agent_money import collect
from tests.conftest import Live
from tests.factories import OTHER_VILLAGE, TOWN, add_resident
from tests.orders.helpers import order, pay, ref, resident_headers, seed, staff_headers


def test_the_roster_of_the_agents_village(live: Live) -> None:
    people = seed(live.rt)   # 张三, 李梅, 王芳 (dibao) and agent1 in VILLAGE
    with unit_of_work(live.rt.sessions) as s:
        wang = s.scalar(select(Resident).where(col(Resident.name) == "王芳"))
        assert wang is not None
        s.add(DepartmentListing(department="civil_affairs", resident_id=wang.id,
                                insurance="medical", year=2021))
        _, dead = add_resident(s, live.rt.pii, "刘五", date(1950, 1, 1), seq=44)
        s.add(Death(id_hash=live.rt.pii.hash(dead), id_masked="x", name="刘五",
                    died_on=date(2020, 5, 1)))
        _, far = add_resident(s, live.rt.pii, "孙七", date(1975, 1, 1), seq=55,
                              village=OTHER_VILLAGE)
        create_staff_user(s, username="town1", password="town-pass1", role="town_staff",
                          town_code=TOWN)
    agent = staff_headers(live)
    me = resident_headers(live)
    # 张三's medical paid by the resident through WeChat; his pension in a pending order
    zhang = ref(live, me, "张三", people["张三"])
    paid = order(live, me, "wechat_native", [{"resident_ref": zhang, "insurance": "medical"}])
    pay(live, paid.json()["payment"]["out_trade_no"])
    assert order(live, me, "wechat_native", [{"resident_ref": zhang, "insurance": "pension",
                                              "tier_yuan": 500}]).status_code == 201
    # 李梅's medical in cash to the agent
    li = ref(live, agent, "李梅", people["李梅"])
    assert collect(live, agent, [{"resident_ref": li, "insurance": "medical"}],
                   "R-1").status_code == 201  # type: ignore[attr-defined]

    r = live.http.get("/api/v1/agent/roster", headers=agent, params={"year": 2021})
    assert r.status_code == 200, r.text
    body = r.json()
    rows = {row["name"]: row for row in body["rows"]}
    assert set(rows) == {"张*", "李*", "王*", "刘*"}        # 孙七 lives elsewhere
    assert rows["张*"]["resident_ref"] == ref(live, agent, "张三", people["张三"])
    assert rows["张*"]["id_number_masked"] == people["张三"][:6] + "********" + people["张三"][-4:]

    def items(name: str) -> dict[str, tuple[str, int, str | None]]:
        return {i["insurance"]: (i["status"], i["amount_due_fen"], i["paid_by"])
                for i in rows[name]["items"]}

    assert items("张*") == {"pension": ("pending", 30000, None),
                            "medical": ("paid", 28000, "resident")}
    assert items("李*") == {"pension": ("unpaid", 30000, None),
                            "medical": ("paid", 28000, "agent")}
    assert items("王*")["medical"] == ("government_paid", 0, "department")
    assert items("刘*") == {"pension": ("not_eligible", 0, None),
                            "medical": ("not_eligible", 0, None)}
    assert {i["reason"] for i in rows["刘*"]["items"]} == {"deceased"}
    # no full ID number, and no full name, anywhere in the answer
    for number in (*people.values(), dead, far):
        assert number not in r.text
    assert "张三" not in r.text and "李梅" not in r.text

    # the status filter: only those items, only residents that have one
    unpaid = live.http.get("/api/v1/agent/roster", headers=agent,
                           params={"year": 2021, "status": "paid"}).json()
    assert sorted((row["name"], [i["paid_by"] for i in row["items"]])
                  for row in unpaid["rows"]) == [("张*", ["resident"]), ("李*", ["agent"])]
    bad = live.http.get("/api/v1/agent/roster", headers=agent,
                        params={"year": 2021, "status": "owing"})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"
    assert "status" in bad.json()["error"]["message"] and "owing" in bad.json()["error"]["message"]

    # only agents
    for h in (staff_headers(live, "town1", "town-pass1"), me):
        denied = live.http.get("/api/v1/agent/roster", headers=h, params={"year": 2021})
        assert denied.status_code == 403
        assert "agent" in denied.json()["error"]["message"]
