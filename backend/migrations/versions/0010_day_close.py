"""closing a business day: closed_days, and the day an entry was for when it posts later

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'closed_days',
        sa.Column('business_date', sa.Date(), nullable=False),
        sa.Column('closed_by', sa.Integer(), nullable=False),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('totals', sa.JSON(), nullable=False),
        sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.ForeignKeyConstraint(['closed_by'], ['staff_users.id']),
        sa.PrimaryKeyConstraint('business_date'),
    )
    # Plain ADD COLUMN and CREATE INDEX (no batch copy of the table on SQLite): the ledger's
    # append-only triggers stay as they are.
    op.add_column('journal_entries', sa.Column('for_date', sa.Date(), nullable=True))
    op.create_index('ix_journal_entries_corrections', 'journal_entries', ['business_date'],
                    postgresql_where=sa.text('for_date IS NOT NULL'),
                    sqlite_where=sa.text('for_date IS NOT NULL'))
    op.create_index('uq_pos_remittance_payment', 'journal_entries', ['payment_id'], unique=True,
                    postgresql_where=sa.text("kind = 'pos_remittance'"),
                    sqlite_where=sa.text("kind = 'pos_remittance'"))
    # A closed day stays closed: the database refuses to change or delete one.
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("""
            CREATE FUNCTION closed_day_final() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'a closed day stays closed: % on closed_days refused', TG_OP;
            END $$""")
        op.execute("""
            CREATE TRIGGER closed_days_final BEFORE UPDATE OR DELETE ON closed_days
            FOR EACH ROW EXECUTE FUNCTION closed_day_final()""")
    else:
        for action in ('UPDATE', 'DELETE'):
            op.execute(f"""
                CREATE TRIGGER closed_days_no_{action.lower()} BEFORE {action} ON closed_days
                BEGIN SELECT RAISE(ABORT, 'a closed day stays closed'); END""")


def downgrade() -> None:
    bind = op.get_bind()
    moved = bind.execute(sa.text(
        "SELECT count(*) FROM journal_entries WHERE for_date IS NOT NULL")).scalar()
    if moved:
        raise RuntimeError(f"{moved} journal entries were posted into a later day because "
                           "their day was closed; downgrading would lose which day they were "
                           "for")
    if bind.dialect.name == 'postgresql':
        op.execute("DROP TRIGGER IF EXISTS closed_days_final ON closed_days")
        op.execute("DROP FUNCTION IF EXISTS closed_day_final()")
    op.drop_index('uq_pos_remittance_payment', table_name='journal_entries')
    op.drop_index('ix_journal_entries_corrections', table_name='journal_entries')
    # SQLite's DROP COLUMN keeps the table (and its triggers) in place.
    op.drop_column('journal_entries', 'for_date')
    op.drop_table('closed_days')
