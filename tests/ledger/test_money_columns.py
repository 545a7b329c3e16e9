"""Money columns are BIGINT, and the database checks each entry's balance once, at commit."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from sqlalchemy import BigInteger, text
from sqlalchemy.exc import DBAPIError

from backend.db import Fen, unit_of_work
from backend.ledger.models import EntryCheck
from backend.ledger.service import (
    REFUNDS,
    Leg,
    agent_cash,
    balance,
    channel_clearing,
    post_entry,
    town_collection,
)
from backend.models import metadata
from backend.runtime import Runtime
from backend.sql import ROWS_PER_INSERT, Statement, Tx

DAY = date(2020, 11, 2)
AT = datetime.fromisoformat("2020-11-02T10:00:00+08:00")
BIG = 3_000_000_000                 # 30 million yuan: past INTEGER's 2,147,483,647

# Integer columns of the money tables that hold no fen: counts, years, positions, and the
# contribution tiers, which are a whole number of yuan chosen from a list (not money held).
# A new integer column in a money table must be BIGINT, or be named here.
NOT_MONEY = {
    ("attempts", "queries"), ("bill_lines", "year"), ("bill_lines", "paid_tier_yuan"),
    ("orders", "year"), ("order_lines", "tier_yuan"),
    ("discrepancies", "line_no"), ("statement_lines", "line_no"),
    ("statement_lines", "duplicate_of"), ("postings", "items"),
    ("department_bills", "year"), ("department_bills", "lines"),
    ("department_bill_lines", "tier_yuan"),
    *(("reconciliation_runs", c) for c in (
        "discrepancies", "held", "matched", "our_payments", "our_refunds", "paired",
        "statement_payments", "statement_refunds")),
}


def _integer_columns(rt: Runtime) -> list[tuple[str, str, str]]:
    with rt.engine.connect() as conn:
        return [(t, c, d) for t, c, d in conn.execute(text(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() "
            "AND data_type IN ('smallint', 'integer', 'bigint', 'numeric')"))]


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_every_money_column_of_the_migrated_database_is_bigint(rt: Runtime) -> None:
    columns = _integer_columns(rt)
    fen = {(t, c): d for t, c, d in columns if c.endswith("_fen")}
    assert len(fen) >= 23 and ("postings", "amount_fen") in fen
    assert {k: d for k, d in fen.items() if d != "bigint"} == {}
    money_tables = {t for t, _ in fen}
    suspects = {(t, c) for t, c, d in columns
                if t in money_tables and d != "bigint" and not c.endswith("_fen")
                and c != "id" and not c.endswith(("_id", "_by"))} - NOT_MONEY
    assert suspects == set(), "hold fen? make them BIGINT (Fen); if not, name them in NOT_MONEY"


def test_every_money_column_of_the_models_is_64_bit() -> None:
    fen = [c for table in metadata.tables.values() for c in table.columns
           if c.name.endswith("_fen")]
    assert len(fen) >= 23
    assert [f"{c.table.name}.{c.name}" for c in fen
            if not isinstance(c.type, Fen | BigInteger)] == []


def test_more_than_2_to_the_31_fen_round_trips_through_the_ledger(rt: Runtime) -> None:
    cash, town = agent_cash(7), town_collection("t1")
    with unit_of_work(rt.sessions) as s:
        post_entry(s, kind="remittance", reason="a town's year, at once", business_date=DAY,
                   occurred_at=AT, legs=[Leg(town, BIG, town_code="t1"),
                                         Leg(cash, -BIG, town_code="t1")])
        post_entry(s, kind="remittance", reason="and one fen more", business_date=DAY,
                   occurred_at=AT, legs=[Leg(town, 1), Leg(cash, -1)])
    with unit_of_work(rt.sessions) as s:
        assert balance(s, town) == BIG + 1
        assert balance(s, cash, business_date=DAY) == -(BIG + 1)
        assert s.scalar(text("SELECT MAX(amount_fen) FROM postings")) == BIG


def _legs(n: int) -> list[Leg]:
    """n postings that balance only all together: the debits first, then the credits."""
    return [Leg(channel_clearing("wechat"), 1)] * (n // 2) + [Leg(REFUNDS, -1)] * (n // 2)


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_an_entry_in_several_inserts_is_noted_once_and_checked_at_commit(rt: Runtime) -> None:
    n = 3 * ROWS_PER_INSERT             # three INSERTs, the first two unbalanced on their own
    with unit_of_work(rt.sessions) as s:
        posted = post_entry(s, kind="correction", reason="long", business_date=DAY,
                            occurred_at=AT, legs=_legs(n))
        assert s.scalar(text("SELECT array_agg(entry_id) FROM ledger_entry_checks")) == [
            posted.entry_id]
    with unit_of_work(rt.sessions) as s:
        assert s.scalar(text("SELECT COUNT(*) FROM postings")) == n
        assert s.scalar(text(f"SELECT COUNT(*) FROM {EntryCheck.__tablename__}")) == 0


def _raw_entry(tx: Tx) -> int:
    row = tx.one(_ENTRY)
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_the_database_refuses_an_entry_unbalanced_across_inserts(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        post_entry(s, kind="correction", reason="accounts", business_date=DAY,
                   occurred_at=AT, legs=_legs(2))
    account = _account(rt)
    with pytest.raises(DBAPIError, match="does not balance: its postings sum to 1 fen"):
        with unit_of_work(rt.sessions) as s:
            tx = Tx(s)
            entry = _raw_entry(tx)
            rows = [(entry, account, 1, DAY)] * (ROWS_PER_INSERT + 1) + \
                [(entry, account, -1, DAY)] * ROWS_PER_INSERT
            tx.insert_rows("postings", ("entry_id", "account_id", "amount_fen",
                                        "business_date"), rows)
    with unit_of_work(rt.sessions) as s:
        assert s.scalar(text("SELECT COUNT(*) FROM journal_entries")) == 1


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_a_posting_added_later_to_an_old_entry_is_caught(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        old = post_entry(s, kind="correction", reason="old", business_date=DAY,
                         occurred_at=AT, legs=_legs(2)).entry_id
    account = _account(rt)
    with pytest.raises(DBAPIError, match=f"journal entry {old} does not balance"):
        with unit_of_work(rt.sessions) as s:
            post_entry(s, kind="correction", reason="new", business_date=DAY,
                       occurred_at=AT, legs=_legs(2))
            Tx(s).insert_rows("postings", ("entry_id", "account_id", "amount_fen",
                                           "business_date"), [(old, account, 5, DAY)])
    with unit_of_work(rt.sessions) as s:
        assert s.scalar(text("SELECT COUNT(*) FROM postings")) == 2
        assert s.scalar(text("SELECT SUM(amount_fen) FROM postings WHERE entry_id = :e"),
                        {"e": old}) == 0


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_postings_rolled_back_to_a_savepoint_are_not_checked(rt: Runtime) -> None:
    """The payment flow posts inside a savepoint it may roll back to: the entry noted there
    goes with it, and what the transaction keeps is checked."""
    account = _account(rt)
    with unit_of_work(rt.sessions) as s:
        tx = Tx(s)
        s.execute(text("SAVEPOINT p"))
        entry = _raw_entry(tx)
        tx.insert_rows("postings", ("entry_id", "account_id", "amount_fen", "business_date"),
                       [(entry, account, 5, DAY)])
        s.execute(text("ROLLBACK TO SAVEPOINT p"))
        post_entry(s, kind="correction", reason="kept", business_date=DAY, occurred_at=AT,
                   legs=_legs(4))
    with unit_of_work(rt.sessions) as s:
        assert s.scalar(text("SELECT COUNT(*) FROM postings")) == 4 + 2


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_postings_after_an_immediate_check_are_checked_again(rt: Runtime) -> None:
    account = _account(rt)
    with pytest.raises(DBAPIError, match="does not balance: its postings sum to 7 fen"):
        with unit_of_work(rt.sessions) as s:
            entry = post_entry(s, kind="correction", reason="checked early", business_date=DAY,
                               occurred_at=AT, legs=_legs(2)).entry_id
            s.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))      # checked here: balanced
            assert s.scalar(text("SELECT COUNT(*) FROM ledger_entry_checks")) == 0
            s.execute(text("SET CONSTRAINTS ALL DEFERRED"))
            Tx(s).insert_rows("postings", ("entry_id", "account_id", "amount_fen",
                                           "business_date"), [(entry, account, 7, DAY)])


def _account(rt: Runtime) -> int:
    with unit_of_work(rt.sessions) as s:
        if s.scalar(text("SELECT COUNT(*) FROM ledger_accounts")) == 0:
            post_entry(s, kind="correction", reason="accounts", business_date=DAY,
                       occurred_at=AT, legs=_legs(2))
    with unit_of_work(rt.sessions) as s:
        return int(s.scalar(text("SELECT MIN(id) FROM ledger_accounts")) or 0)


_ENTRY = Statement(
    "INSERT INTO journal_entries (kind, reason, business_date, occurred_at, created_at) "
    "VALUES ('x', 'x', '2020-11-02', now(), now()) RETURNING id", prepare=False)
