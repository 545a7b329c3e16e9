"""publication_versions: the published versions of a village's roster and paid list

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'publication_versions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('village_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('year', sa.Integer(), nullable=False),
        sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('published_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('published_by_id', sa.Integer(), nullable=True),
        sa.Column('published_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('window_start', sa.Date(), nullable=False),
        sa.Column('window_end', sa.Date(), nullable=False),
        sa.Column('correction', sa.Boolean(), nullable=False),
        sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('residents', sa.Integer(), nullable=False),
        sa.Column('rows', sa.JSON(), nullable=False),
        sa.Column('changes', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['published_by_id'], ['staff_users.id'], ),
        sa.ForeignKeyConstraint(['village_code'], ['villages.code'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('village_code', 'year', 'kind', 'version',
                            name='uq_publication_version'),
    )


def downgrade() -> None:
    op.drop_table('publication_versions')
