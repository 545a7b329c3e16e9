"""WeChat Pay trouble while creating a trade, through the service: what the payer is told,
what becomes of the order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.db import unit_of_work
from backend.orders.models import Attempt, Order
from payment_adapters.base import Channel
from payment_adapters.wechat import WechatPayClient
from tests.conftest import Live
from tests.orders.helpers import get_order, order, pay, ref, resident_headers, seed
from tests.servers import free_port


@pytest.fixture
def people(live: Live) -> dict[str, str]:
    return seed(live.rt)


def _attempt_and_order(live: Live) -> tuple[Attempt, Order]:
    with unit_of_work(live.rt.sessions) as s:
        attempt = s.scalar(select(Attempt))
        assert attempt is not None
        found = s.get(Order, attempt.order_id)
        assert found is not None
        return attempt, found


def test_an_answer_signed_badly_leaves_the_order_pending_until_a_query_settles_it(
        live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    switched = live.http.post("/sandbox/wechat/switches", json={"bad_answer_signature": True})
    assert switched.status_code == 200, switched.text
    r = order(live, h, "wechat_native", items)
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "channel_timeout" and err["order_no"]
    attempt, created = _attempt_and_order(live)
    assert (attempt.status, created.status) == ("unknown", "pending")
    assert "not verifiably WeChat Pay's" in (attempt.last_error or "")
    live.http.post("/sandbox/wechat/switches", json={"bad_answer_signature": False})
    # WeChat did take the order, and the payer paid it; no notification reached us.
    pay(live, attempt.out_trade_no, deliver=False)
    assert get_order(live, h, err["order_no"])["status"] == "pending"
    synced = live.http.post(f"/api/v1/orders/{err['order_no']}/sync", headers=h)
    assert synced.status_code == 200, synced.text
    assert synced.json()["status"] == "paid"


def test_a_refused_connection_is_a_channel_error_that_closes_the_order(
        live: Live, people: dict[str, str]) -> None:
    h = resident_headers(live)
    items = [{"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]
    channels = live.rt.channels
    # WeChat Pay at a port nothing listens on: the request is never sent.
    channels.clients[Channel.WECHAT] = WechatPayClient(replace(
        channels.wechat_config, base_url=f"http://127.0.0.1:{free_port()}/sandbox/wechat"))
    r = order(live, h, "wechat_native", items)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "channel_error"
    attempt, created = _attempt_and_order(live)
    assert (attempt.status, created.status) == ("failed", "closed")
    assert "nothing was sent" in (attempt.last_error or "")


def test_the_sandbox_signs_as_a_certificate_or_a_public_key_merchants_platform(
        live: Live, people: dict[str, str]) -> None:
    # In sandbox mode our side holds both (a merchant migrating to the public key), and the
    # simulator signs with whichever it is switched to.
    certs = live.rt.settings.data_dir / "sandbox" / "wechat_platform_certs"
    assert len(list(certs.glob("*.pem"))) == 1
    h = resident_headers(live)
    for signing, name in (("certificate", "张三"), ("public_key", "李梅")):
        switched = live.http.post("/sandbox/wechat/switches", json={"signing": signing})
        assert switched.status_code == 200, switched.text
        serial = switched.json()["serial"]
        assert serial.startswith("PUB_KEY_ID_") == (signing == "public_key")
        r = order(live, h, "wechat_jsapi",
                  [{"resident_ref": ref(live, h, name, people[name]), "insurance": "medical"}])
        assert r.status_code == 201, r.text
        paid = pay(live, r.json()["payment"]["out_trade_no"])
        assert paid["notifications"][0]["headers"]["Wechatpay-Serial"] == serial
        assert [d["status"] for d in paid["deliveries"]] == [204]
        assert get_order(live, h, r.json()["order_no"])["status"] == "paid"


def test_the_sandbox_certificate_is_made_once_and_kept(tmp_path: Path,
                                                       sandbox_keys: dict[str, object]) -> None:
    from backend.channels import Channels
    from backend.config import Settings

    settings = Settings(data_dir=tmp_path, payment_sandbox=True, **sandbox_keys)  # type: ignore[arg-type]
    first = Channels(settings).sandbox_wechat_certificate
    again = Channels(settings).sandbox_wechat_certificate       # a restart
    assert first == again
    assert len(list((tmp_path / "sandbox" / "wechat_platform_certs").glob("*.pem"))) == 1
