"""The worker (``python -m backend worker``) killed with SIGKILL in the middle of a refund: a
fresh worker finishes it, and the channel refunds once.

The kill lands where it should because the simulator holds the refund call (the
``hold_refunds`` fault) — before doing the refund, or after doing it and before answering —
until the test releases it, with the worker dead by then. Either way the refund is
``processing`` in our database when the worker dies; the next worker asks the channel's
refund query first and sends the refund again, under the same number, only when the channel
has none: two refund calls and one refund when the first never took effect, one call and
one refund when it did.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from backend.auth.models import StaffUser
from backend.auth.service import staff_principal
from backend.config import Settings
from backend.db import unit_of_work
from backend.runtime import Runtime
from backend.security.tokens import issue_token
from bench import _support as sup
from tests.conftest import Live
from tests.faults.conftest import kill, serve, start_worker, stop, wait_for, wipe
from tests.orders.helpers import order, pay, ref, resident_headers, seed
from tests.servers import free_port

MEDICAL_FEN = 28_000


@dataclass
class Stack:
    live: Live                       # the sandbox serve, driven as the mini-program would
    settings: Settings
    people: dict[str, str]
    finance: list[dict[str, str]]    # two finance users' headers: one asks, one approves
    env: dict[str, str]              # the channel keys, for the workers
    logs: Path

    @property
    def db(self) -> str:
        return self.settings.database_url


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, sandbox_keys: dict[str, object],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("worker-killed")
    settings = sup.bench_settings(pg_url, tmp / "data", free_port(), redis_url=redis_url)
    wipe(settings)
    keys = {k.upper(): str(v) for k, v in sandbox_keys.items()}
    # the sandbox serve: the simulator in it, no worker in it
    server = serve(settings, tmp / "serve.log", live=False, extra_env=keys,
                   port=int(settings.public_base_url.rsplit(":", 1)[1])).spawn()
    rt = Runtime(settings)
    try:
        people = seed(rt)
        with unit_of_work(rt.sessions) as s:
            users = [StaffUser(username=name, password_hash="-", role="finance")
                     for name in ("fin1", "fin2")]
            s.add_all(users)
            s.flush()
            finance = [{"Authorization": "Bearer " + issue_token(
                rt.app_secret, staff_principal(u), 600)} for u in users]
        server.ready()
        yield Stack(Live(rt, server), settings, people, finance, keys, tmp)  # type: ignore[arg-type]
    finally:
        server.stop()
        rt.close()


def _fault(stack: Stack, channel: str, **switches: Any) -> None:
    r = stack.live.http.post("/sandbox/faults", json={"channel": channel, **switches})
    assert r.status_code == 200, r.text


def _seen(stack: Stack, refund_no: str) -> dict[str, int]:
    r = httpx.get(f"{stack.live.base_url}/sandbox/refunds/{refund_no}", timeout=10)
    return dict(r.json()) if r.status_code == 200 else {}


def _refund_row(stack: Stack, refund_id: int) -> dict[str, Any]:
    with psycopg.connect(stack.db) as conn:
        row = conn.execute(
            "SELECT r.status, r.out_refund_no, r.channel_refund_id, o.status AS order_status, "
            "j.tries, j.status AS job_status, j.run_at - now() AS lease, "
            "(SELECT count(*) FROM journal_entries e WHERE e.refund_id = r.id) AS entries "
            "FROM refunds r JOIN payments p ON p.id = r.payment_id "
            "JOIN orders o ON o.id = p.order_id "
            "JOIN outbox j ON j.kind = 'refund' AND (j.payload->>'refund_id')::int = r.id "
            "WHERE r.id = %s", (refund_id,)).fetchone()
        assert row is not None
        names = ("status", "out_refund_no", "channel_refund_id", "order_status", "tries",
                 "job_status", "lease", "entries")
        return dict(zip(names, row, strict=True))


@dataclass
class Case:
    channel: str
    hold: str            # where the channel holds the refund call when the worker is killed
    refund_id: int
    refund_no: str
    out_trade_no: str


def _approved_refund(stack: Stack, channel: str, kind: str, name: str, hold: str) -> Case:
    """A resident's order paid through ``channel``, a refund of it asked for and approved
    (its outbox job written), with the channel set to hold the refund call at ``hold``."""
    live = stack.live
    h = resident_headers(live, f"payer-{channel}")
    made = order(live, h, kind, [{"resident_ref": ref(live, h, name, stack.people[name]),
                                  "insurance": "medical"}])
    assert made.status_code == 201, made.text
    order_no, out_trade_no = made.json()["order_no"], made.json()["payment"]["out_trade_no"]
    pay(live, out_trade_no)
    asked = live.http.post("/api/v1/refunds", headers=stack.finance[0],
                           json={"order_no": order_no, "reason": "误缴"})
    assert asked.status_code == 201, asked.text
    refund_id = asked.json()["refund_id"]
    _fault(stack, channel, hold_refunds=hold)
    approved = live.http.post(f"/api/v1/refunds/{refund_id}/approve", headers=stack.finance[1])
    assert approved.status_code == 200, approved.text
    return Case(channel, hold, refund_id, _refund_row(stack, refund_id)["out_refund_no"],
                out_trade_no)


def _kill_while_held(stack: Stack, worker: subprocess.Popen[bytes], case: Case) -> None:
    """Kill the worker while its refund call waits at the channel; release the call (it goes
    on, to no one); let the dead worker's 5-minute lease of the job run out."""
    held = wait_for(f"the worker's {case.channel} refund call held at the channel",
                    lambda: _seen(stack, case.refund_no).get("held"), timeout_s=30)
    assert held == 1
    kill(worker)
    dead = _refund_row(stack, case.refund_id)
    assert (dead["status"], dead["job_status"], dead["tries"]) == ("processing", "pending", 1)
    # the job is leased to the dead worker for 5 minutes: another takes it after that
    assert 240 < dead["lease"].total_seconds() <= 300
    _fault(stack, case.channel, hold_refunds="")
    wait_for("the held call released", lambda: _seen(stack, case.refund_no).get("held") == 0)
    assert _seen(stack, case.refund_no)["effects"] == (1 if case.hold == "after_effect" else 0)
    with psycopg.connect(stack.db) as conn:        # the 5 minutes pass
        conn.execute("UPDATE outbox SET run_at = now() WHERE kind = 'refund' "
                     "AND (payload->>'refund_id')::int = %s", (case.refund_id,))


def _finished_once(stack: Stack, case: Case, calls: int) -> dict[str, int]:
    """Wait for the next worker to finish the refund; it is recorded and posted once, and
    the channel refunded once."""
    done = wait_for(f"the next worker finishing the {case.channel} refund",
                    lambda: (lambda row: row if row["job_status"] == "done" else None)(
                        _refund_row(stack, case.refund_id)), timeout_s=30)
    assert (done["status"], done["order_status"], done["tries"], done["entries"]) == (
        "succeeded", "refunded", 2, 1)
    if case.channel == "wechat":                    # (Alipay gives a refund no id of its own)
        assert done["channel_refund_id"].startswith("5030")
    seen = _seen(stack, case.refund_no)
    assert seen == {"out_refund_no": case.refund_no, "calls": calls, "effects": 1,
                    "queries": 1, "held": 0}
    trade = stack.live.http.get(f"/sandbox/trades/{case.out_trade_no}").json()
    assert (trade["state"], trade["refunded_fen"]) == ("refunded", MEDICAL_FEN)
    with psycopg.connect(stack.db) as conn:
        total = conn.execute("SELECT sum(amount_fen) FROM postings").fetchone()
    assert total == (0,)
    print(f"\nworker killed {case.hold.replace('_', ' ')} ({case.channel}): channel refund "
          f"calls {seen['calls']}, refunds done {seen['effects']}, queries {seen['queries']}; "
          "one refund recorded and posted")
    return seen


def test_refunds_survive_their_workers_killed(stack: Stack) -> None:
    """Three workers in turn: the first is killed before WeChat did the refund (the next
    sends it again: two calls, one refund); the second finishes that one, then is killed
    after Alipay did the next refund and before it answered (the third finds it by the
    refund query: one call, one refund)."""
    workers: list[subprocess.Popen[bytes]] = []

    def worker() -> subprocess.Popen[bytes]:
        workers.append(start_worker(stack.settings,
                                    stack.logs / f"worker-{len(workers) + 1}.log", stack.env))
        return workers[-1]

    try:
        first = _approved_refund(stack, "wechat", "wechat_native", "张三", "before_effect")
        _kill_while_held(stack, worker(), first)
        second_worker = worker()
        _finished_once(stack, first, calls=2)
        second = _approved_refund(stack, "alipay", "alipay_qr", "李梅", "after_effect")
        _kill_while_held(stack, second_worker, second)
        worker()
        _finished_once(stack, second, calls=1)
    finally:
        for proc in workers:
            stop(proc)
