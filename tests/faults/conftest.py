"""What the fault tests share: the service's processes as a deployment runs them (``serve``
and ``worker``, started and killed), a PostgreSQL and a Redis of the test's own to restart
and stop, seeded pending orders and the channels' real-format signed notifications for them,
sent concurrently as the channels send them, and the database's word on what was applied.

The processes and the orders come from ``bench/_support.py`` (ServerProcess,
seed_pending_orders, NotificationFactory, live_env): the same ones the benchmarks drive.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from backend.config import Settings
from backend.runtime import Runtime
from bench import _support as sup
from payment_adapters.base import Channel
from tests.conftest import _unavailable, _wipe
from tests.servers import free_port

AMOUNT_FEN = 38_000
MIX = {Channel.WECHAT: 0.5, Channel.ALIPAY: 0.3, Channel.UNIONPAY: 0.2}
PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 20,
              every_s: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s (last: {value!r})")
        time.sleep(every_s)


def wipe(settings: Settings) -> None:
    rt = Runtime(settings)
    try:
        _wipe(rt)
    finally:
        rt.close()


# --------------------------------------------------------------------------- the worker
def start_worker(settings: Settings, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m backend worker`` in its own session (so that a kill reaches only it)."""
    env = {**{k: v for k, v in os.environ.items() if k != "COLLECT_NOW"},
           **sup.settings_env(settings), **(extra_env or {}), "PYTHONPATH": str(sup.CODE_ROOT)}
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=sup.CODE_ROOT,
                                env=env, stdout=out, stderr=out, start_new_session=True)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process's own session: nothing of it runs another line."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill(proc)


# --------------------------------------------------------------------------- notifications
@dataclass
class Orders:
    """Pending orders seeded in a database (ids 1..n, every channel), and the signed
    notification each one's channel sends when it is paid."""

    settings: Settings
    n: int
    factory: sup.NotificationFactory = field(init=False)
    channel_of: dict[int, Channel] = field(init=False)
    notes: dict[int, tuple[str, dict[str, str], bytes]] = field(init=False)

    def __post_init__(self) -> None:
        numbers = sup.order_numbers(self.settings)
        self.factory = sup.NotificationFactory(self.settings, numbers, AMOUNT_FEN)
        ranges = sup.channel_ranges(self.n, MIX)
        self.channel_of = {i: ch for ch, r in ranges.items() for i in r}
        sup.seed_pending_orders(self.settings.database_url, self.n, ranges, numbers,
                                AMOUNT_FEN, vacuum=False)
        self.notes = {i: self.factory.build(ch, i) for i, ch in self.channel_of.items()}
        self.numbers = numbers

    def taken(self, i: int, resp: httpx.Response) -> bool:
        """The channel's success answer: it stops resending."""
        ok = self.factory.channels.verifiers[self.channel_of[i]].success_answer()
        return resp.status_code == ok.status and resp.content == ok.body

    def send(self, base_url: str, ids: Iterable[int], *, concurrency: int = 12,
             pause_s: float = 0.0, after: Callable[[int], None] | None = None) -> Sent:
        """POST the notifications of ``ids`` concurrently; ``after(k)`` is called with the
        number answered with success so far, after each such answer."""
        sent = Sent()
        lock = threading.Lock()
        with httpx.Client(base_url=base_url, timeout=20,
                          limits=httpx.Limits(max_connections=concurrency)) as client:
            def one(i: int) -> None:
                path, headers, body = self.notes[i]
                t0 = time.monotonic()
                try:
                    resp = client.post(path, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    with lock:
                        sent.lost[i] = type(exc).__name__
                else:
                    with lock:
                        if self.taken(i, resp):
                            sent.taken.add(i)
                            k = len(sent.taken)
                        else:
                            sent.refused[i] = f"{resp.status_code} {resp.text[:80]}"
                            k = 0
                    if k and after is not None:
                        after(k)
                sent.spans[i] = (t0, time.monotonic())
                if pause_s:
                    time.sleep(pause_s)

            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(one, ids))
        return sent

    def out_trade_nos(self, ids: Iterable[int]) -> list[str]:
        return [self.numbers.out_trade_no(self.channel_of[i], i) for i in ids]


@dataclass
class Sent:
    taken: set[int] = field(default_factory=set)          # answered with success
    refused: dict[int, str] = field(default_factory=dict)  # the channel's failure answer
    lost: dict[int, str] = field(default_factory=dict)     # no answer at all
    spans: dict[int, tuple[float, float]] = field(default_factory=dict)  # sent, answered

    def in_flight(self, start: float, end: float) -> set[int]:
        """The notifications under way at some moment between ``start`` and ``end``
        (monotonic seconds)."""
        return {i for i, (a, b) in self.spans.items() if a < end and b > start}

    @property
    def unanswered(self) -> set[int]:
        """What the channel sends again: everything not answered with success."""
        return set(self.refused) | set(self.lost)


def resend_until_taken(orders: Orders, base_url: str, ids: Iterable[int],
                       rounds: int = 3) -> list[int]:
    """The channels' retries: send again whatever got no success answer, a few rounds;
    returns how many were sent each round."""
    left = set(ids)
    sizes = []
    for _ in range(rounds):
        if not left:
            break
        sizes.append(len(left))
        left = orders.send(base_url, sorted(left)).unanswered
    assert not left, f"{len(left)} notifications still not taken after {rounds} rounds"
    return sizes


def applied(db_url: str, ids: Iterable[int]) -> dict[str, int]:
    """What the database holds of the payments of orders ``ids`` (the seeding's ids: order
    i has bill line i)."""
    wanted = sorted(ids)
    with psycopg.connect(db_url) as conn:
        def one(query: str) -> int:
            row = conn.execute(query, (wanted,)).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return {
            "orders_paid": one("SELECT count(*) FROM orders WHERE id = ANY(%s) "
                               "AND status = 'paid'"),
            "bill_lines_paid": one("SELECT count(*) FROM bill_lines WHERE id = ANY(%s) "
                                   "AND status = 'paid'"),
            "payments": one("SELECT count(*) FROM payments WHERE order_id = ANY(%s)"),
            "orders_with_payment": one("SELECT count(DISTINCT order_id) FROM payments "
                                       "WHERE order_id = ANY(%s)"),
            "payment_lines": one("SELECT count(*) FROM payment_lines l JOIN payments p "
                                 "ON p.id = l.payment_id WHERE p.order_id = ANY(%s)"),
            "journal_entries": one("SELECT count(*) FROM journal_entries e JOIN payments p "
                                   "ON p.id = e.payment_id WHERE p.order_id = ANY(%s)"),
            "postings": one("SELECT count(*) FROM postings x JOIN journal_entries e "
                            "ON e.id = x.entry_id JOIN payments p ON p.id = e.payment_id "
                            "WHERE p.order_id = ANY(%s)"),
            "postings_fen_sum": one("SELECT sum(x.amount_fen) FROM postings x "
                                    "JOIN journal_entries e ON e.id = x.entry_id "
                                    "JOIN payments p ON p.id = e.payment_id "
                                    "WHERE p.order_id = ANY(%s)"),
            "inbox_applied": one("SELECT count(*) FROM notification_inbox i JOIN attempts a "
                                 "ON a.out_trade_no = i.out_trade_no WHERE a.order_id = ANY(%s) "
                                 "AND i.outcome = 'applied'"),
        }


def once_each(n: int) -> dict[str, int]:
    """``applied`` of n orders each paid exactly once (one line each: two postings)."""
    return {"orders_paid": n, "bill_lines_paid": n, "payments": n, "orders_with_payment": n,
            "payment_lines": n, "journal_entries": n, "postings": 2 * n,
            "postings_fen_sum": 0, "inbox_applied": n}


def paid_ids(db_url: str, ids: Iterable[int]) -> set[int]:
    with psycopg.connect(db_url) as conn:
        return {int(r[0]) for r in conn.execute(
            "SELECT order_id FROM payments WHERE order_id = ANY(%s)", (sorted(ids),))}


@pytest.fixture
def live_settings(pg_url: str, redis_url: str, sandbox_keys: dict[str, object],
                  tmp_path: Path) -> Settings:
    """Settings of a live-mode ``serve`` (channel keys configured: the simulators' own, see
    bench/_support.live_env) on the session's database, emptied."""
    settings = sup.bench_settings(pg_url, tmp_path / "data", free_port(), redis_url=redis_url,
                                  **sandbox_keys)
    wipe(settings)
    return settings


def serve(settings: Settings, log_path: Path, *, live: bool = True,
          extra_env: dict[str, str] | None = None, port: int | None = None
          ) -> sup.ServerProcess:
    """``python -m backend serve`` (one process) on a port of its own."""
    return sup.ServerProcess(settings, port or free_port(), log_path=log_path, live=live,
                             serve=True, extra_env=extra_env or {})


# --------------------------------------------------------------------------- own services
class OwnPostgres:
    """A PostgreSQL 15 the test starts (initdb + pg_ctl on a temporary data directory, its own
    port), to restart at will; never the machine's shared one. As root, its programs run as
    the ``postgres`` user (initdb refuses root)."""

    def __init__(self) -> None:
        for program in ("initdb", "pg_ctl"):
            if not (PG_BIN / program).exists():
                _unavailable(f"PostgreSQL's {program}", FileNotFoundError(PG_BIN / program))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                _unavailable("runuser (PostgreSQL runs as the postgres user)",
                             FileNotFoundError("runuser"))
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="fault-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if self.as_user:
            shutil.chown(self.dir, "postgres")

    def _pg(self, *args: str, timeout_s: float = 60) -> None:
        # Output to a file, never a pipe: the postmaster pg_ctl starts would hold a pipe
        # open for as long as it runs.
        out = self.dir / "pg_ctl.out"
        with open(out, "ab") as sink:
            done = subprocess.run([*self.as_user, *args], stdout=sink, stderr=sink,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s, check=False)
        if done.returncode != 0:
            log = self.dir / "postgres.log"
            raise RuntimeError(f"{' '.join(args[:2])}… failed ({done.returncode}): "
                               f"{out.read_text()[-800:]}\n"
                               f"{log.read_text()[-800:] if log.exists() else ''}")

    def start(self) -> OwnPostgres:
        self._pg(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        # synchronous_commit stays on (the default), said here so that no one turns it off:
        # with it off an immediate restart loses payments already acknowledged
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c synchronous_commit=on -c shared_buffers=32MB -c max_connections=120")
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                 str(self.dir / "postgres.log"), "-o", options, "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def restart(self, mode: str) -> float:
        """``pg_ctl restart -m fast|immediate`` (immediate: crash recovery at the start);
        returns the seconds until it accepts connections again."""
        t0 = time.monotonic()
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                 str(self.dir / "postgres.log"), "-m", mode, "-w", "-t", "60", "restart")
        return time.monotonic() - t0

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                         "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A redis-server the test starts on a port of its own, to stop and start again."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            _unavailable("redis-server", FileNotFoundError("redis-server"))
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fault-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        import redis

        assert self.binary is not None
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for("the test's redis-server answers", up, timeout_s=10)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis().start()
    try:
        yield server
    finally:
        server.close()
