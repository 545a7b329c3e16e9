"""department bills (代缴通知单): bills, their lines, transfers, credit notes; bill lines a
bill claims; postings that stand for several items

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import backend.db

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

CLAIM_FK = 'fk_bill_lines_claim_bill_id'


def upgrade() -> None:
    op.create_table('department_bills',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bill_no', sa.String(length=32), nullable=False),
    sa.Column('department', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('town_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('total_fen', backend.db.Fen(), nullable=False),
    sa.Column('lines', sa.Integer(), nullable=False),
    sa.Column('received_fen', backend.db.Fen(), nullable=False),
    sa.Column('credited_fen', backend.db.Fen(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('late_list', sa.Boolean(), nullable=False),
    sa.Column('issued_by', sqlmodel.sql.sqltypes.AutoString(length=96), nullable=False),
    sa.Column('issued_at', backend.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('issued_on', sa.Date(), nullable=False),
    sa.Column('payment_id', sa.Integer(), nullable=True),
    sa.Column('paid_at', backend.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['payment_id'], ['payments.id'], ),
    sa.ForeignKeyConstraint(['town_code'], ['towns.code'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('bill_no')
    )
    with op.batch_alter_table('department_bills', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_department_bills_town_code'), ['town_code'], unique=False)

    op.create_table('department_credit_notes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('credit_no', sa.String(length=32), nullable=False),
    sa.Column('bill_id', sa.Integer(), nullable=False),
    sa.Column('amount_fen', backend.db.Fen(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('issued_by', sqlmodel.sql.sqltypes.AutoString(length=96), nullable=False),
    sa.Column('issued_at', backend.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('entry_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['bill_id'], ['department_bills.id'], ),
    sa.ForeignKeyConstraint(['entry_id'], ['journal_entries.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('credit_no')
    )
    with op.batch_alter_table('department_credit_notes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_department_credit_notes_bill_id'), ['bill_id'], unique=False)

    op.create_table('department_bill_lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bill_id', sa.Integer(), nullable=False),
    sa.Column('bill_line_id', sa.Integer(), nullable=False),
    sa.Column('resident_id', sa.Integer(), nullable=False),
    sa.Column('insurance', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('tier_yuan', sa.Integer(), nullable=True),
    sa.Column('amount_fen', backend.db.Fen(), nullable=False),
    sa.Column('village_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['bill_id'], ['department_bills.id'], ),
    sa.ForeignKeyConstraint(['bill_line_id'], ['bill_lines.id'], ),
    sa.ForeignKeyConstraint(['resident_id'], ['residents.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('bill_id', 'bill_line_id', name='uq_department_bill_line')
    )
    with op.batch_alter_table('department_bill_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_department_bill_lines_bill_id'), ['bill_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_department_bill_lines_bill_line_id'), ['bill_line_id'], unique=False)

    op.create_table('department_transfers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bill_id', sa.Integer(), nullable=False),
    sa.Column('amount_fen', backend.db.Fen(), nullable=False),
    sa.Column('bank_reference', sa.String(length=64), nullable=False),
    sa.Column('value_date', sa.Date(), nullable=False),
    sa.Column('recorded_by', sqlmodel.sql.sqltypes.AutoString(length=96), nullable=False),
    sa.Column('recorded_at', backend.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('entry_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['bill_id'], ['department_bills.id'], ),
    sa.ForeignKeyConstraint(['entry_id'], ['journal_entries.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('bank_reference')
    )
    with op.batch_alter_table('department_transfers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_department_transfers_bill_id'), ['bill_id'], unique=False)

    op.create_table('department_credit_lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('credit_note_id', sa.Integer(), nullable=False),
    sa.Column('department_bill_line_id', sa.Integer(), nullable=False),
    sa.Column('amount_fen', backend.db.Fen(), nullable=False),
    sa.Column('refund_fen', backend.db.Fen(), nullable=False),
    sa.ForeignKeyConstraint(['credit_note_id'], ['department_credit_notes.id'], ),
    sa.ForeignKeyConstraint(['department_bill_line_id'], ['department_bill_lines.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('department_bill_line_id', name='uq_department_credit_line')
    )
    with op.batch_alter_table('department_credit_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_department_credit_lines_credit_note_id'), ['credit_note_id'], unique=False)

    claim = sa.Column('claim_bill_id', sa.Integer(), nullable=True)
    if op.get_bind().dialect.name == 'postgresql':
        op.add_column('bill_lines', claim)
        op.create_foreign_key(CLAIM_FK, 'bill_lines', 'department_bills', ['claim_bill_id'],
                              ['id'])
    else:
        with op.batch_alter_table('bill_lines', schema=None) as batch_op:
            batch_op.add_column(claim)
            batch_op.create_foreign_key(CLAIM_FK, 'department_bills', ['claim_bill_id'], ['id'])
    op.create_index('ix_bill_lines_claim_bill_id', 'bill_lines', ['claim_bill_id'])
    # A plain ADD COLUMN on both databases: postings is append-only (triggers), and a batch
    # copy of it on SQLite would drop them.
    op.add_column('postings', sa.Column('items', sa.Integer(), server_default='1',
                                        nullable=False))


def downgrade() -> None:
    # SQLite drops a column in place (its triggers stay).
    op.drop_column('postings', 'items')
    op.drop_index('ix_bill_lines_claim_bill_id', 'bill_lines')
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_constraint(CLAIM_FK, 'bill_lines', type_='foreignkey')
        op.drop_column('bill_lines', 'claim_bill_id')
    else:
        with op.batch_alter_table('bill_lines', schema=None) as batch_op:
            batch_op.drop_constraint(CLAIM_FK, type_='foreignkey')
            batch_op.drop_column('claim_bill_id')

    with op.batch_alter_table('department_credit_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_department_credit_lines_credit_note_id'))

    op.drop_table('department_credit_lines')
    with op.batch_alter_table('department_transfers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_department_transfers_bill_id'))

    op.drop_table('department_transfers')
    with op.batch_alter_table('department_bill_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_department_bill_lines_bill_line_id'))
        batch_op.drop_index(batch_op.f('ix_department_bill_lines_bill_id'))

    op.drop_table('department_bill_lines')
    with op.batch_alter_table('department_credit_notes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_department_credit_notes_bill_id'))

    op.drop_table('department_credit_notes')
    with op.batch_alter_table('department_bills', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_department_bills_town_code'))

    op.drop_table('department_bills')

