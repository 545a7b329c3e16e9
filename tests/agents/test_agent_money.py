"""An agent's cash and POS collections and remittances, through HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import Live
from tests.orders.helpers import ref, seed, staff_headers


@pytest.fixture
def people(live: Live) -> dict[str, str]:
    people = seed(live.rt)
    from backend.auth.service import create_staff_user
    from backend.db import unit_of_work
    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    return people


def collect(live: Live, h: dict[str, str], items: list[dict[str, object]], receipt: str,
            key: str | None = None, method: str = "cash") -> object:
    headers = dict(h) | ({"Idempotency-Key": key} if key else {})
    body: dict[str, object] = {"year": 2021, "items": items, "method": method,
                               "receipt_no": receipt}
    if method == "pos":
        body["pos_reference"] = "POS-" + receipt
    return live.http.post("/api/v1/agent/collections", headers=headers, json=body)


def daily(live: Live, h: dict[str, str], **params: str) -> dict[str, object]:
    r = live.http.get("/api/v1/ledger/daily", headers=h, params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_retried_collection_is_recorded_once(live: Live, people: dict[str, str]) -> None:
    agent = staff_headers(live)
    items = [{"resident_ref": ref(live, agent, "张三", people["张三"]), "insurance": "medical"}]
    first = collect(live, agent, items, "R-0001", key="phone-retry-1")
    again = collect(live, agent, items, "R-0001", key="phone-retry-1")
    assert first.status_code == again.status_code == 201, first.text  # type: ignore[attr-defined]
    assert first.json() == again.json()  # type: ignore[attr-defined]
    today = live.rt.clock.today().isoformat()
    fin = staff_headers(live, "fin", "finance-pass")
    ledger = daily(live, fin, date=today)
    assert ledger["totals"] == {"count": 1, "amount_fen": 28000, "refunded_fen": 0,  # type: ignore[comparison-overlap]
                                "remitted_fen": 0, "outstanding_fen": 28000}


def test_a_second_receipt_with_the_same_number_is_refused(live: Live,
                                                          people: dict[str, str]) -> None:
    agent = staff_headers(live)
    zhang = ref(live, agent, "张三", people["张三"])
    li = ref(live, agent, "李梅", people["李梅"])
    assert collect(live, agent, [{"resident_ref": zhang, "insurance": "medical"}],
                   "R-7").status_code == 201  # type: ignore[attr-defined]
    r = collect(live, agent, [{"resident_ref": li, "insurance": "medical"}], "R-7")
    assert r.status_code == 409  # type: ignore[attr-defined]
    err = r.json()["error"]  # type: ignore[attr-defined]
    assert err["code"] == "receipt_no_taken" and "R-7" in err["message"]
    # the same item again with a new receipt: already paid, nothing written
    r = collect(live, agent, [{"resident_ref": zhang, "insurance": "medical"}], "R-8")
    assert r.status_code == 409 and r.json()["error"]["code"] == "item_already_paid"  # type: ignore[attr-defined]
    # POS needs the slip's reference
    r = live.http.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "items": [{"resident_ref": li, "insurance": "medical"}], "method": "pos",
        "receipt_no": "R-9"})
    assert r.status_code == 422 and "pos_reference" in r.json()["error"]["message"]


def test_remittance_and_outstanding_cash(live: Live, people: dict[str, str]) -> None:
    agent = staff_headers(live)
    items = [{"resident_ref": ref(live, agent, "张三", people["张三"]), "insurance": "pension",
              "tier_yuan": 500},
             {"resident_ref": ref(live, agent, "李梅", people["李梅"]), "insurance": "medical"}]
    assert collect(live, agent, items, "R-100").status_code == 201  # type: ignore[attr-defined]
    today = live.rt.clock.today()
    too_much = live.http.post("/api/v1/agent/remittances", headers=agent, json={
        "business_date": today.isoformat(), "amount_fen": 78001, "bank_receipt_no": "B-1"})
    assert too_much.status_code == 409
    assert too_much.json()["error"]["code"] == "remittance_exceeds_cash"
    part = live.http.post("/api/v1/agent/remittances", headers=agent, json={
        "business_date": today.isoformat(), "amount_fen": 50000, "bank_receipt_no": "B-1"})
    assert part.status_code == 201, part.text
    assert part.json()["outstanding_fen"] == 28000
    same_receipt = live.http.post("/api/v1/agent/remittances", headers=agent, json={
        "business_date": today.isoformat(), "amount_fen": 1000, "bank_receipt_no": "B-1"})
    assert same_receipt.status_code == 409
    assert same_receipt.json()["error"]["code"] == "bank_receipt_taken"
    future = live.http.post("/api/v1/agent/remittances", headers=agent, json={
        "business_date": (today + timedelta(days=2)).isoformat(), "amount_fen": 1,
        "bank_receipt_no": "B-2"})
    assert future.status_code == 422
    ledger = daily(live, agent, date=today.isoformat())
    assert ledger["rows"] == [{"town_code": "370406100", "village_code": "370406100201",  # type: ignore[comparison-overlap]
                               "channel": "cash", "count": 2, "amount_fen": 78000,
                               "refunded_fen": 0, "remitted_fen": 50000,
                               "outstanding_fen": 28000, "overdue": False}]
    # the agent sees their own village only
    assert live.http.get("/api/v1/ledger/daily", headers=agent, params={
        "date": today.isoformat(), "village": "370406101201"}).status_code == 403
