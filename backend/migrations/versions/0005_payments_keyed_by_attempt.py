"""a channel trade (attempt) is paid at most once; a transaction id shared by two trades is
an anomaly to record, not a repeat to drop (kept once a query settles it, marked shared)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shared_transaction', sa.Boolean(), nullable=False,
                                      server_default=sa.text('false')))
        batch_op.drop_constraint('uq_payment_txn', type_='unique')
        batch_op.drop_index('ix_payments_attempt_id')
        batch_op.create_index('uq_payment_attempt', ['attempt_id'], unique=True,
                              postgresql_where=sa.text('attempt_id IS NOT NULL'),
                              sqlite_where=sa.text('attempt_id IS NOT NULL'))
        batch_op.create_index('uq_payment_txn_once', ['channel', 'transaction_id'],
                              unique=True, postgresql_where=sa.text('NOT shared_transaction'),
                              sqlite_where=sa.text('NOT shared_transaction'))


def downgrade() -> None:
    shared = op.get_bind().execute(
        sa.text("SELECT count(*) FROM payments WHERE shared_transaction")).scalar()
    if shared:
        raise RuntimeError(f"{shared} payments share a transaction id with another trade (a "
                           "channel's anomaly, settled by query): the previous schema can not "
                           "hold them; resolve them with the channel before downgrading")
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index('uq_payment_txn_once')
        batch_op.drop_index('uq_payment_attempt')
        batch_op.create_index('ix_payments_attempt_id', ['attempt_id'], unique=False)
        batch_op.create_unique_constraint('uq_payment_txn', ['channel', 'transaction_id'])
        batch_op.drop_column('shared_transaction')
