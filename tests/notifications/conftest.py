"""The pending order every notification test starts from."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Live
from tests.orders.helpers import order, ref, resident_headers, seed

CHANNELS = {"wechat": "wechat_native", "alipay": "alipay_qr", "unionpay": "unionpay_qr"}


@pytest.fixture
def pending(live: Live, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A pending order on the channel under test, and the notification its payment makes."""
    channel = request.param
    people = seed(live.rt)
    h = resident_headers(live)
    body = order(live, h, CHANNELS[channel], [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]).json()
    return {"channel": channel, "headers": h, "order": body,
            "out_trade_no": body["payment"]["out_trade_no"]}
