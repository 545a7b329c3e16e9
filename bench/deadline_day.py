"""Benchmark: a deadline day, everything at once, then the next morning's reconciliation.

    .venv/bin/python bench/deadline_day.py                    # 20,000 residents, 2 processes
    .venv/bin/python bench/deadline_day.py --orders 3000 --agents 30 --workers 3 --json out.json

1. A fresh PostgreSQL database (``bench_deadline_<pid>``), migrated, the demo district loaded
   (``--residents``; its departments and deaths too), one village agent per village of the
   agents' share (``--agents``).
2. The channel simulator in its own process (the bench's ``_server:create_simulator``: the
   channels' trades, statements and signing keys), and the service as ``serve --workers N``
   runs it (``--workers`` processes behind one port; ``bench/_server.py``), its channel
   clients pointed at the simulator. The business clock is the collection window's last
   day, ``--day`` 08:00, in every process.
3. The day, all streams at once, each with its own concurrency:
   - **lookups**: residents of the online villages looked up by the mini-program, over and
     over (``--lookup-concurrency``);
   - **orders**: each online resident's unpaid items ordered, spread over every channel
     (``wechat_jsapi``, ``wechat_native``, ``alipay_qr``, ``unionpay_qr``, ``aggregate_qr``),
     with an ``Idempotency-Key``; every order but the aggregate codes' (no trade until a
     wallet scans one) is then paid in the simulator, which hands back the channel's signed
     notification instead of sending it (``/sandbox/pay``, ``deliver: false``);
   - **notifications**: those deliveries, ``--dup`` of them twice, sent in shuffled order
     (a window of 64 drawn at random: out of order, a repeat before the first) and sent
     again until answered success, as the channels retry;
   - **agents**: each agent logs in, looks up the residents of its village and takes their
     unpaid items in cash, one collection per resident with a receipt number, then remits
     the day's cash to the town account.
4. The next morning (every process restarted with the clock at ``--day`` + 1, 10:30, the
   simulator's clock moved there): finance fetches the day's WeChat Pay and Alipay
   statements and reconciles them (ChinaUMS statements are uploaded by finance, not
   fetched: its payments are checked in the database below).
5. Checks, to the fen: every paid order has exactly one payment of its amount; every
   bill line paid once; the payments' total is what the orders and the collections asked;
   every journal entry balances; the ledger's collected postings equal the payments; each
   agent's remittance equals its cash; the reconciliation found every statement line and no
   discrepancy.

Printed: per endpoint the requests, answers/s over the day, p50 and p99; the day's wall
time; the checks. Each figure comes with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
import httpx  # noqa: E402
import psycopg  # noqa: E402

from backend.migrate import upgrade  # noqa: E402

ONLINE_CHANNELS = ("wechat_jsapi", "wechat_native", "alipay_qr", "unionpay_qr", "aggregate_qr")
AGENT_PASSWORD = "agent-bench-pass"


@dataclass
class Latencies:
    by_endpoint: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def add(self, name: str, ms: float, status: int) -> None:
        self.by_endpoint[name].append(ms)
        self.statuses[name][status] += 1


async def call(lat: Latencies, name: str, client: httpx.AsyncClient, method: str, url: str,
               want: tuple[int, ...] = (200, 201), **kw: Any) -> httpx.Response:
    start = time.perf_counter()
    resp = await client.request(method, url, **kw)
    lat.add(name, (time.perf_counter() - start) * 1000, resp.status_code)
    if resp.status_code not in want:
        raise RuntimeError(f"{method} {url}: {resp.status_code} {resp.text[:300]}")
    return resp


@dataclass
class Day:
    """What the day asked for, to check the database against."""
    order_fen: dict[str, int] = field(default_factory=dict)        # order_no → fen, paid
    unpaid_orders: list[str] = field(default_factory=list)          # aggregate codes
    cash_fen: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # agent → fen
    remitted_fen: dict[str, int] = field(default_factory=dict)
    notifications: int = 0
    redeliveries: int = 0
    retries: int = 0


def setup_district(url: str, tmp: Path, args: argparse.Namespace) -> tuple[Any, list[Any],
                                                                            dict[str, list[Any]]]:
    """Migrate, load the demo district, make the agents; (settings, online people, the
    agents' villages → their people)."""
    from order_create import demo_people

    from backend.auth.service import create_staff_user
    from backend.db import unit_of_work
    from backend.demo.generator import load_demo
    from backend.runtime import Runtime

    upgrade(url)
    settings = sup.bench_settings(url, tmp, args.port, log_level=args.log_level).model_copy(
        update={"collect_now": datetime.fromisoformat(f"{args.day}T08:00:00+08:00")})
    rt = Runtime(settings)
    try:
        load_demo(rt, residents=args.residents, seed=args.seed, progress=False)
        people = demo_people(rt, args.residents, args.seed)
        villages = sorted({p.village_code for p in people})
        random.Random(args.seed).shuffle(villages)
        agent_villages = villages[:args.agents]
        with unit_of_work(rt.sessions) as s:
            for code in agent_villages:
                create_staff_user(s, username=f"agent{code}", password=AGENT_PASSWORD,
                                  role="agent", village_code=code, clock=rt.clock, via="bench")
    finally:
        rt.close()
    by_village: dict[str, list[Any]] = defaultdict(list)
    for p in people:
        by_village[p.village_code].append(p)
    online = [p for p in people if p.village_code not in agent_villages]
    return settings, online, {v: by_village[v] for v in agent_villages}


async def resident_token(lat: Latencies, http: httpx.AsyncClient) -> str:
    r = await call(lat, "POST /auth/wechat", http, "POST", "/api/v1/auth/wechat",
                   json={"code": f"sandbox:oDeadline{uuid.uuid4().hex[:16]}"})
    return str(r.json()["access_token"])


async def lookups(lat: Latencies, http: httpx.AsyncClient, people: list[Any], stop: asyncio.Event,
                  seed: int) -> None:
    token = await resident_token(lat, http)
    headers = {"Authorization": f"Bearer {token}"}
    rnd = random.Random(seed)
    while not stop.is_set():
        p = rnd.choice(people)
        await call(lat, "POST /residents/lookup", http, "POST", "/api/v1/residents/lookup",
                   headers=headers, json={"name": p.name, "id_number": p.id_number,
                                          "year": sup.YEAR})


async def orders(lat: Latencies, http: httpx.AsyncClient, sim: httpx.AsyncClient,
                 people: asyncio.Queue[Any], notes: list[tuple[str, dict[str, str], bytes]],
                 day: Day, args: argparse.Namespace, seed: int) -> None:
    token = await resident_token(lat, http)
    headers = {"Authorization": f"Bearer {token}"}
    rnd = random.Random(seed)
    while True:
        try:
            p = people.get_nowait()
        except asyncio.QueueEmpty:
            return
        r = await call(lat, "POST /residents/lookup", http, "POST", "/api/v1/residents/lookup",
                       headers=headers, json={"name": p.name, "id_number": p.id_number,
                                              "year": sup.YEAR})
        data = r.json()
        items = [{"resident_ref": data["resident"]["ref"], "insurance": i["insurance"]}
                 for i in data["items"] if i["status"] == "unpaid" and i["payable"]]
        if not items:
            continue
        channel = rnd.choice(ONLINE_CHANNELS)
        r = await call(lat, f"POST /orders ({channel})", http, "POST", "/api/v1/orders",
                       headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                       json={"year": sup.YEAR, "channel": channel, "items": items})
        order = r.json()
        if channel == "aggregate_qr":
            day.unpaid_orders.append(order["order_no"])
            continue
        times = 2 if rnd.random() < args.dup else 1
        paid = await call(lat, "simulator: pay", sim, "POST", "/sandbox/pay", json={
            "out_trade_no": order["payment"]["out_trade_no"], "times": times,
            "deliver": False})
        for n in paid.json()["notifications"]:
            path = "/" + n["url"].split("/", 3)[3]
            notes.append((path, n["headers"], n["body"].encode()))
        day.order_fen[order["order_no"]] = int(order["amount_fen"])
        day.notifications += 1
        day.redeliveries += times - 1


async def deliveries(lat: Latencies, http: httpx.AsyncClient, notes: list[Any],
                     producing: asyncio.Event, day: Day, seed: int) -> None:
    """A channel's delivery: from a window of the pending ones at random; again until the
    answer is success (a failure answer or an error makes the channel retry)."""
    rnd = random.Random(seed)
    while True:
        if not notes:
            if not producing.is_set():
                return
            await asyncio.sleep(0.005)
            continue
        k = rnd.randrange(min(len(notes), 64))
        notes[k], notes[-1] = notes[-1], notes[k]
        path, headers, body = notes.pop()
        channel = path.rsplit("/", 1)[1]
        try:
            r = await call(lat, f"POST /notify/{channel}", http, "POST", path,
                           headers=headers, content=body, want=(200, 204))
            ok = r.status_code in (200, 204) and (channel != "alipay" or r.text == "success")
        except (RuntimeError, httpx.HTTPError):
            ok = False
        if not ok:
            day.retries += 1
            notes.insert(0, (path, headers, body))
            await asyncio.sleep(0.05)


async def agent(lat: Latencies, http: httpx.AsyncClient, village: str, people: list[Any],
                day: Day, business_day: date) -> None:
    r = await call(lat, "POST /auth/staff", http, "POST", "/api/v1/auth/staff",
                   json={"username": f"agent{village}", "password": AGENT_PASSWORD})
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    cash = 0
    for n, p in enumerate(people):
        r = await call(lat, "POST /residents/lookup (agent)", http, "POST",
                       "/api/v1/residents/lookup", headers=headers,
                       json={"name": p.name, "id_number": p.id_number, "year": sup.YEAR})
        data = r.json()
        items = [{"resident_ref": data["resident"]["ref"], "insurance": i["insurance"]}
                 for i in data["items"] if i["status"] == "unpaid" and i["payable"]]
        if not items:
            continue
        receipt = f"{village[-6:]}-{n:05d}"
        r = await call(lat, "POST /agent/collections", http, "POST", "/api/v1/agent/collections",
                       headers={**headers, "Idempotency-Key": f"receipt-{receipt}"},
                       json={"year": sup.YEAR, "method": "cash", "receipt_no": receipt,
                             "items": items})
        cash += int(r.json()["amount_fen"])
    day.cash_fen[village] = cash
    if cash:
        await call(lat, "POST /agent/remittances", http, "POST", "/api/v1/agent/remittances",
                   headers=headers, json={"business_date": business_day.isoformat(),
                                          "amount_fen": cash,
                                          "bank_receipt_no": f"CCB-{village}-{business_day}"})
        day.remitted_fen[village] = cash


async def run_day(base_url: str, sim_url: str, online: list[Any],
                  agents: dict[str, list[Any]], args: argparse.Namespace
                  ) -> tuple[Latencies, Day, float]:
    lat, day = Latencies(), Day()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http, \
            httpx.AsyncClient(base_url=sim_url, timeout=120, limits=limits) as sim:
        buyers = online[:args.orders]
        browsing = online[args.orders:] or online
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for p in buyers:
            queue.put_nowait(p)
        notes: list[tuple[str, dict[str, str], bytes]] = []
        producing, stop = asyncio.Event(), asyncio.Event()
        producing.set()
        start = time.perf_counter()

        async def ordering() -> None:
            await asyncio.gather(*(orders(lat, http, sim, queue, notes, day, args, i)
                                   for i in range(args.order_concurrency)))
            producing.clear()

        async def agents_day() -> None:
            sem = asyncio.Semaphore(args.agent_concurrency)
            business_day = date.fromisoformat(args.day)

            async def one(v: str, people: list[Any]) -> None:
                async with sem:
                    await agent(lat, http, v, people, day, business_day)

            await asyncio.gather(*(one(v, p) for v, p in agents.items()))

        work: list[Awaitable[Any]] = [
            ordering(), agents_day(),
            *(deliveries(lat, http, notes, producing, day, 1000 + i)
              for i in range(args.notify_concurrency))]
        browse = [asyncio.ensure_future(lookups(lat, http, browsing, stop, 2000 + i))
                  for i in range(args.lookup_concurrency)]
        await asyncio.gather(*work)
        stop.set()
        await asyncio.gather(*browse)
        return lat, day, time.perf_counter() - start


async def next_morning(base_url: str, args: argparse.Namespace, lat: Latencies
                       ) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        r = await call(lat, "POST /auth/staff", http, "POST", "/api/v1/auth/staff",
                       json={"username": "finance", "password": "finance-demo"})
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        out = {}
        for channel in ("wechat", "alipay"):
            r = await call(lat, "POST /reconciliation/fetch", http, "POST",
                           f"/api/v1/reconciliation/{channel}/fetch", headers=headers,
                           json={"date": args.day})
            run = r.json()
            out[channel] = {"matched": run["matched"],
                            "discrepancies": run["discrepancy_count"],
                            "statement_payments": run["totals"]["statement"]["payments"],
                            "statement_fen": run["totals"]["statement"]["payment_fen"]}
        return out


def check(url: str, day: Day, recon: dict[str, Any], wechat_alipay_paid: int
          ) -> dict[str, Any]:
    problems: list[str] = []
    out: dict[str, Any] = {}

    def expect(name: str, got: Any, want: Any) -> None:
        out[name] = got
        if got != want:
            problems.append(f"{name}: {got} (expected {want})")

    online_fen = sum(day.order_fen.values())
    cash_fen = sum(day.cash_fen.values())
    with psycopg.connect(url) as conn:
        def one(q: str, *params: Any) -> Any:
            return conn.execute(q, params).fetchone()[0]  # type: ignore[index]

        rows = dict(conn.execute(
            "SELECT o.order_no, coalesce(sum(p.amount_fen), 0) FROM orders o "
            "LEFT JOIN payments p ON p.order_id = o.id WHERE o.order_no = ANY(%s) "
            "GROUP BY o.order_no", (list(day.order_fen),)).fetchall())
        expect("online orders paid exactly their amount",
               sum(1 for no, fen in day.order_fen.items() if rows.get(no) == fen),
               len(day.order_fen))
        expect("orders with more than one payment", one(
            "SELECT count(*) FROM (SELECT order_id FROM payments GROUP BY order_id "
            "HAVING count(*) > 1) x"), 0)
        expect("aggregate codes left unpaid", one(
            "SELECT count(*) FROM orders WHERE order_no = ANY(%s) AND status = 'pending'",
            day.unpaid_orders), len(day.unpaid_orders))
        expect("payments total fen", one("SELECT coalesce(sum(amount_fen), 0) FROM payments"),
               online_fen + cash_fen)
        expect("cash payments fen", one("SELECT coalesce(sum(amount_fen), 0) FROM payments "
                                        "WHERE channel = 'cash'"), cash_fen)
        expect("bill lines paid twice", one(
            "SELECT count(*) FROM payment_lines WHERE NOT applied"), 0)
        expect("bill lines paid fen", one(
            "SELECT coalesce(sum(paid_fen), 0) FROM bill_lines WHERE status = 'paid' "
            "AND paid_payment_id IS NOT NULL"), online_fen + cash_fen)
        expect("unbalanced journal entries", one(
            "SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id "
            "HAVING sum(amount_fen) <> 0) x"), 0)
        expect("collected postings fen", one(
            "SELECT coalesce(sum(amount_fen), 0) FROM postings "
            "WHERE measure IN ('collected', 'duplicate')"), online_fen + cash_fen)
        expect("remittances fen", one("SELECT coalesce(sum(amount_fen), 0) FROM remittances"),
               sum(day.remitted_fen.values()))
        expect("notification outcomes", dict(conn.execute(
            "SELECT outcome, count(*) FROM notification_inbox GROUP BY outcome").fetchall()),
            {"applied": day.notifications})
    expect("statement lines matched (wechat + alipay)",
           sum(r["matched"] for r in recon.values()), wechat_alipay_paid)
    expect("reconciliation discrepancies", sum(r["discrepancies"] for r in recon.values()), 0)
    out["problems"] = problems
    out["ok"] = not problems
    return out


def report(lat: Latencies, wall_s: float) -> list[dict[str, Any]]:
    rows = []
    print(f"\n{'endpoint':38} {'requests':>9} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}  "
          "statuses")
    for name in sorted(lat.by_endpoint):
        ms = lat.by_endpoint[name]
        row = {"endpoint": name, "requests": len(ms), "per_s": len(ms) / wall_s,
               "p50_ms": sup.percentile(ms, 50), "p99_ms": sup.percentile(ms, 99),
               "statuses": dict(lat.statuses[name])}
        rows.append(row)
        print(f"{name:38} {len(ms):9,} {row['per_s']:8.1f} {row['p50_ms']:8.1f} "
              f"{row['p99_ms']:8.1f}  {dict(lat.statuses[name])}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--residents", type=int, default=20_000)
    p.add_argument("--orders", type=int, default=2_000, help="online residents who order")
    p.add_argument("--agents", type=int, default=10, help="villages whose agent collects cash")
    p.add_argument("--agent-people", type=int, default=60,
                   help="residents each agent visits (of its village)")
    p.add_argument("--workers", type=int, default=2, help="server processes")
    p.add_argument("--dup", type=float, default=0.10, help="share of notifications sent twice")
    p.add_argument("--lookup-concurrency", type=int, default=8)
    p.add_argument("--order-concurrency", type=int, default=8)
    p.add_argument("--notify-concurrency", type=int, default=12)
    p.add_argument("--agent-concurrency", type=int, default=4)
    p.add_argument("--day", default="2020-12-20", help="the business day (the window's last)")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--log-level", default="WARNING", help="the server's LOG_LEVEL")
    p.add_argument("--database", help="its name (default bench_deadline_<pid>; dropped and "
                        "created)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--keep", action="store_true", help="do not drop the database")
    args = p.parse_args(argv)
    code = sup.run_on_code_snapshot()
    sup.exit_on_sigterm()
    args.database = args.database or sup.own_database_name("bench_deadline")
    url = sup.database_url(args.database)
    print(f"machine: {sup.machine()}; PostgreSQL {sup.server_version(sup.database_url('postgres'))}"
          f"\nservice code: {code}")
    sup.recreate_database(url)
    result: dict[str, Any] = {"machine": sup.machine(), "code": code, "args": vars(args)}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-deadline-") as tmp_name:
            tmp = Path(tmp_name)
            args.port, sim_port = sup.free_port(), sup.free_port()
            t0 = time.perf_counter()
            settings, online, agents = setup_district(url, tmp, args)
            agents = {v: people[:args.agent_people] for v, people in agents.items()}
            print(f"district: {args.residents:,} residents, {len(agents)} agents' villages; "
                  f"set up in {time.perf_counter() - t0:.0f} s")
            sim_url = f"http://127.0.0.1:{sim_port}"
            env = {"BENCH_SIMULATOR_URL": sim_url}
            sim = sup.ServerProcess(settings, sim_port, 1, log_path=tmp / "simulator.log",
                                    app="_server:create_simulator", extra_env=env).start()
            try:
                with sup.ServerProcess(settings, args.port, args.workers,
                                       log_path=tmp / "server.log", extra_env=env) as server:
                    cpu0 = server.cpu_seconds(), sup.postgres_cpu_seconds(args.database)
                    lat, day, wall = asyncio.run(run_day(server.base_url, sim_url, online,
                                                         agents, args))
                    cpu = (server.cpu_seconds() - cpu0[0],
                           sup.postgres_cpu_seconds(args.database) - cpu0[1])
                print(f"\nthe day: {wall:.1f} s; {len(day.order_fen) + len(day.unpaid_orders):,}"
                      f" online orders ({len(day.unpaid_orders)} aggregate codes left unpaid), "
                      f"{day.notifications:,} payments notified + {day.redeliveries:,} "
                      f"re-deliveries, {day.retries:,} retries; {len(day.cash_fen)} agents took "
                      f"{sum(day.cash_fen.values()) / 100:,.2f} yuan in cash; server CPU "
                      f"{cpu[0]:.1f} s, PostgreSQL {cpu[1]:.1f} s")
                rows = report(lat, wall)
                # the next morning, 10:30: the statements are out
                morning = datetime.fromisoformat(args.day) + timedelta(days=1)
                morning_at = f"{morning:%Y-%m-%d}T10:30:00+08:00"
                httpx.post(f"{sim_url}/sandbox/clock", json={"to": morning_at}, timeout=30
                           ).raise_for_status()
                settings2 = settings.model_copy(update={
                    "collect_now": datetime.fromisoformat(morning_at)})
                recon_lat = Latencies()
                with sup.ServerProcess(settings2, args.port, args.workers,
                                       log_path=tmp / "server.log", extra_env=env) as server:
                    recon = asyncio.run(next_morning(server.base_url, args, recon_lat))
                print("\nthe next morning: " + json.dumps(recon, ensure_ascii=False))
                rows += report(recon_lat, sum(recon_lat.by_endpoint[
                    "POST /reconciliation/fetch"]) / 1000)
            finally:
                sim.stop()
            with psycopg.connect(url) as conn:
                paid_wa = conn.execute(
                    "SELECT count(*) FROM payments WHERE channel IN ('wechat', 'alipay')"
                ).fetchone()[0]  # type: ignore[index]
            checks = check(url, day, recon, paid_wa)
            print("\nchecks: " + ("ok" if checks["ok"] else "FAILED") + "\n" + json.dumps(
                {k: v for k, v in checks.items() if k != "ok"}, indent=1, ensure_ascii=False,
                default=str))
            result.update({"wall_s": wall, "endpoints": rows, "reconciliation": recon,
                           "checks": checks, "server_cpu_s": cpu[0], "postgres_cpu_s": cpu[1],
                           "payments": day.notifications, "redeliveries": day.redeliveries,
                           "retries": day.retries, "cash_fen": sum(day.cash_fen.values())})
    finally:
        if not args.keep:
            sup.drop_database(url)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0 if result.get("checks", {}).get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
