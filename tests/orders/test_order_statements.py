"""What making an order costs the database: a structural guard for the order benchmark
(``bench/order_create.py``, bench/README.md "Order creation"), on SQLite and PostgreSQL.

One order with an Idempotency-Key is: the key's claim; in one transaction the residents, their
department listings, the bill lines (got or made, locked), the other payers' live orders, the
order, its lines (and the channel trade's attempt); then, for a channel QR, the channel's answer
in a second transaction. The key's answer is stored in the last of these transactions, not
after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event, text

from backend.idempotency.service import _claim
from backend.runtime import Runtime
from tests.conftest import Live
from tests.orders.helpers import order, ref, resident_headers, seed


@dataclass
class Seen:
    statements: list[str] = field(default_factory=list)
    commits: int = 0


@contextmanager
def watch(engine: Any) -> Iterator[Seen]:
    """The statements sent on ``engine`` meanwhile, and the commits: of transactions, and
    of statements run in autocommit (each its own)."""
    seen = Seen()

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if not sql.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            seen.statements.append(" ".join(sql.split()))
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                seen.commits += 1

    def commit(conn: Any) -> None:
        seen.commits += 1

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)


# channel → (statements, commits): the key's claim, the order, the channel's answer
BUDGET = {"aggregate_qr": (8, 2), "alipay_qr": (10, 3), "wechat_native": (10, 3)}


@pytest.mark.parametrize("channel", sorted(BUDGET))
def test_making_an_order_takes_few_statements(live: Live, channel: str) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    item = {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}
    key = uuid.uuid4().hex
    with watch(live.rt.engine) as seen:
        r = order(live, h, channel, [item], key=key)
    assert r.status_code == 201, r.text
    statements, commits = BUDGET[channel]
    listing = "\n".join(s[:120] for s in seen.statements)
    assert len(seen.statements) <= statements, listing
    assert seen.commits <= commits, listing
    # the key's answer was stored with the order (in its last transaction), and is the answer
    again = order(live, h, channel, [item], key=key)
    assert again.status_code == 201 and again.json() == r.json()
    with live.rt.engine.connect() as c:
        state, status = c.execute(text('SELECT state, status_code FROM idempotency_keys '
                                       'WHERE "key" = :k'), {"k": key}).one()
    assert (state, status) == ("done", 201)


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_the_claims_asynchronous_commit_stays_with_its_statement(rt: Runtime) -> None:
    """The claim commits without waiting for the WAL flush; the connection it ran on goes
    back to the pool with synchronous commits, as every transaction that holds money needs."""
    _claim(rt, "wx:someone", uuid.uuid4().hex, "0" * 64)
    assert rt.engine.pool.checkedin() == 1        # the claim's connection, the next one out
    with rt.engine.connect() as c:
        assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        n = c.execute(text("SELECT count(*) FROM idempotency_keys WHERE caller = 'wx:someone'"
                           )).scalar()
    assert n == 1
