"""Driving the service as the mini-program, an agent and a wallet would."""

from __future__ import annotations

from datetime import date
from typing import Any

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.runtime import Runtime
from tests.conftest import Live
from tests.factories import VILLAGE, add_regions, add_resident


def seed(rt: Runtime) -> dict[str, str]:
    """A small village: the 张 household (two adults), 王芳 (dibao) and an agent."""
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        _, zhang = add_resident(s, rt.pii, "张三", date(1969, 3, 15), seq=11,
                                last_pension_tier_yuan=300)
        _, wife = add_resident(s, rt.pii, "李梅", date(1972, 8, 2), seq=12)
        _, wang = add_resident(s, rt.pii, "王芳", date(1980, 5, 20), seq=22, categories="dibao")
        create_staff_user(s, username="agent1", password="agent-pass", role="agent",
                          village_code=VILLAGE)
    return {"张三": zhang, "李梅": wife, "王芳": wang}


def resident_headers(live: Live, openid: str = "demo") -> dict[str, str]:
    r = live.http.post("/api/v1/auth/wechat", json={"code": f"sandbox:{openid}"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def staff_headers(live: Live, user: str = "agent1", password: str = "agent-pass") -> dict[str, str]:
    r = live.http.post("/api/v1/auth/staff", json={"username": user, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def ref(live: Live, headers: dict[str, str], name: str, number: str) -> str:
    r = live.http.post("/api/v1/residents/lookup", headers=headers,
                       json={"name": name, "id_number": number, "year": 2021})
    assert r.status_code == 200, r.text
    return str(r.json()["resident"]["ref"])


def order(live: Live, headers: dict[str, str], channel: str, items: list[dict[str, Any]],
          key: str | None = None) -> Any:
    h = dict(headers)
    if key:
        h["Idempotency-Key"] = key
    return live.http.post("/api/v1/orders", headers=h,
                          json={"year": 2021, "channel": channel, "items": items})


def pay(live: Live, out_trade_no: str, **kw: Any) -> dict[str, Any]:
    r = live.http.post("/sandbox/pay", json={"out_trade_no": out_trade_no, **kw})
    assert r.status_code == 200, r.text
    return dict(r.json())


def get_order(live: Live, headers: dict[str, str], order_no: str) -> dict[str, Any]:
    r = live.http.get(f"/api/v1/orders/{order_no}", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def two_orders_for_one_item(live: Live, people: dict[str, str], first: str, second: str,
                            name: str = "张三", insurance: str = "medical"
                            ) -> tuple[dict[str, str], dict[str, Any], dict[str, str],
                                       dict[str, Any]]:
    """Two payers' orders for one item: the first payer's order expired on our side while
    their wallet still had it open, then the second payer ordered. Both can still be paid:
    the second payment to come in is a duplicate. (headers and order, for each payer)"""
    from sqlalchemy import text

    h1, h2 = resident_headers(live, "a"), resident_headers(live, "b")
    o1 = order(live, h1, first, [{"resident_ref": ref(live, h1, name, people[name]),
                                  "insurance": insurance}]).json()
    with unit_of_work(live.rt.sessions) as s:
        s.execute(text("UPDATE orders SET expires_at = :t WHERE order_no = :n"),
                  {"t": live.rt.clock.now(), "n": o1["order_no"]})
    o2 = order(live, h2, second, [{"resident_ref": ref(live, h2, name, people[name]),
                                   "insurance": insurance}]).json()
    return h1, o1, h2, o2

