"""notification_inbox: a partial index on the anomalies, counted at every metrics scrape

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02

``collect_anomalies_total`` was a counter in the process that found the anomaly; the
worker's active queries find them in a process no scrape reads. The count is now read from
the inbox at the scrape, through this index (only the anomalies' rows are in it).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

WHERE = "outcome IN ('amount_mismatch', 'transaction_conflict', 'shared_transaction')"


def upgrade() -> None:
    op.create_index('ix_inbox_anomalies', 'notification_inbox', ['outcome'],
                    postgresql_where=sa.text(WHERE), sqlite_where=sa.text(WHERE))


def downgrade() -> None:
    op.drop_index('ix_inbox_anomalies', table_name='notification_inbox')
