"""The worker's receipt sweep, on both databases: a channel's payment gets its receipt from
the worker within seconds, fixed at payment time — without anyone reading it — and the
sweep finds the payments without one at scale by a watermark, not by reading them all."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import event, func, insert, select, text
from sqlmodel import col

from backend.db import unit_of_work
from backend.orders.models import BillLine, Order, OrderLine, Payment, PaymentLine
from backend.receipts import sweep as receipt_sweep
from backend.receipts.models import Receipt
from backend.receipts.service import receipt_no_for
from backend.receipts.sweep import Sweep, issue_receipts
from backend.residents.models import Resident, Town
from backend.runtime import Runtime
from tests.conftest import Live
from tests.factories import TOWN, VILLAGE, add_regions
from tests.orders.helpers import get_order, order, pay, ref, resident_headers, seed


def _receipts(rt: Runtime) -> dict[int, Receipt]:
    with unit_of_work(rt.sessions) as s:
        return {r.payment_id: r for r in s.scalars(select(Receipt))}


def test_the_worker_issues_an_online_payments_receipt_before_anyone_reads_it(
        live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    made = order(live, h, "alipay_qr", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}])
    assert made.status_code == 201, made.text
    pay(live, made.json()["payment"]["out_trade_no"])
    assert _receipts(live.rt) == {}          # the notification's path issues nothing
    (payment_id,) = _payment_ids(live.rt)

    # the worker's own job, as its schedule runs it
    from backend.worker.runner import SCHEDULE
    job = next(fn for name, _, fn in SCHEDULE if name == "issue_receipts")
    before = live.rt.clock.now()
    assert job(live.rt) == 1
    after = live.rt.clock.now()
    issued = _receipts(live.rt)[payment_id]
    # issued_at is the business clock (2020-11-02 in the tests), not the real one
    assert before <= issued.issued_at <= after and issued.issued_at.year == 2020
    assert job(live.rt) == 0                  # nothing more to do

    # the registry's name is corrected afterwards, before anyone read the receipt: the
    # receipt says what it said at payment time
    with unit_of_work(live.rt.sessions) as s:
        s.execute(text("UPDATE residents SET name = '王三' WHERE name = '张三'"))
    paid = get_order(live, h, made.json()["order_no"])
    assert paid["receipt_no"] == issued.receipt_no
    receipt = live.http.get(f"/api/v1/receipts/{issued.receipt_no}", headers=h).json()
    assert receipt["payer"]["name"] == "张*"
    assert [i["name"] for i in receipt["items"]] == ["张*"]
    again = _receipts(live.rt)[payment_id]
    assert (again.canonical, again.signature, again.issued_at) == (
        issued.canonical, issued.signature, issued.issued_at)


def test_a_read_before_the_sweep_still_issues_and_the_sweep_then_has_nothing_to_do(
        live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    made = order(live, h, "wechat_native", [
        {"resident_ref": ref(live, h, "李梅", people["李梅"]), "insurance": "medical"}])
    pay(live, made.json()["payment"]["out_trade_no"])
    paid = get_order(live, h, made.json()["order_no"])      # the lazy path
    assert paid["receipt_no"]
    assert issue_receipts(live.rt, sweep=Sweep()) == 0
    assert [r.receipt_no for r in _receipts(live.rt).values()] == [paid["receipt_no"]]


# --------------------------------------------------------------------------- at scale
N = 2000
AMOUNT = 38_000


def _payment_ids(rt: Runtime) -> list[int]:
    with unit_of_work(rt.sessions) as s:
        return [int(i) for i in s.scalars(select(col(Payment.id)).order_by(col(Payment.id)))]


def _seed_paid(rt: Runtime, ids: list[int], created: datetime) -> None:
    """Paid single-item orders with ids ``ids`` in every table, by bulk inserts: what
    ``apply_payment`` leaves (nothing reads the ledger here), without receipts."""
    paid_at = datetime(2020, 11, 2, 2, 0, tzinfo=UTC)
    with unit_of_work(rt.sessions) as s:
        if not s.scalar(select(func.count()).select_from(Town)):
            add_regions(s)
        s.execute(insert(Resident), [{
            "id": i, "id_hash": hashlib.sha256(f"sweep-{i}".encode()).hexdigest(),
            "id_enc": f"x{i}", "id_masked": f"370406********{i % 10000:04d}",
            "birth_date": date(1970, 1, 1), "name": f"测试{i}", "village_code": VILLAGE,
            "hukou_type": "local", "employee_pension": False, "employee_medical": False,
            "student": False, "categories": "", "created_at": created,
            "updated_at": created} for i in ids])
        s.execute(insert(BillLine), [{
            "id": i, "resident_id": i, "year": 2021, "insurance": "medical", "status": "paid",
            "paid_payment_id": i, "paid_fen": AMOUNT, "paid_at": paid_at,
            "created_at": created} for i in ids])
        s.execute(insert(Order), [{
            "id": i, "order_no": f"S{i:09d}", "payer_sub": f"wx:o{i}", "payer_role": "resident",
            "year": 2021, "channel": "wechat_native", "status": "paid", "amount_fen": AMOUNT,
            "expires_at": paid_at, "paid_at": paid_at, "channel_transaction_id": f"T{i}",
            "created_at": created, "updated_at": created} for i in ids])
        s.execute(insert(OrderLine), [{
            "id": i, "order_id": i, "bill_line_id": i, "resident_id": i,
            "insurance": "medical", "amount_fen": AMOUNT, "village_code": VILLAGE,
            "town_code": TOWN} for i in ids])
        s.execute(insert(Payment), [{
            "id": i, "order_id": i, "channel": "wechat", "transaction_id": f"T{i}",
            "amount_fen": AMOUNT, "paid_at": paid_at, "business_date": date(2020, 11, 2),
            "source": "notification", "shared_transaction": False, "created_at": created}
            for i in ids])
        s.execute(insert(PaymentLine), [{
            "id": i, "payment_id": i, "bill_line_id": i, "amount_fen": AMOUNT,
            "applied": True} for i in ids])


@contextmanager
def _statements(rt: Runtime) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(rt.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(rt.engine, "before_cursor_execute", count)


def _lookups(statements: list[str]) -> list[str]:
    """The sweep's anti-joins (payments without a receipt)."""
    return [q for q in statements if q.startswith("SELECT payments.id") and "NOT (EXISTS" in q]


def test_the_sweep_at_scale_issues_all_in_batches_and_then_does_nothing(rt: Runtime) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    gap = 777                         # a payment whose transaction commits late
    _seed_paid(rt, [i for i in range(1, N + 1) if i != gap], long_ago)
    sweep = Sweep()
    with _statements(rt) as seen:
        assert issue_receipts(rt, sweep=sweep, batch=200, max_batches=25) == N - 1
    # batches of 200: 1,999 payments are 9 full ones and a short one that ends it; then a
    # look below the mark (which finds nothing)
    assert len(_lookups(seen)) == 10 + 1
    inserts = [q for q in seen if q.startswith("INSERT INTO receipts")]
    assert len(inserts) == N - 1
    issued = _receipts(rt)
    assert sorted(issued) == [i for i in range(1, N + 1) if i != gap]
    r = issued[1]
    assert r.receipt_no == receipt_no_for(1, date(2020, 11, 2)) and "测*" in r.canonical
    assert sweep.mark == N + 1        # every payment written an hour ago: settled

    # the second run does nothing: a few reads, whatever the number of payments
    with _statements(rt) as seen:
        assert issue_receipts(rt, sweep=sweep, batch=200) == 0
    assert not [q for q in seen if q.startswith("INSERT")]
    selects = [q for q in seen if q.startswith("SELECT")]
    assert len(selects) == 3, selects   # settled, from the mark, the slice below it
    assert len(_receipts(rt)) == N - 1

    # the late payment commits below the mark: the look below the mark finds it
    _seed_paid(rt, [gap], long_ago)
    assert issue_receipts(rt, sweep=sweep, batch=200) == 1
    assert gap in _receipts(rt)


def test_the_mark_waits_for_payments_that_may_not_have_committed(rt: Runtime) -> None:
    now = datetime.now(UTC)
    _seed_paid(rt, [1, 2, 4], now)
    sweep = Sweep()
    assert issue_receipts(rt, sweep=sweep) == 3
    assert sweep.mark == 0            # written just now: payment 3 may still commit
    _seed_paid(rt, [3], now)
    assert issue_receipts(rt, sweep=sweep) == 1
    # half a minute on, every one of them settled: the mark passes them
    sweep.now = lambda: now + receipt_sweep.SETTLE + timedelta(seconds=1)
    assert issue_receipts(rt, sweep=sweep) == 0
    assert sweep.mark == 5 and sorted(_receipts(rt)) == [1, 2, 3, 4]


def test_a_receipt_that_cannot_be_issued_holds_up_no_other(rt: Runtime, monkeypatch: Any
                                                           ) -> None:
    _seed_paid(rt, [1, 2, 3], datetime.now(UTC) - timedelta(hours=1))
    real = receipt_sweep.write_receipt

    def failing(session: Any, key: Any, payment_id: int, now: datetime) -> Any:
        if payment_id == 2:
            raise RuntimeError("a defect")
        return real(session, key, payment_id, now)

    monkeypatch.setattr(receipt_sweep, "write_receipt", failing)
    ticks = [0.0]
    sweep = Sweep(monotonic=lambda: ticks[0])
    assert issue_receipts(rt, sweep=sweep) == 2
    assert sorted(_receipts(rt)) == [1, 3] and set(sweep.failed) == {2}
    assert sweep.mark == 4
    monkeypatch.setattr(receipt_sweep, "write_receipt", real)
    ticks[0] += receipt_sweep.RETRY_AFTER_S
    assert issue_receipts(rt, sweep=sweep) == 1
    assert sorted(_receipts(rt)) == [1, 2, 3] and sweep.failed == {}
