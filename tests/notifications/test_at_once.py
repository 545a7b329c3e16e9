"""PostgreSQL applies the common payment notification in one statement (migration 0015's
``apply_channel_notification``): it must write exactly what the general path in Python
writes, fall back to it for anything else having written nothing, and lock no row that
other payments share.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from backend.clock import business_date
from backend.db import unit_of_work
from backend.ledger import service as ledger
from backend.notifications import service
from backend.orders.payment_flow import ChannelConfirmation, confirm_channel_payment
from tests.conftest import Live
from tests.notifications.conftest import CHANNELS
from tests.notifications.test_notify import is_success, notification, post
from tests.orders.helpers import order, ref, resident_headers, seed

pytestmark = pytest.mark.parametrize("backend_name", ["postgres"])


def _dsn(live: Live) -> str:
    return live.rt.engine.url.set(drivername="postgresql").render_as_string(
        hide_password=False)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each call of the one-statement path answered (None: the general path ran)."""
    calls: list[Any] = []
    real, real_async = service._apply_at_once, service._apply_at_once_async

    def recording(*args: Any, **kw: Any) -> Any:
        answer = real(*args, **kw)
        calls.append(answer)
        return answer

    async def recording_async(*args: Any, **kw: Any) -> Any:
        answer = await real_async(*args, **kw)
        calls.append(answer)
        return answer

    monkeypatch.setattr(service, "_apply_at_once", recording)
    monkeypatch.setattr(service, "_apply_at_once_async", recording_async)
    return calls


def general_path_only(m: pytest.MonkeyPatch) -> None:
    async def none_async(*a: Any, **k: Any) -> None:
        return None

    m.setattr(service, "_apply_at_once", lambda *a, **k: None)
    m.setattr(service, "_apply_at_once_async", none_async)


def _two_orders(live: Live, channel: str) -> tuple[dict[str, Any], dict[str, Any]]:
    people = seed(live.rt)
    h = resident_headers(live)
    made = []
    for name in ("张三", "李梅"):
        made.append(order(live, h, CHANNELS[channel], [
            {"resident_ref": ref(live, h, name, people[name]), "insurance": "medical"}]).json())
    return made[0], made[1]


def written(live: Live, order_no: str) -> dict[str, Any]:
    """Every row a payment of ``order_no`` wrote, with its own numbers, ids and times
    replaced by what they must equal."""
    with psycopg.connect(_dsn(live)) as conn:
        def rows(sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql, {"no": order_no}).fetchall()

        (oid, status, o_paid, o_txn, village, town), = rows(
            "SELECT o.id, o.status, o.paid_at, o.channel_transaction_id, l.village_code, "
            "l.town_code FROM orders o JOIN order_lines l ON l.order_id = o.id "
            "WHERE o.order_no = %(no)s")
        (pid, channel, txn, fen, paid_at, day, source, shared), = rows(
            "SELECT id, channel, transaction_id, amount_fen, paid_at, business_date, source, "
            f"shared_transaction FROM payments WHERE order_id = {oid}")

        def same(value: Any) -> Any:
            names = {order_no: "<order>", txn: "<txn>", paid_at: "<paid_at>",
                     village: "<village>", town: "<town>"}
            if isinstance(value, str):
                for real, name in names.items():
                    if isinstance(real, str):
                        value = value.replace(real, str(name))
                return value
            return names.get(value, value) if not isinstance(value, bool) else value

        def norm(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            return [tuple(same(v) for v in row) for row in found]

        return {
            "order": norm([(status, o_paid, o_txn)]),
            "payment": norm([(channel, txn, fen, paid_at, day, source, shared)]),
            "attempt": norm(rows(
                f"SELECT status, transaction_id, paid_at FROM attempts WHERE order_id = {oid}")),
            "payment_lines": norm(rows(
                f"SELECT amount_fen, applied FROM payment_lines WHERE payment_id = {pid}")),
            "bill_lines": norm(rows(
                f"SELECT b.status, b.paid_payment_id = {pid}, b.paid_at, b.paid_tier_yuan, "
                "b.paid_fen "
                "FROM bill_lines b JOIN order_lines l ON l.bill_line_id = b.id "
                f"WHERE l.order_id = {oid}")),
            "entry": norm(rows(
                "SELECT kind, reason, business_date, for_date, occurred_at, refund_id, "
                f"remittance_id FROM journal_entries WHERE payment_id = {pid}")),
            "postings": norm(rows(
                "SELECT a.code, p.amount_fen, p.business_date, p.town_code, p.village_code, "
                "p.channel, p.measure, p.items FROM postings p "
                "JOIN ledger_accounts a ON a.id = p.account_id "
                f"JOIN journal_entries e ON e.id = p.entry_id WHERE e.payment_id = {pid} "
                "ORDER BY p.id")),
            "inbox": norm(rows(
                "SELECT channel, out_trade_no IS NOT NULL, verified, outcome, detail, "
                "headers::text <> '{}', length(body) > 0 FROM notification_inbox "
                "WHERE detail = 'order ' || %(no)s")),
            "refunds": rows(f"SELECT count(*) FROM refunds WHERE payment_id = {pid}"),
            "outbox": rows("SELECT count(*) FROM outbox"),
        }


@pytest.mark.parametrize("channel", list(CHANNELS))
def test_one_statement_writes_what_the_general_path_writes(
        live: Live, channel: str, spy: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # two orders of the same shape, one paid by each path: the general path first, as it
    # makes the ledger accounts on first use (the one statement leaves that to it)
    first, second = _two_orders(live, channel)
    with monkeypatch.context() as m:
        general_path_only(m)
        resp = post(live, notification(live, second["payment"]["out_trade_no"]))
        assert is_success(channel, resp), resp.text
    resp = post(live, notification(live, first["payment"]["out_trade_no"]))
    assert is_success(channel, resp), resp.text
    assert spy == [("applied", f"order {first['order_no']}")]
    at_once, general = written(live, first["order_no"]), written(live, second["order_no"])
    for table in general:
        assert (table, at_once[table]) == (table, general[table])
    assert at_once["order"][0][0] == "paid" and len(at_once["postings"]) == 2


@pytest.mark.parametrize("pending", ["wechat"], indirect=True)
def test_a_repeat_answers_success_and_writes_nothing(live: Live, pending: dict[str, Any],
                                                     spy: list[Any]) -> None:
    note = notification(live, pending["out_trade_no"])
    for _ in range(3):
        assert is_success("wechat", post(live, note))
    no = pending["order"]["order_no"]
    assert spy == [("applied", f"order {no}"), ("repeat", f"order {no}"),
                   ("repeat", f"order {no}")]
    with psycopg.connect(_dsn(live)) as conn:
        counts = conn.execute("SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM "
                              "notification_inbox), (SELECT count(*) FROM postings)").fetchone()
    assert counts == (1, 1, 2)


@pytest.mark.parametrize("pending", ["wechat"], indirect=True)
def test_a_line_paid_meanwhile_takes_the_general_path(
        live: Live, pending: dict[str, Any], spy: list[Any]) -> None:
    """The order's item was paid by someone else meanwhile (here: marked so directly): the
    one statement gives up having written nothing, and the general path keeps the money as
    a duplicate, to refund."""
    with psycopg.connect(_dsn(live)) as conn:
        conn.execute("UPDATE bill_lines SET status = 'paid'")
    resp = post(live, notification(live, pending["out_trade_no"]))
    assert is_success("wechat", resp), resp.text
    assert spy == [None]
    with psycopg.connect(_dsn(live)) as conn:
        assert conn.execute("SELECT reason, amount_fen FROM refunds").fetchall() == [
            ("duplicate", pending["order"]["amount_fen"])]
        assert conn.execute("SELECT outcome FROM notification_inbox").fetchall() == [
            ("duplicate",)]
        assert conn.execute("SELECT count(*) FROM payments").fetchone() == (1,)


@pytest.mark.parametrize("pending", ["wechat"], indirect=True)
def test_unknown_trade_and_wrong_amount_take_the_general_path(
        live: Live, pending: dict[str, Any], spy: list[Any]) -> None:
    note = notification(live, pending["out_trade_no"], amount_fen=1)
    resp = post(live, note)
    assert not is_success("wechat", resp)
    assert spy == [None]
    with psycopg.connect(_dsn(live)) as conn:
        assert conn.execute("SELECT count(*) FROM payments").fetchone() == (0,)
        assert conn.execute("SELECT outcome FROM notification_inbox").fetchall() == [
            ("amount_mismatch",)]


# ------------------------------------------------------------------ no shared row is locked
SHARED_TABLES = ("ledger_accounts",)


def _locks(dsn: str, pid: int) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return [(str(r[0]), str(r[1])) for r in conn.execute(
            "SELECT relation::regclass::text, mode FROM pg_locks "
            "WHERE pid = %s AND locktype = 'relation' ORDER BY 1, 2", (pid,))]


@pytest.fixture
def two_pending(live: Live) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    orders = _two_orders(live, "wechat")
    # the accounts exist, as after the campaign's first payment (made on first use, the
    # second of two first payments would wait for the first's new account row)
    with unit_of_work(live.rt.sessions) as s:
        ledger.account_ids(s, [ledger.channel_clearing("wechat"),
                               ledger.contributions("medical", 2021)])
    yield orders


@pytest.mark.parametrize("channel", ["wechat"])
def test_the_accounts_it_makes_are_the_ones_python_makes(live: Live, channel: str,
                                                         spy: list[Any]) -> None:
    first, _ = _two_orders(live, channel)
    assert is_success(channel, post(live, notification(live, first["payment"]["out_trade_no"])))
    assert spy and spy[0] is not None
    with psycopg.connect(_dsn(live)) as conn:
        made = set(conn.execute("SELECT code, kind, name FROM ledger_accounts").fetchall())
    want = {(a.code, a.kind, a.name) for a in (ledger.channel_clearing(channel),
                                                ledger.contributions("medical", 2021))}
    assert made == want


@pytest.mark.parametrize("path", ["one_statement", "general"])
def test_concurrent_payments_lock_no_shared_row(live: Live, two_pending: Any, path: str) -> None:
    """Two payments at once, each held open before commit: neither holds more than a plain
    read (AccessShareLock) on the ledger's accounts — no FOR KEY SHARE from a foreign key,
    so no MultiXact on the few account rows every payment posts to — and neither waits for
    the other."""
    dsn = _dsn(live)
    now = datetime.now(UTC).replace(microsecond=0)
    held: list[tuple[int, list[tuple[str, str]]]] = []
    errors: list[BaseException] = []
    both_in = threading.Barrier(2, timeout=20)

    def pay_and_hold(o: dict[str, Any], k: int) -> None:
        try:
            trade = o["payment"]["out_trade_no"]
            txn = f"42000000002020110200000000{k:02d}"
            if path == "one_statement":
                with psycopg.connect(dsn) as conn:
                    pid = conn.info.backend_pid
                    answer = conn.execute(
                        "SELECT apply_channel_notification(%s, %s, %s, %s, %s, %s, %s, %s, "
                        "'{}'::json, 'x', 'notification')",
                        ("wechat", trade, txn, o["amount_fen"], now, business_date(now),
                         now, f"event-{k}")).fetchone()
                    assert answer is not None and str(answer[0]).startswith("applied")
                    both_in.wait()
                    held.append((pid, _locks(dsn, pid)))
                    both_in.wait()
                    conn.commit()
            else:
                with unit_of_work(live.rt.sessions) as s:
                    pid = int(s.connection().exec_driver_sql(
                        "SELECT pg_backend_pid()").scalar_one())
                    confirm_channel_payment(s, ChannelConfirmation(
                        channel="wechat", out_trade_no=trade, transaction_id=txn,
                        amount_fen=o["amount_fen"], paid_at=now, source="notification"))
                    both_in.wait()
                    held.append((pid, _locks(dsn, pid)))
                    both_in.wait()
        except BaseException as exc:   # reported below, from the test's thread
            errors.append(exc)
            both_in.abort()

    threads = [threading.Thread(target=pay_and_hold, args=(o, k))
               for k, o in enumerate(two_pending)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(held) == 2
    for _pid, locks in held:
        assert ("payments", "RowExclusiveLock") in locks      # it did write
        for table in SHARED_TABLES:
            modes = {mode for rel, mode in locks if rel == table}
            assert modes <= {"AccessShareLock"}, (table, modes)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT order_id) FROM payments"
                            ).fetchone() == (2, 2)


@pytest.mark.parametrize("pending", ["alipay"], indirect=True)
def test_served_the_common_case_stays_on_the_event_loop(
        live: Live, pending: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A served app (its lifespan opened the notification pool) applies the common case
    on the event loop: no request thread, so the threads' one-statement path never runs."""
    def not_here(*args: Any, **kw: Any) -> Any:
        raise AssertionError("a thread applied it")

    monkeypatch.setattr(service, "_apply_at_once", not_here)
    monkeypatch.setattr(service, "handle", not_here)
    resp = post(live, notification(live, pending["out_trade_no"]))
    assert is_success("alipay", resp), resp.text
    with psycopg.connect(_dsn(live)) as conn:
        assert conn.execute("SELECT outcome FROM notification_inbox").fetchall() == [
            ("applied",)]


@pytest.mark.parametrize("pending", ["wechat"], indirect=True)
def test_notifications_are_answered_ahead_of_the_router(
        live: Live, pending: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane answers the three notify paths before FastAPI's routing (its routes only
    document them); the body limit around it still counts their bytes."""
    from fastapi.routing import APIRoute

    from backend.notifications import endpoints

    def not_here(*args: Any, **kw: Any) -> Any:
        raise AssertionError("FastAPI's route ran")

    note = notification(live, pending["out_trade_no"])      # (the simulator is a route)
    monkeypatch.setattr(APIRoute, "handle", not_here)
    resp = post(live, note)
    assert is_success("wechat", resp), resp.text
    assert set(endpoints.NotificationLane.PATHS) == {
        "/api/v1/notify/wechat", "/api/v1/notify/alipay", "/api/v1/notify/unionpay"}
    huge = live.http.post("/api/v1/notify/alipay", content=b"x" * (2 << 20),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("pending", ["unionpay"], indirect=True)
def test_no_pool_connection_in_time_the_general_path_takes_it(
        live: Live, pending: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The database down or out of connections: after NOTIFY_POOL_WAIT_S the notification
    goes to the general path (which answers and records it), with a warning, no traceback."""
    from psycopg_pool import PoolTimeout

    async def no_connection(*args: Any, **kw: Any) -> Any:
        raise PoolTimeout("couldn't get a connection after 3.00 sec")

    monkeypatch.setattr(service, "_apply_at_once_async", no_connection)
    with caplog.at_level("WARNING"):
        resp = post(live, notification(live, pending["out_trade_no"]))
    assert is_success("unionpay", resp), resp.text
    with psycopg.connect(_dsn(live)) as conn:
        assert conn.execute("SELECT outcome FROM notification_inbox").fetchall() == [
            ("applied",)]
    warned = [r for r in caplog.records if "notification pool" in r.getMessage()]
    assert warned and not any(r.exc_info for r in warned)
