"""Orders through HTTP on SQLite and PostgreSQL, paid through the simulator's real formats."""

from __future__ import annotations

import base64
import concurrent.futures as cf
from pathlib import Path

import pytest
import zxingcpp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from PIL import Image
from sqlalchemy import func, select

from backend.db import unit_of_work
from backend.orders.models import BillLine, Payment, PaymentLine, Refund
from tests.conftest import Live
from tests.orders.helpers import get_order, order, pay, ref, resident_headers, seed


@pytest.fixture
def people(live: Live) -> dict[str, str]:
    return seed(live.rt)


def _decode_png(png: bytes) -> str:
    import io

    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert len(results) == 1
    return str(results[0].text)


def test_wechat_jsapi_order_pays_and_paysign_verifies(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    r = order(live, h, "wechat_jsapi", [{"resident_ref": zhang, "insurance": "pension",
                                          "tier_yuan": 300},
                                         {"resident_ref": zhang, "insurance": "medical"}])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "pending" and body["amount_fen"] == 58000
    assert [(i["insurance"], i["amount_fen"]) for i in body["items"]] == [
        ("pension", 30000), ("medical", 28000)]
    rp = body["payment"]["request_payment"]
    assert rp["signType"] == "RSA" and rp["package"].startswith("prepay_id=")
    assert body["payment"]["qr_content"] is None
    cfg = live.rt.channels.wechat_config
    message = f"{cfg.appid}\n{rp['timeStamp']}\n{rp['nonceStr']}\n{rp['package']}\n".encode()
    key = serialization.load_pem_private_key(
        Path(live.rt.settings.wechat_mch_private_key).read_bytes(), None).public_key()
    key.verify(base64.b64decode(rp["paySign"]), message, padding.PKCS1v15(),  # type: ignore[union-attr,call-arg]
               hashes.SHA256())  # type: ignore[call-arg]

    result = pay(live, body["payment"]["out_trade_no"])
    assert [d["status"] for d in result["deliveries"]] in ([200], [204])
    paid = get_order(live, h, body["order_no"])
    assert paid["status"] == "paid" and paid["channel_transaction_id"]
    again = live.http.post("/api/v1/residents/lookup", headers=h, json={
        "name": "张三", "id_number": people["张三"], "year": 2021}).json()
    assert [i["status"] for i in again["items"]] == ["paid", "paid"]


@pytest.mark.parametrize("channel", ["alipay_qr", "unionpay_qr", "wechat_native"])
def test_qr_channel_png_decodes_and_pays(live: Live, people: dict[str, str], channel: str) -> None:
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    body = order(live, h, channel, [{"resident_ref": zhang, "insurance": "medical"}]).json()
    p = body["payment"]
    assert p["request_payment"] is None and p["qr_content"]
    png = live.http.get(p["qr_image_url"].removeprefix(live.base_url))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert _decode_png(png.content) == p["qr_content"]
    svg = live.http.get(p["qr_image_url"].removeprefix(live.base_url).replace(".png", ".svg"))
    assert svg.status_code == 200 and b"<svg" in svg.content
    pay(live, p["out_trade_no"])
    assert get_order(live, h, body["order_no"])["status"] == "paid"


def test_aggregate_qr_picks_the_channel_from_the_wallet(live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    body = order(live, h, "aggregate_qr", [{"resident_ref": zhang, "insurance": "medical"}]).json()
    landing = body["payment"]["qr_content"]
    assert landing.startswith(live.base_url + "/pay/")
    png = live.http.get(body["payment"]["qr_image_url"].removeprefix(live.base_url))
    assert _decode_png(png.content) == landing
    path = landing.removeprefix(live.base_url)
    wallets = {"wechat": "Mozilla/5.0 (iPhone) MicroMessenger/8.0.50",
               "alipay": "Mozilla/5.0 (Linux; Android 14) AlipayClient/10.6",
               "unionpay": "Mozilla/5.0 (Linux; Android 14) UnionPay/1.0 CloudPay"}
    targets = {}
    for name, ua in wallets.items():
        r = live.http.get(path, headers={"User-Agent": ua}, follow_redirects=False)
        assert r.status_code == 302, r.text
        targets[name] = r.headers["location"]
    assert targets["wechat"].startswith("weixin://")
    assert "alipay" in targets["alipay"]
    assert "chinaums" in targets["unionpay"]
    # the same wallet scanning again reuses its trade
    again = live.http.get(path, headers={"User-Agent": wallets["alipay"]}, follow_redirects=False)
    assert again.headers["location"] == targets["alipay"]
    trade = live.http.get(f"/api/v1/orders/{body['order_no']}", headers=h).json()
    alipay_no = trade["payment"]["out_trade_no"]
    pay(live, alipay_no)
    assert get_order(live, h, body["order_no"])["status"] == "paid"


def test_an_item_in_someone_elses_live_order_is_refused(live: Live,
                                                       people: dict[str, str]) -> None:
    son, wife = resident_headers(live, "son"), resident_headers(live, "wife")
    a = order(live, son, "wechat_jsapi",
              [{"resident_ref": ref(live, son, "张三", people["张三"]), "insurance": "medical"}])
    assert a.status_code == 201, a.text
    blocked = order(live, wife, "alipay_qr", [{"resident_ref": ref(live, wife, "张三",
                                                                   people["张三"]),
                                               "insurance": "medical"}])
    assert blocked.status_code == 409
    assert blocked.json()["error"]["code"] == "item_in_pending_order"
    pay(live, a.json()["payment"]["out_trade_no"])
    paid = order(live, wife, "alipay_qr", [{"resident_ref": ref(live, wife, "张三",
                                                                people["张三"]),
                                            "insurance": "medical"}])
    assert paid.status_code == 409 and paid.json()["error"]["code"] == "item_already_paid"


def test_two_family_members_pay_the_same_item_by_two_channels(live: Live,
                                                                people: dict[str, str]) -> None:
    """The son's order expired on our side while his wallet still had it open; the wife
    orders and both pay at the same moment: one applies, one is money queued for refund."""
    son, wife = resident_headers(live, "son"), resident_headers(live, "wife")
    item = lambda h: [{"resident_ref": ref(live, h, "王芳", people["王芳"]),  # noqa: E731
                       "insurance": "pension", "tier_yuan": 300}]
    o1 = order(live, son, "wechat_native", item(son)).json()
    with unit_of_work(live.rt.sessions) as s:
        from sqlalchemy import update

        from backend.orders.models import Order
        s.execute(update(Order).where(Order.order_no == o1["order_no"])
                  .values(expires_at=live.rt.clock.now()))
    o2 = order(live, wife, "alipay_qr", item(wife))
    assert o2.status_code == 201, o2.text
    o2 = o2.json()
    with cf.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda no: pay(live, no), [o1["payment"]["out_trade_no"],
                                                 o2["payment"]["out_trade_no"]]))
    with unit_of_work(live.rt.sessions) as s:
        line = s.scalar(select(BillLine).where(BillLine.insurance == "pension"))
        assert line is not None and line.status == "paid" and line.paid_fen == 30000
        applied = s.scalar(select(func.count()).select_from(PaymentLine)
                           .where(PaymentLine.bill_line_id == line.id, PaymentLine.applied))
        dup = s.scalar(select(func.count()).select_from(PaymentLine)
                       .where(PaymentLine.bill_line_id == line.id, ~PaymentLine.applied))
        refunds = list(s.scalars(select(Refund)))
        assert (applied, dup) == (1, 1)
        assert [(r.amount_fen, r.reason, r.status) for r in refunds] == [
            (30000, "duplicate", "queued")]
        assert s.scalar(select(func.count()).select_from(Payment)) == 2
    orders = [get_order(live, son, o1["order_no"]), get_order(live, wife, o2["order_no"])]
    assert {o["status"] for o in orders} == {"paid"}
    assert sorted(o["refund_queued_fen"] for o in orders) == [0, 30000]
