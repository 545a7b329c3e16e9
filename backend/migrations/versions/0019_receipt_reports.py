"""receipt_reports: residents' reports of paper receipts the service does not know

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-09

A resident who paid an agent cash and holds a paper receipt (收据) the service cannot find
— or finds with another amount — reports it at ``POST /r/report`` (no login). Each report
is a row here for the town and for auditors; it becomes ``matched`` when the agent records
that paper receipt later for the amount reported. The reporter's address is kept only as a
keyed hash.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import backend.db

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'receipt_reports',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('report_no', sa.String(length=24), nullable=False),
        sa.Column('village_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('town_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('paper_receipt_no', sqlmodel.sql.sqltypes.AutoString(length=64),
                  nullable=False),
        sa.Column('amount_fen', backend.db.Fen(), nullable=False),
        sa.Column('paid_on', sa.Date(), nullable=False),
        sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column('client_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('created_at', backend.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('matched_collection_id', sa.Integer(), nullable=True),
        sa.Column('matched_at', backend.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['matched_collection_id'], ['agent_collections.id']),
        sa.ForeignKeyConstraint(['town_code'], ['towns.code']),
        sa.ForeignKeyConstraint(['village_code'], ['villages.code']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('report_no'),
    )
    op.create_index('ix_receipt_reports_town_code', 'receipt_reports', ['town_code'])
    op.create_index('ix_receipt_reports_village_receipt', 'receipt_reports',
                    ['village_code', 'paper_receipt_no'])


def downgrade() -> None:
    op.drop_index('ix_receipt_reports_village_receipt', table_name='receipt_reports')
    op.drop_index('ix_receipt_reports_town_code', table_name='receipt_reports')
    op.drop_table('receipt_reports')
