"""What a lookup costs: a hit is two Redis round trips (its miss reserved, then given back)
and one SQL statement outside any transaction (``bench/README.md``, "Lookups"), in one hop
to a lookup thread; the lane answers it without FastAPI's routing and dependencies. What it
answers is unchanged (the other lookup tests; test_lookup_lane: the lane against the route)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from backend.db import unit_of_work
from backend.departments.models import DepartmentListing
from backend.orders.models import BillLine, Order, OrderLine
from backend.residents.service import lookup as service_lookup
from backend.runtime import Runtime
from backend.security.tokens import Principal, issue_token
from tests.factories import TOWN, add_regions, add_resident


@pytest.fixture
def zhang(rt: Runtime) -> tuple[int, str]:
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        resident, number = add_resident(s, rt.pii, "张三", date(1969, 3, 15), seq=11,
                                        last_pension_tier_yuan=300)
        assert resident.id is not None
        return resident.id, number


def _token(rt: Runtime, sub: str = "wx:counted") -> dict[str, str]:
    token = issue_token(rt.app_secret, Principal(sub=sub, role="resident"), 600)
    return {"Authorization": f"Bearer {token}"}


class Counted:
    def __init__(self) -> None:
        self.sql: list[str] = []
        self.redis: list[str] = []


@pytest.fixture
def counted(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counted]:
    """Every statement the engine's connections run (SQLAlchemy's and the driver's own,
    through the DBAPI cursor) and every Redis round trip the limiter makes: a command, or a
    pipeline as ``MULTI`` and its commands."""
    seen = Counted()
    engine = rt.engine
    if engine.dialect.name == "postgresql":
        # every statement, SQLAlchemy's and backend/sql.py's, goes through a cursor's
        # execute; psycopg's implicit BEGIN is sent with the first one of a transaction,
        # so a transaction shows as its COMMIT or ROLLBACK
        import psycopg

        real_execute = psycopg.Cursor.execute

        def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            seen.sql.append(str(query))
            return real_execute(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)
        real_commit, real_rollback = psycopg.Connection.commit, psycopg.Connection.rollback

        def commit(self: Any) -> Any:
            if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                seen.sql.append("COMMIT")
            return real_commit(self)

        def rollback(self: Any) -> Any:
            if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                seen.sql.append("ROLLBACK")
            return real_rollback(self)

        monkeypatch.setattr(psycopg.Connection, "commit", commit)
        monkeypatch.setattr(psycopg.Connection, "rollback", rollback)
    else:
        def trace(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.set_trace_callback(seen.sql.append)

        event.listen(engine, "connect", trace)
        engine.dispose()      # connections made from here on are traced

    client = rt.limiter.client
    real_command = client.execute_command

    def command(*args: Any, **kwargs: Any) -> Any:
        seen.redis.append(str(args[0]))
        return real_command(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", command)
    real_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        def execute(*a: Any, **kw: Any) -> Any:
            seen.redis.append(" ".join(["MULTI", *(str(c[0][0]) for c in pipe.command_stack)]))
            return real_execute(*a, **kw)

        pipe.execute = execute
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    yield seen


def _statements(sql: list[str]) -> list[str]:
    """The statements that reached the database, without SQLite's own bookkeeping."""
    return [s for s in sql if not s.upper().startswith(("PRAGMA",))]


def test_a_hit_is_one_statement_and_two_redis_round_trips(
        client: TestClient, rt: Runtime, zhang: tuple[int, str], counted: Counted) -> None:
    _, number = zhang
    headers = _token(rt)
    body = {"name": "张三", "id_number": number, "year": 2021}
    assert client.post("/api/v1/residents/lookup", headers=headers,
                       json=body).status_code == 200       # warm: connections, caches
    counted.sql.clear()
    counted.redis.clear()
    r = client.post("/api/v1/residents/lookup", headers=headers, json=body)
    assert r.status_code == 200, r.text
    statements = _statements(counted.sql)
    assert len(statements) == 1, statements
    assert not any(s.split()[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK") for s in statements)
    # the miss reserved on both counters, then given back: the lookup found the resident
    assert counted.redis == ["MULTI INCRBY EXPIRE INCRBY EXPIRE",
                             "MULTI DECRBY EXPIRE DECRBY EXPIRE"]
    assert rt.limiter.counts(["lookup:caller:wx:counted", "lookup:ip:testclient"]) == [0, 0]


def test_a_miss_still_counts_against_both_limits(
        client: TestClient, rt: Runtime, zhang: tuple[int, str], counted: Counted) -> None:
    _, number = zhang
    r = client.post("/api/v1/residents/lookup", headers=_token(rt, "wx:guesser"),
                    json={"name": "某某", "id_number": number, "year": 2021})
    assert r.status_code == 404
    assert counted.redis == ["MULTI INCRBY EXPIRE INCRBY EXPIRE"]     # one round trip: reserved
    assert rt.limiter.counts(["lookup:caller:wx:guesser", "lookup:ip:testclient"]) == [1, 1]


def test_a_miss_and_a_wrong_name_do_the_same_work_and_answer_the_same_bytes(
        client: TestClient, rt: Runtime, zhang: tuple[int, str], counted: Counted) -> None:
    """An enumerator can not tell "nobody has this ID number" from "somebody has it, with
    another name": the same statement, the same Redis commands, the same answer. (How long
    each takes is measured by bench/lookup_timing.py, not here.)"""
    from backend.residents.idnumber import make_id_number

    _, number = zhang
    nobody = make_id_number("370406", date(1969, 3, 15), 99)
    work = {}
    for case, id_number in (("miss", nobody), ("wrong name", number)):
        client.post("/api/v1/residents/lookup", headers=_token(rt, f"wx:warm-{case}"),
                    json={"name": "某某", "id_number": id_number, "year": 2021})
        counted.sql.clear()
        counted.redis.clear()
        r = client.post("/api/v1/residents/lookup", headers=_token(rt, f"wx:{case}"),
                        json={"name": "某某", "id_number": id_number, "year": 2021})
        work[case] = (r.status_code, r.content,
                      [(k, v) for k, v in r.headers.items() if k != "x-request-id"],
                      # (SQLite's trace shows the values: the id hash and the clock)
                      [re.sub(r"'[0-9a-f]{64}'|'20\d\d-[\d: .-]+'", "?", " ".join(q.split()))
                       for q in _statements(counted.sql)],
                      list(counted.redis))
    assert work["miss"] == work["wrong name"]
    assert work["miss"][0] == 404


def test_items_read_in_one_statement_match_the_orm_reads(rt: Runtime,
                                                         zhang: tuple[int, str]) -> None:
    """Listings, bill-line states, department bills and pending orders, read by the lookup's
    one statement, are what orders.repository's item_states and department_items say."""
    from backend.departments.models import DepartmentBill
    from backend.orders.repository import department_items, item_states

    rid, number = zhang
    now = rt.clock.now()
    with unit_of_work(rt.sessions) as s:
        s.add(DepartmentListing(department="civil_affairs", resident_id=rid,
                                insurance="medical", year=2021))
        bill = DepartmentBill(bill_no="DB2021-0001", department="civil_affairs",
                              town_code=TOWN, year=2021, kind="bill", total_fen=28000,
                              lines=1, issued_by="staff:1", issued_at=now,
                              issued_on=now.date())
        s.add(bill)
        s.flush()
        medical = BillLine(resident_id=rid, year=2021, insurance="medical", status="claimed",
                           claim_bill_id=bill.id)
        pension = BillLine(resident_id=rid, year=2021, insurance="pension")
        s.add_all([medical, pension])
        s.flush()
        for status, expires in (("pending", now + timedelta(hours=1)),
                                ("pending", now - timedelta(hours=1)),
                                ("closed", now + timedelta(hours=1))):
            order = Order(order_no=f"T{status}{expires:%H%M%S}", payer_sub="wx:a",
                          payer_role="resident", year=2021, channel="aggregate_qr",
                          status=status, amount_fen=30000, expires_at=expires)
            s.add(order)
            s.flush()
            s.add(OrderLine(order_id=order.id, bill_line_id=pension.id, resident_id=rid,
                            insurance="pension", tier_yuan=300, amount_fen=30000))
    with unit_of_work(rt.sessions) as s:
        want_states = item_states(s, rid, 2021, now)
        want_bills = {ins: b for (_, ins), b in department_items(s, [rid], 2021).items()}
    from backend.residents import repository as repo
    from backend.sql import reads

    with reads(rt.engine) as tx:
        read = repo.lookup(tx, rt.pii.hash(number), 2021, now)
        assert repo.lookup(tx, rt.pii.hash("370406196903150000"), 2021, now) is None
    assert read is not None
    row, items = read
    assert (row.id, row.name, row.birth_date, row.died_on) == (rid, "张三", date(1969, 3, 15),
                                                               None)
    assert items.states == want_states == {"medical": "government_paid", "pension": "pending"}
    assert items.bills == want_bills == {
        "medical": ("civil_affairs", "DB2021-0001", "issued")}
    assert items.listings == {("civil_affairs", "medical")}
    answer = service_lookup(rt, Principal(sub="wx:a", role="resident"), "127.0.0.1",
                            name="张三", id_number=number, year=2021)
    pension_item, medical_item = answer.items
    assert pension_item.status == "pending" and medical_item.status == "government_paid"
    assert medical_item.department_bill is not None
    assert medical_item.department_bill.bill_no == "DB2021-0001"


def test_a_residents_lookup_takes_one_worker_thread(client: TestClient, rt: Runtime,
                                                    zhang: tuple[int, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane's checks run on the event loop; the Redis and database reads go to a lookup
    thread once (a plain ``def`` dependency or endpoint would be a hop each, to anyio's
    worker threads)."""
    import anyio.to_thread

    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def run_sync(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    pool = rt.lookup_threads
    real_submit = pool.submit

    def submit(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append("lookup thread")
        return real_submit(fn, *args, **kwargs)

    monkeypatch.setattr(pool, "submit", submit)
    _, number = zhang
    for name, status in (("张三", 200), ("某某", 404)):     # a hit, and a miss
        r = client.post("/api/v1/residents/lookup", headers=_token(rt),
                        json={"name": name, "id_number": number, "year": 2021})
        assert r.status_code == status, r.text
    assert hops == ["lookup thread"] * 2


def test_the_lane_answers_without_fastapis_routing(client: TestClient, rt: Runtime,
                                                   zhang: tuple[int, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup is answered by the lane, ahead of FastAPI (no dependency solved); a request
    the lane does not take as it is (here: no token) goes on to the route."""
    import fastapi.routing

    solved: list[str] = []
    real = fastapi.routing.solve_dependencies

    async def solve(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await real(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", solve)
    _, number = zhang
    body = {"name": "张三", "id_number": number, "year": 2021}
    assert client.post("/api/v1/residents/lookup", headers=_token(rt),
                       json=body).status_code == 200
    assert client.post("/api/v1/residents/lookup", headers=_token(rt, "wx:miss"),
                       json={**body, "name": "某某"}).status_code == 404
    assert solved == []
    assert client.post("/api/v1/residents/lookup", json=body).status_code == 401
    assert solved == ["/api/v1/residents/lookup"]
