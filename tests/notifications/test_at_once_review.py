"""Review of the one-statement notification path (migration 0015): the cases where it meets
another transaction mid-way must end as the general path ends them."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from backend.auth.service import create_staff_user
from backend.clock import business_date, real_now
from backend.db import unit_of_work
from backend.ledger import service as ledger
from backend.notifications import service
from payment_adapters.base import Channel
from tests.conftest import Live
from tests.notifications.test_at_once import _dsn, _two_orders, spy  # noqa: F401
from tests.notifications.test_notify import notification

pytestmark = pytest.mark.parametrize("backend_name", ["postgres"])


def _waiting_on_a_lock(dsn: str, n: int = 1) -> None:
    deadline = time.monotonic() + 10
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchone() != (n,):
            assert time.monotonic() < deadline, "nobody waits on the lock"
            time.sleep(0.02)


def _verified(live: Live, note: dict[str, Any], channel: Channel) -> Any:
    return live.rt.channels.verifiers[channel].verify(note["headers"], note["body"].encode(),
                                                      real_now())


@pytest.mark.parametrize("channel", ["alipay"])
def test_txn_id_taken_at_the_same_moment_is_a_conflict_on_the_threads_path(
        live: Live, channel: str, spy: list[Any]) -> None:  # noqa: F811
    """Another trade's payment under the same transaction id commits while the one
    statement inserts: the general path calls that a transaction conflict (audited as such,
    the trade queried); the threads' one-statement path must end the same way, not as an
    internal error."""
    a, b = _two_orders(live, channel)
    note = notification(live, a["payment"]["out_trade_no"])
    txn = _verified(live, note, Channel.ALIPAY).transaction_id
    dsn = _dsn(live)
    now = datetime.now(UTC)
    answers: list[Any] = []
    with psycopg.connect(dsn) as other:
        # the other trade's payment under the same transaction id, not yet committed
        other.execute(
            "INSERT INTO payments (attempt_id, order_id, channel, transaction_id, amount_fen, "
            "paid_at, business_date, source, shared_transaction, created_at) "
            "SELECT a.id, a.order_id, a.channel, %s, a.amount_fen, %s, %s, 'notification', "
            "false, %s FROM attempts a WHERE a.out_trade_no = %s",
            (txn, now, business_date(now), now, b["payment"]["out_trade_no"]))
        t = threading.Thread(target=lambda: answers.append(service.handle(
            live.rt, Channel.ALIPAY, note["headers"], note["body"].encode())))
        t.start()
        _waiting_on_a_lock(dsn)
        other.commit()
        t.join(20)
    assert answers and answers[0].body.decode() != "success"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT outcome FROM notification_inbox").fetchall() == [
            ("transaction_conflict",)]
        assert conn.execute("SELECT count(*) FROM outbox WHERE kind = 'sync_attempt'"
                            ).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM payments").fetchone() == (1,)


@pytest.mark.parametrize("channel", ["wechat"])
def test_a_day_closed_while_the_statement_waits_sends_the_entry_to_the_next_day(
        live: Live, channel: str) -> None:
    """As post_entry: an entry queued behind a close (SHARE on journal_entries) sees the
    day closed and goes into the next open day, with for_date the day it was for — also
    on a connection where the function's plans are cached already."""
    with unit_of_work(live.rt.sessions) as s:
        uid = create_staff_user(s, username="fin", password="finance-pass", role="finance").id
        ledger.account_ids(s, [ledger.channel_clearing(channel),
                               ledger.contributions("medical", 2021)])
    first, second = _two_orders(live, channel)
    dsn = _dsn(live)
    paid_at = datetime(2020, 11, 1, 12, tzinfo=UTC)
    day = business_date(paid_at)
    results: list[Any] = []

    def apply(conn: psycopg.Connection[Any], o: dict[str, Any], k: int) -> Any:
        return conn.execute(
            "SELECT apply_channel_notification(%s, %s, %s, %s, %s, %s, %s, %s, "
            "'{}'::json, 'x', 'notification')",
            (channel, o["payment"]["out_trade_no"], f"4200000000202011010000000{k:03d}",
             o["amount_fen"], paid_at, day, datetime.now(UTC), f"event-{k}")).fetchone()

    with psycopg.connect(dsn, autocommit=True) as payer:
        assert str(apply(payer, first, 1)[0]).startswith("applied")   # plans cached
        with psycopg.connect(dsn) as closer:
            closer.execute("LOCK TABLE journal_entries IN SHARE MODE")
            closer.execute(
                "INSERT INTO closed_days (business_date, closed_by, closed_at, totals, note) "
                "VALUES (%s, %s, now(), '{}', '')", (day, uid))
            t = threading.Thread(target=lambda: results.append(apply(payer, second, 2)))
            t.start()
            _waiting_on_a_lock(dsn)
            closer.commit()
            t.join(20)
    assert results and str(results[0][0]).startswith("applied")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT o.order_no, e.business_date, e.for_date FROM journal_entries e "
            "JOIN payments p ON p.id = e.payment_id JOIN orders o ON o.id = p.order_id "
            "ORDER BY e.id").fetchall()
        posted = conn.execute(
            "SELECT DISTINCT p.business_date FROM postings p JOIN journal_entries e "
            "ON e.id = p.entry_id WHERE e.id = (SELECT max(id) FROM journal_entries)"
        ).fetchall()
    assert rows == [(first["order_no"], day, None),
                    (second["order_no"], day + timedelta(days=1), day)]
    assert posted == [(day + timedelta(days=1),)]


def _rows(conn: psycopg.Connection[Any], order_no: str) -> dict[str, Any]:
    def q(sql: str) -> list[tuple[Any, ...]]:
        return conn.execute(sql, {"no": order_no}).fetchall()

    order_id = "(SELECT id FROM orders WHERE order_no = %(no)s)"
    payment_id = f"(SELECT id FROM payments WHERE order_id = {order_id})"
    return {
        "order": q("SELECT status, paid_at, channel_transaction_id FROM orders "
                   "WHERE order_no = %(no)s"),
        "payment": q("SELECT channel, transaction_id, amount_fen, paid_at, business_date, "
                     f"source, shared_transaction FROM payments WHERE order_id = {order_id}"),
        "attempt": q(f"SELECT status, transaction_id, paid_at FROM attempts "
                     f"WHERE order_id = {order_id}"),
        "payment_lines": q(f"SELECT bill_line_id, amount_fen, applied FROM payment_lines "
                           f"WHERE payment_id = {payment_id} ORDER BY id"),
        "bill_lines": q("SELECT b.id, b.status, b.paid_at, b.paid_tier_yuan, b.paid_fen, "
                        f"b.paid_payment_id = {payment_id} FROM bill_lines b JOIN order_lines l "
                        f"ON l.bill_line_id = b.id WHERE l.order_id = {order_id} ORDER BY b.id"),
        "entry": q("SELECT kind, reason, business_date, for_date, occurred_at, refund_id, "
                   f"remittance_id FROM journal_entries WHERE payment_id = {payment_id}"),
        "postings": q("SELECT a.code, p.amount_fen, p.business_date, p.town_code, "
                      "p.village_code, p.channel, p.measure, p.items FROM postings p "
                      "JOIN ledger_accounts a ON a.id = p.account_id JOIN journal_entries e "
                      f"ON e.id = p.entry_id WHERE e.payment_id = {payment_id} ORDER BY p.id"),
        "accounts": q("SELECT code, kind, name FROM ledger_accounts ORDER BY code"),
        "inbox": q("SELECT channel, dedupe_key, out_trade_no, verified, outcome, detail, "
                   "headers::text, body FROM notification_inbox"),
        "outbox": q("SELECT kind FROM outbox"),
        "refunds": q("SELECT count(*) FROM refunds"),
    }


@pytest.mark.parametrize("channel", ["wechat", "unionpay"])
def test_an_order_of_three_lines_and_two_insurances_written_alike(
        live: Live, channel: str) -> None:
    """One order, three lines (a pension and two medical items), on a ledger with no
    account yet: the function's rows (in a transaction rolled back) are the general path's."""
    from tests.notifications.conftest import CHANNELS
    from tests.orders.helpers import order, ref, resident_headers, seed

    people = seed(live.rt)
    h = resident_headers(live)
    zhang, wife = ref(live, h, "张三", people["张三"]), ref(live, h, "李梅", people["李梅"])
    made = order(live, h, CHANNELS[channel], [
        {"resident_ref": zhang, "insurance": "pension", "tier_yuan": 300},
        {"resident_ref": zhang, "insurance": "medical"},
        {"resident_ref": wife, "insurance": "medical"}])
    assert made.status_code in (200, 201), made.text
    o = made.json()
    note = notification(live, o["payment"]["out_trade_no"])
    body, headers = note["body"].encode(), note["headers"]
    verified = live.rt.channels.verifiers[Channel(channel)].verify(headers, body, real_now())
    params = service._at_once_params(live.rt, Channel(channel), verified, headers, body)
    assert params is not None
    dsn = _dsn(live)
    with psycopg.connect(dsn) as conn:
        (answer,), = conn.execute(service._APPLY_AT_ONCE, params).fetchall()
        assert answer == f"applied {o['order_no']}"
        at_once = _rows(conn, o["order_no"])
        conn.rollback()
    answer = service.handle(live.rt, Channel(channel), headers, body, at_once=False)
    with psycopg.connect(dsn) as conn:
        general = _rows(conn, o["order_no"])
    assert len(general["payment_lines"]) == 3 and len(general["accounts"]) == 3
    for table in general:
        assert (table, at_once[table]) == (table, general[table])


def _post_at_once(live: Live, notes: list[dict[str, Any]]) -> list[bool]:
    import httpx

    from tests.notifications.test_notify import is_success

    barrier = threading.Barrier(len(notes), timeout=20)
    answers: list[bool] = [False] * len(notes)

    def one(k: int, note: dict[str, Any]) -> None:
        with httpx.Client(base_url=live.base_url, timeout=30) as http:
            barrier.wait()
            r = http.post(note["url"].removeprefix(live.base_url),
                          content=note["body"].encode(), headers=note["headers"])
        answers[k] = is_success(note["channel"], r)

    threads = [threading.Thread(target=one, args=(k, n)) for k, n in enumerate(notes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


@pytest.mark.parametrize("pending", ["wechat"], indirect=True)
def test_one_notification_delivered_six_times_at_once(live: Live,
                                                      pending: dict[str, Any]) -> None:
    note = notification(live, pending["out_trade_no"]) | {"channel": "wechat"}
    assert _post_at_once(live, [note] * 6) == [True] * 6
    with psycopg.connect(_dsn(live)) as conn:
        assert conn.execute(
            "SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM postings), "
            "(SELECT count(*) FROM refunds), (SELECT count(*) FROM bill_lines "
            "WHERE status = 'paid')").fetchone() == (1, 2, 0, 1)
        assert conn.execute("SELECT outcome FROM notification_inbox").fetchall() == [
            ("applied",)]


def test_two_wallets_pay_one_aggregate_qr_at_once(live: Live) -> None:
    """Both trades of an aggregate QR paid and notified at the same moment: one applies,
    the other is kept as a duplicate to refund; the lines are paid once."""
    from tests.orders.helpers import order, ref, resident_headers, seed

    people = seed(live.rt)
    h = resident_headers(live)
    body = order(live, h, "aggregate_qr", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]).json()
    path = body["payment"]["qr_content"].removeprefix(live.base_url)
    for ua in ("Mozilla/5.0 (iPhone) MicroMessenger/8.0.50",
               "Mozilla/5.0 (Linux; Android 14) AlipayClient/10.6"):
        assert live.http.get(path, headers={"User-Agent": ua},
                             follow_redirects=False).status_code == 302
    dsn = _dsn(live)
    with psycopg.connect(dsn) as conn:
        trades = conn.execute(
            "SELECT a.channel, a.out_trade_no FROM attempts a JOIN orders o "
            "ON o.id = a.order_id WHERE o.order_no = %s AND a.status = 'pending' ORDER BY 1",
            (body["order_no"],)).fetchall()
    assert [c for c, _ in trades] == ["alipay", "wechat"]
    notes = [notification(live, no) | {"channel": c} for c, no in trades]
    assert _post_at_once(live, notes) == [True, True]
    with psycopg.connect(dsn) as conn:
        assert sorted(conn.execute("SELECT outcome FROM notification_inbox").fetchall()) == [
            ("applied",), ("duplicate",)]
        assert conn.execute(
            "SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM refunds "
            "WHERE reason = 'duplicate'), (SELECT count(*) FROM bill_lines "
            "WHERE status = 'paid'), (SELECT count(*) FROM payment_lines WHERE applied)"
        ).fetchone() == (2, 1, 1, 1)
        assert conn.execute("SELECT sum(amount_fen) FROM postings").fetchone() == (0,)
