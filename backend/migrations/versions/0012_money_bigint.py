"""money is BIGINT; the ledger checks an entry's balance once per entry, not once per posting

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01

On PostgreSQL every column that holds fen becomes BIGINT: INTEGER stops at 2^31 - 1 fen
(21,474,836.47 yuan), less than a town collects in a year, and a single remittance or POS
settlement can come near it. SQLite's INTEGER is already a 64-bit integer, whatever the
declared type: nothing there changes (``backend.db.Fen``).

The balance check of 0003 was a deferred constraint trigger FOR EACH ROW on postings: at
commit, every posting summed all the postings of its entry — n² rows read for an entry of n
postings (``bench/README.md``, "Ledger entry"). Now a statement-level trigger notes each
entry a statement posted to, once, in ``ledger_entry_checks``; a deferred constraint trigger
on that row sums the entry's postings once at commit and removes the row. An entry written
in several INSERTs (``Tx.insert_rows`` chunks of 500) is noted once and checked once, with
all its postings in; postings added later to an old entry note it again, and the check
refuses them unless the entry still balances — as before.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# Every column that holds fen, by table. (reconciliation_runs' sums are BIGINT since 0008.)
MONEY_COLUMNS: dict[str, tuple[str, ...]] = {
    'orders': ('amount_fen',),
    'order_lines': ('amount_fen',),
    'attempts': ('amount_fen',),
    'bill_lines': ('paid_fen',),
    'payments': ('amount_fen',),
    'payment_lines': ('amount_fen',),
    'refunds': ('amount_fen',),
    'refund_lines': ('amount_fen',),
    'remittances': ('amount_fen',),
    'postings': ('amount_fen',),
    'statement_lines': ('amount_fen', 'fee_fen', 'our_amount_fen'),
    'discrepancies': ('our_amount_fen', 'channel_amount_fen', 'expected_fee_fen',
                      'channel_fee_fen'),
}
INT32_MAX = 2**31 - 1


def upgrade() -> None:
    op.create_table(
        'ledger_entry_checks',
        sa.Column('entry_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint('entry_id'),
    )
    if op.get_bind().dialect.name != 'postgresql':
        return
    # One ALTER TABLE per table: its columns change in one rewrite. No view or trigger
    # depends on a money column's type (the ledger's triggers read amount_fen only in their
    # functions' bodies, which are planned anew).
    for table, columns in MONEY_COLUMNS.items():
        op.execute(f"ALTER TABLE {table} " + ", ".join(
            f"ALTER COLUMN {c} TYPE BIGINT" for c in columns))
    op.execute("DROP TRIGGER postings_balanced ON postings")
    op.execute("DROP FUNCTION ledger_entry_balanced()")
    op.execute("""
        CREATE FUNCTION ledger_note_entries() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO ledger_entry_checks (entry_id)
            SELECT DISTINCT entry_id FROM new_postings
            ON CONFLICT (entry_id) DO NOTHING;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER postings_note_entries AFTER INSERT ON postings
        REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT
        EXECUTE FUNCTION ledger_note_entries()""")
    op.execute("""
        CREATE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            total numeric;
        BEGIN
            SELECT COALESCE(SUM(amount_fen), 0) INTO total FROM postings
            WHERE entry_id = NEW.entry_id;
            IF total <> 0 THEN
                RAISE EXCEPTION 'journal entry % does not balance: its postings sum to % fen',
                    NEW.entry_id, total;
            END IF;
            DELETE FROM ledger_entry_checks WHERE entry_id = NEW.entry_id;
            RETURN NULL;
        END $$""")
    # Checked at commit, once every posting of the entry is in.
    op.execute("""
        CREATE CONSTRAINT TRIGGER ledger_entry_balanced AFTER INSERT ON ledger_entry_checks
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        EXECUTE FUNCTION ledger_check_entry()""")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER ledger_entry_balanced ON ledger_entry_checks")
        op.execute("DROP TRIGGER postings_note_entries ON postings")
        op.execute("DROP FUNCTION ledger_check_entry()")
        op.execute("DROP FUNCTION ledger_note_entries()")
        # 0003's check, as it was
        op.execute("""
            CREATE FUNCTION ledger_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF (SELECT COALESCE(SUM(amount_fen), 0) FROM postings
                    WHERE entry_id = NEW.entry_id) <> 0 THEN
                    RAISE EXCEPTION 'journal entry % does not balance', NEW.entry_id;
                END IF;
                RETURN NULL;
            END $$""")
        op.execute("""
            CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            EXECUTE FUNCTION ledger_entry_balanced()""")
        _refuse_to_truncate_money()
        for table, columns in MONEY_COLUMNS.items():
            op.execute(f"ALTER TABLE {table} " + ", ".join(
                f"ALTER COLUMN {c} TYPE INTEGER" for c in columns))
    op.drop_table('ledger_entry_checks')


def _refuse_to_truncate_money() -> None:
    """Back to INTEGER only if every amount fits: name the first column that would not."""
    bind = op.get_bind()
    for table, columns in MONEY_COLUMNS.items():
        for c in columns:
            if bind.execute(sa.text(f"SELECT 1 FROM {table} WHERE abs({c}) > {INT32_MAX} "
                                    "LIMIT 1")).first() is not None:
                raise RuntimeError(f"{table}.{c} holds amounts past 2^31 - 1 fen: they do "
                                   "not fit the INTEGER of revision 0011")
