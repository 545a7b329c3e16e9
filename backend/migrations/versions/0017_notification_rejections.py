"""notification_rejections: a flood of forged notifications is counted, not kept

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01

Every rejected notification (not verified, or signed but malformed) used to be a full
``notification_inbox`` row, so a flood of forged ones could fill the database. Now the first
``NOTIFY_REJECTED_KEPT_PER_MINUTE`` of each channel and minute are kept in full (their body
cut to 4 KB) and the rest only add one to a row of this table per (channel, minute,
outcome), which keeps the first one's detail, headers and body as a sample. Applied,
unknown-order and anomaly notifications are always kept in full. Tested by
tests/notifications/test_flood.py.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import backend.db

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'notification_rejections',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('minute', backend.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('first_detail', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column('first_headers', sa.JSON(), nullable=True),
        sa.Column('first_body', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('last_at', backend.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('uq_notification_rejections', 'notification_rejections',
                    ['channel', 'minute', 'outcome'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_notification_rejections', table_name='notification_rejections')
    op.drop_table('notification_rejections')
