"""A WeChat refund settled by its notification keeps WeChat's refund id (微信退款单号)."""

from __future__ import annotations

from sqlalchemy import select

from backend.db import unit_of_work
from backend.orders.models import Payment, Refund
from backend.outbox.service import run_due
from tests.conftest import Live
from tests.orders.helpers import seed, two_orders_for_one_item


def test_a_refund_notification_records_wechats_refund_id(live: Live) -> None:
    people = seed(live.rt)
    _, o1, _, o2 = two_orders_for_one_item(live, people, "unionpay_qr", "wechat_native")
    for o in (o1, o2):      # the second payment is a duplicate, refunded through WeChat
        r = live.http.post("/sandbox/pay", json={"out_trade_no": o["payment"]["out_trade_no"]})
        assert r.status_code == 200, r.text
    # WeChat accepts the refund but finishes it later, and says so by notification.
    live.http.post("/sandbox/wechat/switches", json={"refunds_processing": True})
    assert run_due(live.rt) == 1
    with unit_of_work(live.rt.sessions) as s:
        refund = s.scalar(select(Refund))
        assert refund is not None and refund.status == "processing"
        out_refund_no = refund.out_refund_no
    settled = live.http.post(f"/sandbox/wechat/refunds/{out_refund_no}/settle",
                             json={"status": "SUCCESS"})
    assert settled.status_code == 200, settled.text
    assert [d["status"] for d in settled.json()["deliveries"]] == [204]
    wechat_refund_id = settled.json()["refund"]["refund_id"]
    with unit_of_work(live.rt.sessions) as s:
        refund = s.scalar(select(Refund))
        assert refund is not None and refund.status == "succeeded"
        payment = s.get(Payment, refund.payment_id)
        assert payment is not None
        # what WeChat's bills show as 微信退款单号, so what reconciliation matches on
        assert refund.channel_refund_id == wechat_refund_id
        assert refund.channel_refund_id != payment.transaction_id
