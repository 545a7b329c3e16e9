"""What the resident sees once money came in: the lookup and the order tell the truth."""

from __future__ import annotations

from backend.outbox.service import run_due
from tests.conftest import Live
from tests.orders.helpers import (
    get_order,
    order,
    pay,
    ref,
    resident_headers,
    seed,
    two_orders_for_one_item,
)


def test_a_paid_item_is_no_longer_payable_in_the_lookup(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    body = order(live, h, "wechat_native", [{"resident_ref": zhang, "insurance": "medical"}])
    pay(live, body.json()["payment"]["out_trade_no"])
    lookup = live.http.post("/api/v1/residents/lookup", headers=h, json={
        "name": "张三", "id_number": people["张三"], "year": 2021}).json()
    items = {i["insurance"]: i for i in lookup["items"]}
    assert items["medical"]["status"] == "paid"
    assert (items["medical"]["payable"], items["medical"]["not_payable_reason"]) == (
        False, "already_paid")
    assert items["pension"]["status"] == "unpaid" and items["pension"]["payable"] is True
    again = order(live, h, "wechat_native", [{"resident_ref": zhang, "insurance": "medical"}])
    assert again.status_code == 409 and again.json()["error"]["code"] == "item_already_paid"


def test_the_order_shows_a_duplicate_queued_then_refunded(live: Live) -> None:
    people = seed(live.rt)
    h1, o1, h2, o2 = two_orders_for_one_item(live, people, "wechat_native", "alipay_qr")
    pay(live, o1["payment"]["out_trade_no"])
    pay(live, o2["payment"]["out_trade_no"])
    second = get_order(live, h2, o2["order_no"])
    assert (second["refund_queued_fen"], second["refunded_fen"]) == (28000, 0)
    while run_due(live.rt):
        pass
    second = get_order(live, h2, o2["order_no"])
    assert (second["refund_queued_fen"], second["refunded_fen"]) == (0, 28000)
    first = get_order(live, h1, o1["order_no"])
    assert (first["refund_queued_fen"], first["refunded_fen"]) == (0, 0)
