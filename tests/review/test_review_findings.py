"""Reviewer's reproductions of defects found in issue 9's change."""

from __future__ import annotations

import gzip
import io
from datetime import date
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.runtime import Runtime
from payment_adapters.sandbox.statements import BillRow, write_alipay_bill, write_wechat_bill
from tests.factories import add_regions
from tests.reconciliation.test_pos_and_uploads import UPLOAD, _stored, tokens_for
from tests.reconciliation.world import at

DAY = date(2020, 11, 2)


def test_login_csrf_without_the_login_cookie_is_refused(client: TestClient,
                                                         rt: Runtime) -> None:
    """A cross-site login form (no desk_login cookie: SameSite=Strict) must not log the
    victim's browser into the attacker's account by sending csrf='-'."""
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    client.cookies.clear()
    r = client.post("/desk/login", data={"username": "fin", "password": "finance-pass",
                                         "csrf": "-"}, follow_redirects=False)
    assert r.status_code == 403, (r.status_code, r.headers.get("set-cookie"))
    assert "desk_session" not in r.headers.get("set-cookie", "")


@pytest.mark.parametrize("backend_name", ["sqlite"])      # nothing here is the database's
def test_a_damaged_compressed_statement_is_refused_as_invalid_not_a_500(
        rt: Runtime, client: TestClient) -> None:
    """A WeChat gzip bill or an Alipay zip with damaged deflate data (or a member name that
    is not GB18030) raised zlib.error / ValueError out of the parsers: a 500 instead of 422
    invalid_statement."""
    rows = [BillRow("payment", at(DAY, 9, i), f"T{i:08d}", f"4200{i:012d}", 38_000)
            for i in range(1, 31)]
    out = io.BytesIO()
    write_wechat_bill(out, rows, fee_rate=Decimal("0.006"))
    wechat = bytearray(gzip.compress(out.getvalue(), mtime=0))
    out = io.BytesIO()
    write_alipay_bill(out, rows, day=DAY, fee_rate=Decimal("0.006"))
    alipay = bytearray(out.getvalue())
    fin = tokens_for(rt)
    for channel, data, offset, name in (("wechat", wechat, 11, "bill.csv.gz"),
                                        ("alipay", alipay, 26, "bill.zip"),
                                        ("alipay", alipay, 28, "bill.zip")):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        r = client.post(UPLOAD.format(channel), headers=fin, data={"date": DAY.isoformat()},
                        files={"file": (name, bytes(damaged))})
        assert r.status_code == 422, (channel, offset, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == "invalid_statement"
    assert _stored(rt) == (0, 0, 0)
