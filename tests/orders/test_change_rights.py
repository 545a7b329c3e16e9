"""Who may change an order: close and sync follow one rule; auditors change nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.ledger.models import JournalEntry
from backend.orders.models import Order, Payment
from payment_adapters.base import Channel
from tests.conftest import Live
from tests.orders.helpers import order, pay, ref, resident_headers, seed, staff_headers


def test_an_auditor_can_not_sync_an_order_paid_at_the_channel(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    people = seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="aud", password="auditor-pass", role="auditor")
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    h = resident_headers(live)
    body = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                         "insurance": "medical"}]).json()
    pay(live, body["payment"]["out_trade_no"], deliver=False)   # paid, not yet notified

    client = live.rt.channels.clients[Channel.ALIPAY]
    queries: list[str] = []
    real_query = client.query

    def counting_query(out_trade_no: str) -> Any:
        queries.append(out_trade_no)
        return real_query(out_trade_no)

    monkeypatch.setattr(client, "query", counting_query)

    aud = staff_headers(live, "aud", "auditor-pass")
    r = live.http.post(f"/api/v1/orders/{body['order_no']}/sync", headers=aud)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert queries == []
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(Order.status)) == "pending"
        assert s.scalar(select(func.count()).select_from(Payment)) == 0
        assert s.scalar(select(func.count()).select_from(JournalEntry)) == 0

    # the same request from finance settles it: the auditor's would have posted
    fin = staff_headers(live, "fin", "finance-pass")
    r = live.http.post(f"/api/v1/orders/{body['order_no']}/sync", headers=fin)
    assert r.status_code == 200 and r.json()["status"] == "paid"
    assert queries == [body["payment"]["out_trade_no"]]
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(func.count()).select_from(JournalEntry)) == 1
