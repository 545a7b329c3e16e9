"""Reconciliation runs: every kind of difference found, and only those; the held pool."""

from __future__ import annotations

import io
import time
from collections import Counter
from datetime import date, timedelta

from sqlalchemy import func, select
from sqlmodel import col

from backend.db import unit_of_work
from backend.reconciliation.models import Discrepancy, Statement, StatementLine
from backend.reconciliation.service import open_discrepancies, reconcile_statement
from backend.runtime import Runtime
from payment_adapters.statements import StatementLine as Line
from tests.reconciliation.world import (
    AMOUNT,
    add_refund,
    as_duplicate,
    at,
    build_world,
    payment_line,
    refund_line,
    trade,
    txn,
)

DAY = date(2020, 11, 2)
N = 10_000


def _lines_of(lines: list[Line]):  # type: ignore[no-untyped-def]
    return lambda channel, fileobj: lines


def test_ten_thousand_orders_with_every_kind_planted(rt: Runtime) -> None:
    late = at(DAY, 23, 55)
    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, N, unpaid=[1], paid_at={4: late})
        as_duplicate(s, 11)
        as_duplicate(s, 14)
        rf_done = add_refund(s, 1, 13, status="succeeded", refunded_at=at(DAY, 10))
        rf_processing = add_refund(s, 2, 14, status="processing")
        rf_unsent = add_refund(s, 3, 15, status="succeeded", refunded_at=at(DAY, 11))
        rf_amount = add_refund(s, 4, 16, status="succeeded", refunded_at=at(DAY, 12),
                               amount_fen=AMOUNT)
    lines: list[Line] = []
    for i in range(1, N + 1):
        when = at(DAY, 9) + timedelta(seconds=i % 40_000)
        if i in (3, 4):                              # ours, not billed (4: near midnight)
            continue
        if i == 5:
            lines.append(payment_line(i, when, amount=37_900, settings=rt.settings))
        elif i == 6:
            lines.append(payment_line(i, when, transaction_id="4200DIFFERENT",
                                      settings=rt.settings))
        elif i == 7:
            lines.append(payment_line(i, when, fee=77, settings=rt.settings))
        elif i == 9:                                 # billed under trade 10's transaction
            lines.append(payment_line(i, when, transaction_id=txn(10), settings=rt.settings))
        else:
            lines.append(payment_line(i, when, settings=rt.settings))
    lines.append(payment_line(8, at(DAY, 13), line_no=N + 1, settings=rt.settings))
    lines.append(payment_line(0, at(DAY, 14), line_no=N + 2, out_trade_no="GHOST0001",
                              transaction_id="4200GHOST", settings=rt.settings))
    lines.append(refund_line(N + 3, 13, rf_done, AMOUNT, at(DAY, 10)))
    lines.append(refund_line(N + 4, 14, rf_processing, AMOUNT, at(DAY, 10)))
    lines.append(refund_line(N + 5, 17, "RFUNKNOWN", 1000, at(DAY, 10)))
    lines.append(refund_line(N + 6, 16, rf_amount, 37_000, at(DAY, 12)))

    t0 = time.perf_counter()
    done = reconcile_statement(rt, channel="wechat", day=DAY, fileobj=io.BytesIO(b"bill 1"),
                               filename="wechat-20201102.csv", source="upload", user_id=None,
                               parse=_lines_of(lines))
    took = time.perf_counter() - t0
    assert took < 8, f"a 10,000-line run took {took:.1f} s"
    run = done.run
    found = Counter((d.kind, d.out_refund_no or d.out_trade_no, d.status)
                    for d in run.discrepancies)
    assert found == Counter({
        ("missing_locally", trade(1), "open"): 1,
        ("missing_locally", "GHOST0001", "open"): 1,
        ("missing_at_channel", trade(3), "open"): 1,
        ("missing_at_channel", trade(4), "held"): 1,
        ("amount_mismatch", trade(5), "open"): 1,
        ("status_mismatch", trade(6), "open"): 1,       # another transaction id
        ("fee_mismatch", trade(7), "open"): 1,
        ("duplicate_payment", trade(8), "open"): 1,     # billed twice
        ("status_mismatch", trade(9), "open"): 1,       # 10's transaction id, not its own
        ("duplicate_payment", trade(10), "open"): 1,    # … so it is billed for two trades
        ("duplicate_payment", trade(11), "open"): 1,    # paid items already paid
        ("duplicate_payment", trade(14), "open"): 1,
        ("status_mismatch", rf_processing, "open"): 1,  # done there, processing here
        ("status_mismatch", "RFUNKNOWN", "open"): 1,    # a refund we do not have
        ("status_mismatch", rf_unsent, "open"): 1,      # ours, not on the statement
        ("amount_mismatch", rf_amount, "open"): 1,
    }), found
    by_key = {(d.kind, d.out_refund_no or d.out_trade_no): d for d in run.discrepancies}
    unknown = by_key[("missing_locally", "GHOST0001")]
    assert unknown.attempt_id is None and unknown.detail.startswith("unknown trade")
    assert by_key[("missing_locally", trade(1))].attempt_id == 1
    fee = by_key[("fee_mismatch", trade(7))]
    assert (fee.channel_fee_fen, fee.expected_fee_fen) == (77, 76)
    amount = by_key[("amount_mismatch", trade(5))]
    assert (amount.our_amount_fen, amount.channel_amount_fen) == (AMOUNT, 37_900)
    assert "line 10001 repeats line 8" in by_key[("duplicate_payment", trade(8))].detail
    assert "already paid" in by_key[("duplicate_payment", trade(11))].detail

    t = run.totals
    assert (t.statement.payments, t.statement.refunds) == (N - 2 + 2, 4)
    assert t.statement.payment_fen == (N - 2) * AMOUNT - 100 + 2 * AMOUNT
    assert t.statement.fee_fen == sum(line.fee_fen for line in lines)
    assert t.statement.expected_fee_fen == 76 * N          # 38,000 and 37,900 fen: 76
    assert t.statement.fee_fen == 76 * N + 1 - (76 + 76 + 2 + 74)   # 7's; refunds give back
    assert (t.ours.payments, t.ours.payment_fen) == (N - 1, (N - 1) * AMOUNT)
    assert (t.ours.refunds, t.ours.refund_fen) == (3, 3 * AMOUNT)
    # paired: every payment line of ours but 8's repeat and the ghost, and 3 refunds
    assert t.paired == (N - 1 - 2) + 3
    # differing paired lines: 5, 6, 7, 9, 10, 11, 14 and refunds RF2 and RF4
    assert run.matched == t.matched == t.paired - 9
    assert (t.held, t.discrepancies) == (1, 16)
    with rt.sessions() as s:
        assert open_discrepancies(s, DAY) == 15
        assert s.scalar(select(func.count()).select_from(StatementLine)) == len(lines)


def test_held_then_found_or_opened_by_the_next_days_statement(rt: Runtime) -> None:
    nxt = DAY + timedelta(days=1)
    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, 4, paid_at={1: at(DAY, 10), 2: at(DAY, 23, 52),
                                        3: at(DAY, 23, 58), 4: at(DAY, 23, 59, 59)})
    first = reconcile_statement(
        rt, channel="wechat", day=DAY, fileobj=io.BytesIO(b"day 1"), filename="d1",
        source="fetch", user_id=None,
        parse=_lines_of([payment_line(1, at(DAY, 10), settings=rt.settings),
                         # the channel's clock: 4 is billed a moment before its midnight
                         payment_line(4, at(DAY, 23, 59, 58), settings=rt.settings)]))
    assert sorted((d.out_trade_no, d.status) for d in first.run.discrepancies) == [
        (trade(2), "held"), (trade(3), "held")]
    assert first.run.matched == 2
    # the next day's bill has 3 (billed after midnight), not 2
    second = reconcile_statement(
        rt, channel="wechat", day=nxt, fileobj=io.BytesIO(b"day 2"), filename="d2",
        source="fetch", user_id=None,
        parse=_lines_of([payment_line(3, at(nxt, 0, 0, 3), settings=rt.settings)]))
    # 2 is on neither: reported by the run that found it missing, so that the next day (the
    # day before may be closed already) cannot close over it
    assert [(d.kind, d.out_trade_no, d.status, d.run_id) for d in second.run.discrepancies] == [
        ("missing_at_channel", trade(2), "open", second.run.run_id)]
    assert second.run.matched == 1
    with rt.sessions() as s:
        rows = dict(s.execute(select(col(Discrepancy.out_trade_no), col(Discrepancy.status))
                              .where(col(Discrepancy.business_date) == DAY)).all())
        assert rows == {trade(3): "auto_resolved"}
        assert open_discrepancies(s, DAY) == 0 and open_discrepancies(s, nxt) == 1
        assert s.scalar(select(func.count()).select_from(Statement)) == 2
