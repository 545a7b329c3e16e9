"""receipts: every payment's receipt, fixed when it is first issued

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08

A receipt (缴费凭证) is issued the first time anything asks for it (the order answer once
paid, the agent's collection answer, the department bill's cover, the receipt endpoints):
its canonical content and the Ed25519 signature over it are written once and never changed,
so a later refund or a corrected name in the registry does not alter what was issued. The
receipt number (``R`` + business date + payment id) is derived from the payment; the unique
payment_id makes a second issue of the same payment's receipt a no-op.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import backend.db

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'receipts',
        sa.Column('receipt_no', sa.String(length=24), nullable=False),
        sa.Column('payment_id', sa.Integer(), nullable=False),
        sa.Column('canonical', sa.Text(), nullable=False),
        sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=88), nullable=False),
        sa.Column('issued_at', backend.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['payment_id'], ['payments.id']),
        sa.PrimaryKeyConstraint('receipt_no'),
        sa.UniqueConstraint('payment_id'),
    )
    # What was issued stays as it was: the database refuses to change or remove a receipt.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION receipts_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'receipts are immutable: % refused', TG_OP;
            END $$""")
        op.execute("""
            CREATE TRIGGER receipts_immutable BEFORE UPDATE OR DELETE ON receipts
            FOR EACH ROW EXECUTE FUNCTION receipts_immutable()""")
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(f"""
                CREATE TRIGGER receipts_no_{action.lower()} BEFORE {action} ON receipts
                BEGIN SELECT RAISE(ABORT, 'receipts are immutable'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS receipts_immutable ON receipts")
        op.execute("DROP FUNCTION IF EXISTS receipts_immutable()")
    else:
        for action in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS receipts_no_{action}")
    op.drop_table('receipts')
