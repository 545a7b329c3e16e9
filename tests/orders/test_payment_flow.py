"""payment_flow at the driver: the caller's own copies of the rows it changed stay true."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlmodel import col

from backend.db import unit_of_work
from backend.orders.models import Attempt, Order
from backend.orders.payment_flow import ChannelConfirmation, confirm_channel_payment
from tests.conftest import Live
from tests.orders.helpers import order, ref, resident_headers, seed


def test_a_callers_order_and_attempt_objects_show_the_payment(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    body = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                         "insurance": "medical"}]).json()
    paid_at = datetime.fromisoformat("2020-11-02T10:00:00+08:00")
    with unit_of_work(live.rt.sessions) as s:
        held = s.scalar(select(Order).where(col(Order.order_no) == body["order_no"]))
        attempt = s.scalar(select(Attempt).where(col(Attempt.order_id) == held.id))  # type: ignore[union-attr]
        assert held is not None and attempt is not None and held.status == "pending"
        applied = confirm_channel_payment(s, ChannelConfirmation(
            channel="alipay", out_trade_no=body["payment"]["out_trade_no"],
            transaction_id="2020110222001000000000000042", amount_fen=28000, paid_at=paid_at,
            source="notification"))
        assert applied.outcome == "applied"
        # no reload: what the path wrote at the driver, as an ORM UPDATE would have synced
        assert (held.status, held.channel_transaction_id) == (
            "paid", "2020110222001000000000000042")
        assert (attempt.status, attempt.paid_at) == ("paid", paid_at)
        assert not s.dirty                       # nothing for the ORM to write back
    # and still readable after the session is gone (expire_on_commit=False)
    assert held.status == "paid" and held.paid_at == paid_at
