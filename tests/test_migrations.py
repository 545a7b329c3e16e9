"""Migrations: they build what the models describe, and they carry existing money along."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy import inspect as sa_inspect

from backend.migrate import alembic_config, upgrade
from backend.models import metadata
from tests.conftest import PG_ADMIN, _unavailable


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.sqlite3'}"
        return
    name = f"rc_migrate_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _engine(url: str):  # type: ignore[no-untyped-def]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url)


def test_the_migrations_build_what_the_models_describe(empty_db: str) -> None:
    upgrade(empty_db)
    engine = _engine(empty_db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_payments_keep_their_rows_through_the_key_change(empty_db: str) -> None:
    """0005 moves the payment key from the transaction id to the trade: the money recorded
    before stays, with every row that refers to it."""
    upgrade(empty_db, "0004")
    engine = _engine(empty_db)
    with engine.begin() as conn:
        for sql in SEED_0004:
            conn.execute(text(sql))
    engine.dispose()
    upgrade(empty_db)
    engine = _engine(empty_db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT attempt_id, transaction_id, amount_fen FROM payments"
                                 )).all() == [(1, "4200", 28000)]
        assert conn.execute(text("SELECT payment_id FROM payment_lines")).scalar() == 1
    engine.dispose()


def test_downgrading_refuses_to_lose_a_shared_transaction_id(empty_db: str) -> None:
    upgrade(empty_db)
    engine = _engine(empty_db)
    with engine.begin() as conn:
        for sql in [*SEED_0004[:5], SECOND_ATTEMPT, *(PAYMENT.format(
                id=n, attempt=n, shared=shared) for n, shared in ((1, "false"), (2, "true")))]:
            conn.execute(text(sql))
    engine.dispose()
    with pytest.raises(RuntimeError, match="share a transaction id"):
        command.downgrade(alembic_config(empty_db), "0004")
    engine = _engine(empty_db)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM payments WHERE shared_transaction"))
    engine.dispose()
    command.downgrade(alembic_config(empty_db), "0004")
    upgrade(empty_db)


def test_money_goes_back_to_integer_only_if_it_fits(empty_db: str) -> None:
    """0012 makes the money BIGINT and the balance check once per entry; its downgrade
    brings back 0011's INTEGER and per-posting check, but never cuts an amount short."""
    upgrade(empty_db)
    engine = _engine(empty_db)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for sql in SEED_0004[:4]:
            conn.execute(text(sql))
        conn.execute(text("UPDATE orders SET amount_fen = 3000000000"))
    engine.dispose()
    if postgres:
        with pytest.raises(RuntimeError, match="orders.amount_fen holds amounts past 2"):
            command.downgrade(alembic_config(empty_db), "0011")
        engine = _engine(empty_db)
        with engine.begin() as conn:
            conn.execute(text("UPDATE orders SET amount_fen = 28000"))
        engine.dispose()
    command.downgrade(alembic_config(empty_db), "0011")
    engine = _engine(empty_db)
    with engine.connect() as conn:
        # (SQLite's INTEGER held the 30 million yuan all along, and still does)
        assert conn.execute(text("SELECT amount_fen FROM orders")).scalar() == (
            28000 if postgres else 3000000000)
        if postgres:
            assert conn.execute(text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'postings' AND column_name = 'amount_fen'")).scalar() \
                == "integer"
            assert conn.execute(text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'postings'::regclass "
                "AND NOT tgisinternal ORDER BY 1")).scalars().all() == [
                "postings_append_only", "postings_balanced"]
    engine.dispose()
    upgrade(empty_db)
    engine = _engine(empty_db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


SEED_0004 = (
    "INSERT INTO towns (code, name) VALUES ('t', 'T')",
    "INSERT INTO villages (code, name, town_code) VALUES ('v', 'V', 't')",
    "INSERT INTO residents (id, id_hash, id_enc, id_masked, birth_date, name, village_code, "
    "hukou_type, employee_pension, employee_medical, student, categories, created_at, "
    "updated_at) VALUES (1, 'h', 'e', 'm', '1970-01-01', 'n', 'v', 'local', false, false, "
    "false, '', '2020-11-02 01:00:00', '2020-11-02 01:00:00')",
    "INSERT INTO orders (id, order_no, payer_sub, payer_role, year, channel, status, "
    "amount_fen, expires_at, created_at, updated_at) VALUES (1, 'O1', 'wx:a', 'resident', "
    "2021, 'wechat_native', 'paid', 28000, '2020-11-02 01:15:00', '2020-11-02 01:00:00', "
    "'2020-11-02 01:00:00')",
    "INSERT INTO attempts (id, order_id, channel, kind, out_trade_no, amount_fen, status, "
    "expires_at, queries, created_at, updated_at) VALUES (1, 1, 'wechat', 'native', 'O101', "
    "28000, 'paid', '2020-11-02 01:15:00', 0, '2020-11-02 01:00:00', '2020-11-02 01:00:00')",
    "INSERT INTO payments (id, attempt_id, order_id, channel, transaction_id, amount_fen, "
    "paid_at, business_date, source, refund_queued_fen, created_at) VALUES (1, 1, 1, "
    "'wechat', '4200', 28000, '2020-11-02 01:05:00', '2020-11-02', 'notification', 0, "
    "'2020-11-02 01:05:00')",
    "INSERT INTO bill_lines (id, resident_id, year, insurance, status, created_at) "
    "VALUES (1, 1, 2021, 'medical', 'paid', '2020-11-02 01:00:00')",
    "INSERT INTO payment_lines (payment_id, bill_line_id, amount_fen, applied) "
    "VALUES (1, 1, 28000, true)",
)
# today's schema: a second trade, paid under the first one's transaction id as a query
# settled it (shared)
SECOND_ATTEMPT = (
    "INSERT INTO attempts (id, order_id, channel, kind, out_trade_no, amount_fen, status, "
    "expires_at, queries, created_at, updated_at) VALUES (2, 1, 'wechat', 'native', 'O102', "
    "28000, 'paid', '2020-11-02 01:15:00', 0, '2020-11-02 01:00:00', '2020-11-02 01:00:00')")
PAYMENT = (
    "INSERT INTO payments (id, attempt_id, order_id, channel, transaction_id, amount_fen, "
    "paid_at, business_date, source, shared_transaction, created_at) VALUES ({id}, {attempt}, "
    "1, 'wechat', '4200', 28000, '2020-11-02 01:05:00', '2020-11-02', 'query', {shared}, "
    "'2020-11-02 01:05:00')")


def test_postings_key_comes_back_on_downgrade_with_the_ledger_kept(empty_db: str) -> None:
    """0015 drops the postings → ledger_accounts key for triggers; its downgrade brings the
    key back (with the ledger's rows and its append-only rule), and upgrading again works."""
    upgrade(empty_db)
    engine = _engine(empty_db)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for sql in LEDGER_ROWS:
            conn.execute(text(sql))
    engine.dispose()
    command.downgrade(alembic_config(empty_db), "0014")
    engine = _engine(empty_db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT entry_id, account_id, amount_fen FROM postings "
                                 "ORDER BY id")).all() == [(1, 1, 100), (1, 2, -100)]
        if postgres:
            assert conn.execute(text(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'postings'::regclass "
                "AND contype = 'f' AND confrelid = 'ledger_accounts'::regclass")).scalar() == 1
            assert conn.execute(text(
                "SELECT count(*) FROM pg_proc WHERE proname = 'apply_channel_notification'"
            )).scalar() == 0
        else:
            keys = conn.execute(text("PRAGMA foreign_key_list(postings)")).all()
            assert {row[2] for row in keys} == {"journal_entries", "ledger_accounts"}
            assert conn.execute(text("PRAGMA foreign_key_check(postings)")).all() == []
    with engine.begin() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("UPDATE postings SET amount_fen = 1"))
    engine.dispose()
    upgrade(empty_db)
    engine = _engine(empty_db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert conn.execute(text("SELECT count(*) FROM postings")).scalar() == 2
    engine.dispose()
    assert diff == []


LEDGER_ROWS = (
    "INSERT INTO ledger_accounts (id, code, kind, name, created_at) VALUES "
    "(1, 'channel_clearing:wechat', 'channel_clearing', 'w', '2020-11-01 00:00:00'), "
    "(2, 'contributions:medical:2021', 'contributions', 'm', '2020-11-01 00:00:00')",
    "INSERT INTO journal_entries (id, kind, reason, business_date, occurred_at, created_at) "
    "VALUES (1, 'correction', 'r', '2020-11-01', '2020-11-01 00:00:00', "
    "'2020-11-01 00:00:00')",
    "INSERT INTO postings (id, entry_id, account_id, amount_fen, business_date, items) VALUES "
    "(1, 1, 1, 100, '2020-11-01', 1), (2, 1, 2, -100, '2020-11-01', 1)",
)


# The columns a payment updates (apply_channel_notification, payment_flow): none may be
# indexed, or the update can not be HOT (a new entry in every index of the table).
PAID_COLUMNS = {
    "orders": {"status", "paid_at", "channel_transaction_id", "updated_at"},
    "attempts": {"status", "transaction_id", "paid_at", "updated_at"},
    "bill_lines": {"status", "paid_payment_id", "paid_at", "paid_tier_yuan", "paid_fen"},
}


def test_a_payments_updates_have_room_on_the_page_and_touch_no_index(empty_db: str) -> None:
    """0016: the tables a payment updates leave room on their pages (fillfactor 80), and no
    column a payment changes is in an index; its downgrade puts both back."""
    upgrade(empty_db)
    engine = _engine(empty_db)
    postgres = engine.dialect.name == "postgresql"

    def state() -> tuple[dict[str, object], set[str]]:
        with engine.connect() as conn:
            if postgres:
                fill = {t: conn.execute(text(
                    "SELECT reloptions FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                    {"t": t}).scalar() for t in PAID_COLUMNS}
                indexed = {f"{t}.{c}" for t in PAID_COLUMNS for (c,) in conn.execute(text(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON "
                    "a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = CAST(:t AS regclass)"), {"t": t})}
            else:
                fill = {}
                indexed = {f"{t}.{row[2]}" for t in PAID_COLUMNS
                           for (name,) in conn.execute(text(
                               f"SELECT name FROM pragma_index_list('{t}')"))
                           for row in conn.execute(text(f"PRAGMA index_info('{name}')"))}
        return fill, indexed

    fill, indexed = state()
    assert not {f"{t}.{c}" for t, cols in PAID_COLUMNS.items() for c in cols} & indexed
    assert "orders.payer_sub" not in indexed
    if postgres:
        assert fill == {t: ["fillfactor=80"] for t in PAID_COLUMNS}
    engine.dispose()
    command.downgrade(alembic_config(empty_db), "0015")
    fill, indexed = state()
    assert "orders.payer_sub" in indexed
    if postgres:
        assert fill == {t: None for t in PAID_COLUMNS}
    engine.dispose()
    upgrade(empty_db)


def test_notification_rejections_come_and_go_with_0017(empty_db: str) -> None:
    """0017 adds the table rejected notifications are counted in; its downgrade drops it, and
    upgrading again works."""
    upgrade(empty_db)
    command.downgrade(alembic_config(empty_db), "0016")
    engine = _engine(empty_db)
    with engine.connect() as conn:
        assert "notification_rejections" not in sa_inspect(conn).get_table_names()
    engine.dispose()
    upgrade(empty_db)
    engine = _engine(empty_db)
    with engine.connect() as conn:
        assert "notification_rejections" in sa_inspect(conn).get_table_names()
    engine.dispose()


def test_receipt_reports_come_and_go_with_0019(empty_db: str) -> None:
    """0019 adds the table residents' reports of paper receipts are kept in; its downgrade
    drops it (with its indexes), and upgrading again works."""
    upgrade(empty_db)
    command.downgrade(alembic_config(empty_db), "0018")
    engine = _engine(empty_db)
    with engine.connect() as conn:
        assert "receipt_reports" not in sa_inspect(conn).get_table_names()
    engine.dispose()
    upgrade(empty_db)
    engine = _engine(empty_db)
    with engine.connect() as conn:
        assert "receipt_reports" in sa_inspect(conn).get_table_names()
        indexes = {i["name"] for i in sa_inspect(conn).get_indexes("receipt_reports")}
        assert "ix_receipt_reports_village_receipt" in indexes
    engine.dispose()


SEED_0020_REPORT = (
    "INSERT INTO towns (code, name) VALUES ('t', 'T')",
    "INSERT INTO villages (code, name, town_code) VALUES ('v', 'V', 't')",
    "INSERT INTO receipt_reports (id, report_no, village_code, town_code, paper_receipt_no, "
    "amount_fen, paid_on, note, kind, status, client_hash, created_at) VALUES (1, "
    "'J2020110200000001', 'v', 't', 'SJ-1', 38000, '2020-11-01', :note, 'unknown_receipt', "
    "'open', 'h', '2020-11-02 01:00:00')",
    "INSERT INTO receipt_reports (id, report_no, village_code, town_code, paper_receipt_no, "
    "amount_fen, paid_on, note, kind, status, client_hash, created_at) VALUES (2, "
    "'J2020110200000002', 'v', 't', 'SJ-2', 38000, '2020-11-01', NULL, 'unknown_receipt', "
    "'open', 'h', '2020-11-02 01:00:00')",
)


def test_0021_encrypts_the_notes_it_finds_and_its_downgrade_decrypts_them(
        empty_db: str) -> None:
    """0021 carries a plaintext note into ``note_encrypted`` under the PII key (the key the
    caller gives, else the service's settings) and drops ``note``; its downgrade brings the
    plaintext back."""
    from backend.security.pii import PiiVault

    key = b"m" * 32
    vault = PiiVault(key)
    note = "电话 13812345678"
    upgrade(empty_db, "0020")
    engine = _engine(empty_db)
    with engine.begin() as conn:
        for sql in SEED_0020_REPORT:
            conn.execute(text(sql), {"note": note})
    engine.dispose()
    cfg = alembic_config(empty_db)
    cfg.attributes["pii_key"] = key
    command.upgrade(cfg, "0021")
    engine = _engine(empty_db)
    with engine.connect() as conn:
        columns = {c["name"] for c in sa_inspect(conn).get_columns("receipt_reports")}
        assert "note" not in columns and {"note_encrypted", "closed_by", "closed_at",
                                          "close_reason"} <= columns
        rows = conn.execute(text("SELECT id, note_encrypted FROM receipt_reports "
                                 "ORDER BY id")).all()
    engine.dispose()
    assert rows[1] == (2, None)
    assert "13812345678" not in rows[0][1]
    assert vault.decrypt(rows[0][1], "report-note") == note

    command.downgrade(cfg, "0020")
    engine = _engine(empty_db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT note FROM receipt_reports ORDER BY id")).scalars(
            ).all() == [note, None]
    engine.dispose()
    command.upgrade(cfg, "head")
