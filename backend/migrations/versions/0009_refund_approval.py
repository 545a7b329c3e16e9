"""refunds requested by finance and approved by another finance user, by channel or cash;
refund_lines say which payment lines each refund gives back

The refunds already there are automatic refunds of duplicate payments: they are marked
approved by the system, and their lines are the payment's duplicate (not applied) lines.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import backend.db

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.alter_column('reason', existing_type=sqlmodel.sql.sqltypes.AutoString(length=32),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=80),
                              existing_nullable=False)
        batch_op.add_column(sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=8),
                                      server_default='channel', nullable=False))
        for name in ('requested_by', 'approved_by', 'rejected_by'):
            batch_op.add_column(sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=96),
                                          nullable=True))
        for name in ('requested_at', 'approved_at', 'rejected_at'):
            batch_op.add_column(sa.Column(name, backend.db.UTCDateTime(timezone=True),
                                          nullable=True))
        batch_op.add_column(sa.Column('reject_reason',
                                      sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column('cash_agent_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('cash_receipt_no',
                                      sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.create_foreign_key('fk_refunds_cash_agent_id_staff_users', 'staff_users',
                                    ['cash_agent_id'], ['id'])
        batch_op.create_unique_constraint('uq_refund_cash_receipt',
                                          ['cash_agent_id', 'cash_receipt_no'])
        batch_op.create_index(batch_op.f('ix_refunds_status'), ['status'], unique=False)

    op.create_table('refund_lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('refund_id', sa.Integer(), nullable=False),
    sa.Column('payment_line_id', sa.Integer(), nullable=False),
    sa.Column('amount_fen', sa.Integer(), nullable=False),
    sa.Column('applied', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['payment_line_id'], ['payment_lines.id'], ),
    sa.ForeignKeyConstraint(['refund_id'], ['refunds.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('refund_id', 'payment_line_id', name='uq_refund_line')
    )
    with op.batch_alter_table('refund_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refund_lines_payment_line_id'), ['payment_line_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_refund_lines_refund_id'), ['refund_id'],
                              unique=False)

    # The refunds so far were made by the system for duplicates: approved when made, and
    # giving back the payment's duplicate lines.
    op.execute("UPDATE refunds SET requested_by = 'system', approved_by = 'system', "
               "requested_at = created_at, approved_at = created_at")
    op.execute("INSERT INTO refund_lines (refund_id, payment_line_id, amount_fen, applied) "
               "SELECT refunds.id, payment_lines.id, payment_lines.amount_fen, false "
               "FROM refunds JOIN payment_lines ON payment_lines.payment_id = refunds.payment_id "
               "AND NOT payment_lines.applied")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM refunds WHERE requested_by <> 'system'"
                            )).scalar():
        raise RuntimeError("refunds requested by finance exist; the schema before 0009 cannot "
                           "hold who asked and who approved them, nor cash refunds")
    with op.batch_alter_table('refund_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refund_lines_refund_id'))
        batch_op.drop_index(batch_op.f('ix_refund_lines_payment_line_id'))
    op.drop_table('refund_lines')
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refunds_status'))
        batch_op.drop_constraint('uq_refund_cash_receipt', type_='unique')
        batch_op.drop_constraint('fk_refunds_cash_agent_id_staff_users', type_='foreignkey')
        for name in ('cash_receipt_no', 'cash_agent_id', 'reject_reason', 'rejected_at',
                     'approved_at', 'requested_at', 'rejected_by', 'approved_by',
                     'requested_by', 'method'):
            batch_op.drop_column(name)
        batch_op.alter_column('reason', existing_type=sqlmodel.sql.sqltypes.AutoString(length=80),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=32),
                              existing_nullable=False)
