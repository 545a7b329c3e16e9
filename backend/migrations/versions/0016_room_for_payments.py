"""room on the page for a payment's updates; orders lose an index nothing reads

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01

A payment updates its order, its attempt and its bill lines (status, paid_at, the paid
amount): none of those columns is indexed, so PostgreSQL can write the new version on the
same page without a new entry in any of the tables' indexes (a HOT update) — if the page has
room. Tables fill their pages to 100 % by default, and an order, an attempt or a bill line is
written long before it is paid (bill lines at the import, orders and attempts at the order),
so without room every payment wrote a new entry into each of their ten indexes. With
``fillfactor = 80`` the inserts leave a fifth of each page free for the updates that come
later. (Pages written before this migration keep their fill; a ``VACUUM FULL`` of the three
tables in a quiet hour gives them room too.)

``ix_orders_payer_sub`` goes: no query looks orders up by their payer (the only use of
``payer_sub`` in SQL is a ``<>`` inside a join; owner checks compare the loaded row).

PostgreSQL only for the fill factor; SQLite has no such setting.
"""
from __future__ import annotations

from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

PAID_LATER = ("orders", "attempts", "bill_lines")
FILL = 80


def upgrade() -> None:
    op.drop_index("ix_orders_payer_sub", table_name="orders")
    if op.get_bind().dialect.name == "postgresql":
        for table in PAID_LATER:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = {FILL})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in PAID_LATER:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    op.create_index("ix_orders_payer_sub", "orders", ["payer_sub"], unique=False)
