"""receipt_reports: the note encrypted with the PII key; closing a report (by whom, when, why)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-02

A resident's note may hold a full ID or phone number: ``note`` (plaintext) becomes
``note_encrypted`` (AES-SIV under the PII key, kind ``report-note``, base64), as ID numbers
are kept. The town, finance or an admin can now close an open report: ``closed_by``,
``closed_at`` and ``close_reason``.

Existing notes are encrypted here, with the key the service itself uses (PII_KEY, or the
sandbox's generated key in its data folder): the key is read only when there is a note to
carry, so a database without notes (every production one when this was written) migrates
without it. A database with notes and no key to be had fails here and keeps its plaintext
column, rather than lose the notes or keep them readable. The downgrade decrypts them back
into ``note`` the same way.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import context, op

import backend.db
from backend.security.pii import PiiVault

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

KIND = "report-note"        # backend.receipts.report_models.NOTE_KIND, as of this migration


def _vault() -> PiiVault:
    """The PII vault: the key a caller gave (``config.attributes["pii_key"]``, 32 bytes),
    else the service's settings (PII_KEY)."""
    key = context.config.attributes.get("pii_key")
    if key is None:
        from backend.config import get_settings

        key = get_settings().pii_key_bytes
    return PiiVault(key)


def _carry(source: str, target: str, encrypt: bool) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text(f"SELECT id, {source} FROM receipt_reports "
                                f"WHERE {source} IS NOT NULL")).all()
    if not rows:
        return
    vault = _vault()
    for row_id, value in rows:
        moved = vault.encrypt(value, KIND) if encrypt else vault.decrypt(value, KIND)
        bind.execute(sa.text(f"UPDATE receipt_reports SET {target} = :v WHERE id = :id"),
                     {"v": moved, "id": row_id})


def upgrade() -> None:
    with op.batch_alter_table('receipt_reports') as batch:
        batch.add_column(sa.Column('note_encrypted', sa.Text(), nullable=True))
        batch.add_column(sa.Column('closed_by', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('closed_at', backend.db.UTCDateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column('close_reason', sqlmodel.sql.sqltypes.AutoString(length=500),
                                   nullable=True))
        batch.create_foreign_key('fk_receipt_reports_closed_by', 'staff_users',
                                 ['closed_by'], ['id'])
    _carry('note', 'note_encrypted', encrypt=True)
    with op.batch_alter_table('receipt_reports') as batch:
        batch.drop_column('note')


def downgrade() -> None:
    with op.batch_alter_table('receipt_reports') as batch:
        batch.add_column(sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=500),
                                   nullable=True))
    _carry('note_encrypted', 'note', encrypt=False)
    with op.batch_alter_table('receipt_reports') as batch:
        batch.drop_constraint('fk_receipt_reports_closed_by', type_='foreignkey')
        batch.drop_column('close_reason')
        batch.drop_column('closed_at')
        batch.drop_column('closed_by')
        batch.drop_column('note_encrypted')
