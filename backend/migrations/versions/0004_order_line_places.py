"""order lines carry the resident's village and town (the ledger's dimensions)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('order_lines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('village_code', sqlmodel.sql.sqltypes.AutoString(length=32),
                                      nullable=True))
        batch_op.add_column(sa.Column('town_code', sqlmodel.sql.sqltypes.AutoString(length=32),
                                      nullable=True))
    op.execute("""
        UPDATE order_lines SET
            village_code = (SELECT r.village_code FROM residents r
                            WHERE r.id = order_lines.resident_id),
            town_code = (SELECT v.town_code FROM residents r JOIN villages v
                         ON v.code = r.village_code WHERE r.id = order_lines.resident_id)""")


def downgrade() -> None:
    with op.batch_alter_table('order_lines', schema=None) as batch_op:
        batch_op.drop_column('town_code')
        batch_op.drop_column('village_code')
