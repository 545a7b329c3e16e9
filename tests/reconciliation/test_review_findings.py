"""Reviewer's reproductions of defects found in issue 9's change."""

from __future__ import annotations

import gzip
import io
from datetime import date, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.orders.models import RefundLine
from backend.reconciliation.service import reconcile_statement
from backend.refunds.service import complete_refund
from backend.runtime import Runtime
from payment_adapters.sandbox.statements import BillRow, write_alipay_bill, write_wechat_bill
from tests.factories import add_regions
from tests.reconciliation.test_pos_and_uploads import UPLOAD, _stored, tokens_for
from tests.reconciliation.world import (
    AMOUNT,
    add_refund,
    at,
    build_world,
    payment_line,
    refund_line,
)

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


def test_a_payment_refunded_by_finance_the_same_day_is_not_a_duplicate_payment(
        rt: Runtime) -> None:
    """complete_refund un-applies the refunded payment lines; the run's check "paid items
    already paid by another payment" reads any un-applied line as a duplicate. A payment that
    finance refunded (two people) on its own day is then reported as duplicate_payment "to be
    refunded" — a false discrepancy that blocks the day's close."""
    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, 3)
        out_refund_no = add_refund(s, 1, 2, status="processing")
        s.add(RefundLine(refund_id=1, payment_line_id=2, amount_fen=AMOUNT, applied=True))
        s.flush()
        assert complete_refund(s, 1, channel_refund_id="503000000001",
                               refunded_at=at(DAY, 15))
    lines = [payment_line(i, at(DAY, 9) + timedelta(seconds=i), settings=rt.settings)
             for i in (1, 2, 3)]
    lines.append(refund_line(4, 2, out_refund_no, AMOUNT, at(DAY, 15)))
    done = reconcile_statement(rt, channel="wechat", day=DAY, fileobj=io.BytesIO(b"bill"),
                               filename="wechat-20201102.csv", source="upload", user_id=None,
                               parse=lambda channel, fileobj: lines)
    found = [(d.kind, d.out_refund_no or d.out_trade_no, d.detail)
             for d in done.run.discrepancies]
    assert found == [], found


def test_an_approved_refund_the_statement_shows_done_is_completed_once(rt: Runtime) -> None:
    """A refund approved but not yet sent by the worker, which the channel's statement shows
    done: resolving on the channel's side completes it through complete_refund (its one
    ledger entry), not a second correcting entry that the worker's completion would repeat."""
    from sqlalchemy import func, select
    from sqlmodel import col

    from backend.ledger.models import JournalEntry
    from backend.orders.models import Refund
    from backend.reconciliation.service import approve_discrepancy, resolve_discrepancy

    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, 2)
        out_refund_no = add_refund(s, 1, 2, status="approved")
        s.add(RefundLine(refund_id=1, payment_line_id=2, amount_fen=AMOUNT, applied=True))
        a = create_staff_user(s, username="fin-a", password="pw-123456", role="finance")
        b = create_staff_user(s, username="fin-b", password="pw-123456", role="finance")
        ids = (a.id, b.id)
    lines = [payment_line(i, at(DAY, 9) + timedelta(seconds=i), settings=rt.settings)
             for i in (1, 2)]
    lines.append(refund_line(3, 2, out_refund_no, AMOUNT, at(DAY, 15)))
    done = reconcile_statement(rt, channel="wechat", day=DAY, fileobj=io.BytesIO(b"bill"),
                               filename="wechat-20201102.csv", source="upload", user_id=None,
                               parse=lambda channel, fileobj: lines)
    [d] = done.run.discrepancies
    assert d.kind == "status_mismatch" and d.out_refund_no == out_refund_no
    with unit_of_work(rt.sessions) as s:
        resolve_discrepancy(rt, s, d.id, user_id=ids[0], side="channel",
                            reason="WeChat's bill shows the refund done")
    with unit_of_work(rt.sessions) as s:
        approve_discrepancy(rt, s, d.id, user_id=ids[1])
    with rt.sessions() as s:
        refund = s.get(Refund, 1)
        assert refund is not None and refund.status == "succeeded"
        entries = s.scalar(select(func.count()).select_from(JournalEntry)
                           .where(col(JournalEntry.refund_id) == 1))
        assert entries == 1
        assert not complete_refund(s, 1, channel_refund_id="x", refunded_at=at(DAY, 16))
