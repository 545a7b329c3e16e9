"""Order checks, idempotency, channel trouble and closing, through HTTP."""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.db import unit_of_work
from backend.orders.models import Attempt, Order
from tests.conftest import HANG_S, Live
from tests.orders.helpers import get_order, order, pay, ref, resident_headers, seed


@pytest.fixture
def people(live: Live) -> dict[str, str]:
    return seed(live.rt)


def _orders(live: Live) -> int:
    with unit_of_work(live.rt.sessions) as s:
        return int(s.scalar(select(func.count()).select_from(Order)) or 0)


def test_item_checks(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    wang = ref(live, h, "王芳", people["王芳"])
    cases: list[tuple[list[dict[str, Any]], int, str, str]] = [
        ([{"resident_ref": zhang, "insurance": "pension", "tier_yuan": 100}], 409,
         "not_eligible", "hardship"),
        ([{"resident_ref": zhang, "insurance": "pension", "tier_yuan": 700}], 422,
         "validation_error", "tier"),
        ([{"resident_ref": wang, "insurance": "medical"}], 409, "not_eligible", "civil_affairs"),
        ([{"resident_ref": zhang, "insurance": "medical"}] * 2, 422, "validation_error", "twice"),
        ([{"resident_ref": "garbage", "insurance": "medical"}], 422, "validation_error",
         "resident_ref"),
        ([{"resident_ref": zhang, "insurance": "medical", "tier_yuan": 300}], 422,
         "validation_error", "tier"),
    ]
    for items, status, code, words in cases:
        r = order(live, h, "alipay_qr", items)
        assert r.status_code == status, (items, r.text)
        assert r.json()["error"]["code"] == code
        assert words in r.json()["error"]["message"]
    # a ref is bound to its caller
    other = resident_headers(live, "someone-else")
    r = order(live, other, "alipay_qr", [{"resident_ref": zhang, "insurance": "medical"}])
    assert r.status_code == 422 and "resident_ref" in r.json()["error"]["message"]
    r = live.http.post("/api/v1/orders", headers=h, json={"year": 2021, "channel": "cash",
                                                          "items": []})
    assert r.status_code == 422 and "channel" in r.json()["error"]["message"]
    assert _orders(live) == 0


def test_window_closed_for_pension_late_medical_costs_860(live: Live,
                                                          people: dict[str, str]) -> None:
    from datetime import datetime

    from backend.clock import BusinessClock

    live.rt.__dict__["clock"] = BusinessClock(datetime.fromisoformat("2020-12-25T10:00:00+08:00"))
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    r = order(live, h, "alipay_qr", [{"resident_ref": zhang, "insurance": "pension"}])
    assert r.status_code == 409 and r.json()["error"]["code"] == "window_closed"
    r = order(live, h, "alipay_qr", [{"resident_ref": zhang, "insurance": "medical"}])
    assert r.status_code == 201 and r.json()["amount_fen"] == 86000


def test_idempotency_same_key_same_body_replays(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    a = order(live, h, "alipay_qr", items, key="k-1")
    b = order(live, h, "alipay_qr", items, key="k-1")
    assert a.status_code == b.status_code == 201
    assert a.json() == b.json()
    assert _orders(live) == 1
    other = order(live, h, "unionpay_qr", items, key="k-1")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    # errors are replayed too
    bad = [{"resident_ref": "nope", "insurance": "medical"}]
    e1, e2 = order(live, h, "alipay_qr", bad, key="k-2"), order(live, h, "alipay_qr", bad,
                                                                key="k-2")
    assert e1.status_code == e2.status_code == 422 and e1.json() == e2.json()
    # the same key from another caller is another key
    h2 = resident_headers(live, "other")
    items2 = [{"resident_ref": ref(live, h2, "李梅", people["李梅"]), "insurance": "medical"}]
    assert order(live, h2, "alipay_qr", items2, key="k-1").status_code == 201


def test_idempotency_same_key_concurrently(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: order(live, h, "wechat_native", items, key="same"),
                                range(8)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {201, 409} and 201 in codes
    for a in answers:
        if a.status_code == 409:
            assert a.json()["error"]["code"] == "idempotency_conflict"
    created = {a.json()["order_no"] for a in answers if a.status_code == 201}
    assert len(created) == 1 and _orders(live) == 1


def test_channel_timeout_then_paid_on_query(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    live.http.post("/sandbox/faults", json={"channel": "alipay", "timeout": True,
                                            "hang_s": HANG_S})
    r = order(live, h, "alipay_qr", items)
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "channel_timeout" and err["order_no"]
    with unit_of_work(live.rt.sessions) as s:
        attempt = s.scalar(select(Attempt))
        assert attempt is not None and attempt.status == "unknown"
        out_trade_no = attempt.out_trade_no
    live.http.post("/sandbox/faults", json={"channel": "alipay", "timeout": False})
    # The channel did get the trade; the payer paid it; the notification never came.
    import time

    deadline = time.monotonic() + 15
    while live.http.get(f"/sandbox/trades/{out_trade_no}").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pay(live, out_trade_no, deliver=False)
    assert get_order(live, h, err["order_no"])["status"] == "pending"
    synced = live.http.post(f"/api/v1/orders/{err['order_no']}/sync", headers=h)
    assert synced.status_code == 200, synced.text
    assert synced.json()["status"] == "paid"


def test_close_then_a_late_payment_is_still_applied(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    body = order(live, h, "unionpay_qr", items).json()
    note = pay(live, body["payment"]["out_trade_no"], deliver=False)["notifications"][0]
    closed = live.http.post(f"/api/v1/orders/{body['order_no']}/close", headers=h)
    # the channel already had the money: close, then query, finds it paid
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "order_not_payable"
    assert get_order(live, h, body["order_no"])["status"] == "paid"
    # and the late notification is a repeat, answered with success
    resp = live.http.post(note["url"].removeprefix(live.base_url), content=note["body"].encode(),
                          headers=note["headers"])
    assert resp.status_code == 200 and resp.text.strip() == "SUCCESS"


def test_close_unpaid_order(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    body = order(live, h, "wechat_native", items).json()
    closed = live.http.post(f"/api/v1/orders/{body['order_no']}/close", headers=h)
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    trade = live.http.get(f"/sandbox/trades/{body['payment']['out_trade_no']}").json()
    assert trade["state"] == "closed"
    # the item is free again
    again = order(live, resident_headers(live, "wife"), "alipay_qr", [
        {"resident_ref": ref(live, resident_headers(live, "wife"), "张三", people["张三"]),
         "insurance": "medical"}])
    assert again.status_code == 201
    assert get_order(live, h, body["order_no"])["status"] == "closed"


def test_agent_dynamic_qr_refreshes_and_reports_paid(live: Live, people: dict[str, str]) -> None:
    from tests.orders.helpers import staff_headers

    agent = staff_headers(live)
    zhang = ref(live, agent, "张三", people["张三"])
    r = live.http.post("/api/v1/agent/qr-codes", headers=agent, json={
        "year": 2021, "items": [{"resident_ref": zhang, "insurance": "medical"}]})
    assert r.status_code == 201, r.text
    no = r.json()["order_no"]
    first = live.http.get(f"/api/v1/agent/qr-codes/{no}", headers=agent).json()
    assert first["status"] == "pending" and first["expired"] is False
    refreshed = live.http.post(f"/api/v1/agent/qr-codes/{no}/refresh", headers=agent).json()
    assert refreshed["qr_content"] != first["qr_content"]
    old_img = live.http.get(first["qr_image_url"].removeprefix(live.base_url))
    assert old_img.status_code == 404
    landing = refreshed["qr_content"].removeprefix(live.base_url)
    go = live.http.get(landing, headers={"User-Agent": "MicroMessenger/8.0"},
                       follow_redirects=False)
    assert go.status_code == 302
    attempt_no = get_order(live, agent, no)["payment"]["out_trade_no"]
    pay(live, attempt_no)
    done = live.http.get(f"/api/v1/agent/qr-codes/{no}", headers=agent).json()
    assert done["status"] == "paid" and done["paid_at"]
    # a resident token can not use the agent's endpoints
    assert live.http.get(f"/api/v1/agent/qr-codes/{no}",
                         headers=resident_headers(live)).status_code == 403
