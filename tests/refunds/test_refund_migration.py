"""0009 carries the refunds already there along: automatic duplicate refunds, approved by
the system, giving back their payment's duplicate lines."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from backend.migrate import alembic_config, upgrade
from tests.test_migrations import PAYMENT, SECOND_ATTEMPT, SEED_0004, _engine, empty_db

__all__ = ["empty_db"]

DUPLICATE = (
    "INSERT INTO payment_lines (payment_id, bill_line_id, amount_fen, applied) "
    "VALUES (2, 1, 28000, false)",
    "INSERT INTO refunds (id, payment_id, out_refund_no, amount_fen, reason, status, "
    "created_at, updated_at) VALUES (1, 2, 'RF1', 28000, 'duplicate', 'queued', "
    "'2020-11-02 01:06:00', '2020-11-02 01:06:00')",
)


def test_existing_refunds_become_system_approved_with_their_lines(empty_db: str) -> None:
    upgrade(empty_db, "0007")
    engine = _engine(empty_db)
    with engine.begin() as conn:
        for sql in [*SEED_0004[:5], SECOND_ATTEMPT,
                    PAYMENT.format(id=1, attempt=1, shared="false"),
                    PAYMENT.format(id=2, attempt=2, shared="false").replace("'4200'", "'4201'"),
                    SEED_0004[6], SEED_0004[7], *DUPLICATE]:
            conn.execute(text(sql))
    engine.dispose()
    upgrade(empty_db, "0009")
    engine = _engine(empty_db)
    with engine.connect() as conn:
        assert conn.execute(text(
            "SELECT method, requested_by, approved_by, status FROM refunds")).all() == [
            ("channel", "system", "system", "queued")]
        assert conn.execute(text(
            "SELECT refund_id, payment_line_id, amount_fen, applied FROM refund_lines")).all() \
            == [(1, 2, 28000, False)]
    engine.dispose()
    command.downgrade(alembic_config(empty_db), "0007")
