"""Benchmark: payment notifications per second, against the fixed yardstick in the same run.

    .venv/bin/python bench/notify_load.py --runs 3                        # 8,000 pending orders
    .venv/bin/python bench/notify_load.py --runs 3 --preload-paid 1000000 # … and a campaign
    .venv/bin/python bench/notify_load.py --workers 1,2 --json out.json

1. A fresh database (``bench_notify_<pid>``), migrated, with N pending orders written by
   COPY: N residents, each with one unpaid medical bill line, in one single-item order with
   one pending attempt whose ``out_trade_no`` has its channel's real format (WeChat Native,
   Alipay QR, ChinaUMS bills QR, split by ``--mix``; WeChat only by default, as the
   yardstick's definition). ``--preload-paid M`` adds M orders already paid — residents,
   orders, bill lines, payments, inbox rows and ledger postings of a campaign — by COPY.
2. The service in a child process, ``python -m backend serve --workers N`` (or, with
   ``--server-timing``, ``bench/_server.py``: the same app with the server's own time in
   every answer), in live mode: channel
   keys configured (the simulators' own, see ``_support.live_env``), no simulator in the
   process, the real clock. ``--sandbox`` serves the simulator instead.
3. Real-format signed notifications from the channel simulators — WeChat APIv3
   (AES-256-GCM resource, RSA-SHA256 signature headers), Alipay RSA2 forms, ChinaUMS
   SHA256-signed forms — one per order, and ``--dup`` (10%) of them sent twice, in random
   order. They are built before the timed phase, in segments short enough that every
   WeChat timestamp is inside the 300 s window when it is sent; building is timed apart.
4. A load generator in this process (asyncio, ``--concurrency`` requests in flight) posts
   them to ``/api/v1/notify/{wechat,alipay,unionpay}`` and records each answer, its latency
   and the server's own time (``Server-Timing``); the database's sessions are sampled for
   what they wait on.
5. Checks: every answer is the channel's success answer; exactly one payment per order,
   every bill line, attempt and order paid, the inbox holds one applied row per order, no
   refunds; the ledger: one entry and one "collected" posting per order, every entry
   balanced, totals equal the payments (the preloaded orders included).
6. After each run, the fixed yardstick (``bench/yardstick.py``: pgbench running the least a
   notification must do, on its own database): **ratio = notifications/s answered ÷
   yardstick TPS**, run by run, and the median.

``--profile DIR`` samples the server with py-spy during the timed phase (workers=1) and
writes the flame-graph input and a summary of where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
import psycopg  # noqa: E402
from _server import server_timing  # noqa: E402
from yardstick import YardstickResult, run_yardstick  # noqa: E402

from backend.migrate import upgrade  # noqa: E402
from payment_adapters.base import Channel  # noqa: E402

AMOUNT_FEN = 38_000
SUCCESS = {Channel.WECHAT: (204, b""), Channel.ALIPAY: (200, b"success"),
           Channel.UNIONPAY: (200, b"SUCCESS")}
WECHAT_WINDOW_S = 300
# A segment is "disturbed" when work outside the benchmark's own processes
# (other people's test runs: the machine is shared) took more than this share of the CPUs.
DISTURBED = 0.05


# --------------------------------------------------------------------------- building
_FACTORY: sup.NotificationFactory | None = None


def _init_builder(settings: Any, numbers: sup.OrderNumbers) -> None:
    global _FACTORY
    _FACTORY = sup.NotificationFactory(settings, numbers, AMOUNT_FEN)


def _build_chunk(items: list[tuple[Channel, int]]) -> list[tuple[str, dict[str, str], bytes]]:
    assert _FACTORY is not None
    return [_FACTORY.build(ch, i) for ch, i in items]


def build_all(pool: ProcessPoolExecutor, items: list[tuple[Channel, int]],
              procs: int) -> list[tuple[str, dict[str, str], bytes]]:
    size = max(1, min(2000, len(items) // (procs * 4) + 1))
    chunks = [items[k:k + size] for k in range(0, len(items), size)]
    out: list[tuple[str, dict[str, str], bytes]] = []
    for part in pool.map(_build_chunk, chunks):
        out.extend(part)
    return out


# --------------------------------------------------------------------------- sending
@dataclass
class Sent:
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _send(base_url: str, notes: list[tuple[Channel, str, dict[str, str], bytes]],
                concurrency: int, sent: Sent) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        queue = iter(notes)

        async def worker() -> None:
            for ch, path, headers, body in queue:
                t0 = time.perf_counter()
                try:
                    resp = await client.post(path, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    sent.failures.append(f"{ch.value}: {type(exc).__name__} {exc}")
                    sent.answers["transport_error"] += 1
                    continue
                sent.latencies_ms.append((time.perf_counter() - t0) * 1000)
                app = server_timing(resp.headers.get("server-timing")).get("app")
                if app is not None:
                    sent.server_ms.append(app)
                if (resp.status_code, resp.content) == SUCCESS[ch]:
                    sent.answers["success"] += 1
                else:
                    sent.answers[f"{ch.value} {resp.status_code}"] += 1
                    if len(sent.failures) < 20:
                        sent.failures.append(f"{ch.value} {resp.status_code} "
                                             f"{resp.content[:200]!r}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sent.seconds += time.perf_counter() - t0


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: the request bytes are made
    once, the answer is read by Content-Length. It costs the load generator a tenth of
    httpx's CPU, which on a 2-core machine is CPU the server gets back."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get(b"content-length", b"0"))
        body = await self.reader.readexactly(length) if length else b""
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def raw_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


async def _send_raw(base_url: str, notes: list[tuple[Channel, str, dict[str, str], bytes]],
                    concurrency: int, sent: Sent, per_connection: int = 50) -> None:
    host, port_s = base_url.removeprefix("http://").rsplit(":", 1)
    port = int(port_s)
    requests = [(ch, raw_request(host, port, path, headers, body))
                for ch, path, headers, body in notes]
    queue = iter(requests)

    async def worker() -> None:
        conn = RawConnection(host, port)
        used = 0
        try:
            for ch, raw in queue:
                if used >= per_connection:
                    # a new connection now and then: with several uvicorn workers, whichever
                    # accepts a connection serves it, so long-lived ones would skew the split
                    await conn.close()
                    used = 0
                used += 1
                t0 = time.perf_counter()
                try:
                    status, headers, content = await conn.request(raw)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    await conn.close()
                    sent.failures.append(f"{ch.value}: {type(exc).__name__} {exc}")
                    sent.answers["transport_error"] += 1
                    continue
                sent.latencies_ms.append((time.perf_counter() - t0) * 1000)
                app = server_timing(headers.get(b"server-timing", b"").decode()).get("app")
                if app is not None:
                    sent.server_ms.append(app)
                if (status, content) == SUCCESS[ch]:
                    sent.answers["success"] += 1
                else:
                    sent.answers[f"{ch.value} {status}"] += 1
                    if len(sent.failures) < 20:
                        sent.failures.append(f"{ch.value} {status} {content[:200]!r}")
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sent.seconds += time.perf_counter() - t0


def send(base_url: str, notes: list[tuple[Channel, str, dict[str, str], bytes]],
         concurrency: int, sent: Sent, client: str = "raw") -> None:
    coro = (_send_raw if client == "raw" else _send)(base_url, notes, concurrency, sent)
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


# --------------------------------------------------------------------------- one load run
@dataclass
class LoadResult:
    workers: int
    concurrency: int
    orders: int                     # timed orders (after the warm-up)
    notifications: int              # timed notifications sent (orders + re-deliveries)
    seconds: float
    applied_per_s: float
    notifications_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_p50_ms: float
    server_p99_ms: float
    non_success: int
    build_seconds: float
    build_per_s: float
    segments: int
    cpu_ms_per_notification: dict[str, float]
    server_context_switches_per_notification: tuple[float, float]
    new_db_connections: int
    machine_busy: float             # share of all CPUs busy during the timed phase
    segment_stats: list[dict[str, Any]]
    quiet_applied_per_s: float      # over the segments no one else disturbed (nan: none)
    other_cpu_ms_per_notification: float   # busy CPU not of server, postgres, generator
    answers: dict[str, int]
    failures: list[str]
    checks: dict[str, Any]
    # busy database sessions on average, by what they were doing (pg_stat_activity)
    database_sessions: dict[str, float] = field(default_factory=dict)


def run_load(args: argparse.Namespace, settings: Any, numbers: sup.OrderNumbers,
             ranges: dict[Channel, range], workers: int, run_no: int,
             tmp: Path) -> LoadResult:
    rng = random.Random(args.seed + run_no)
    channel_of = {i: ch for ch, r in ranges.items() for i in r}
    ids = list(range(1, args.orders + 1))
    rng.shuffle(ids)
    warm = ids[:args.warmup]
    timed = ids[args.warmup:]
    dup_set = set(rng.sample(timed, round(len(timed) * args.dup)))

    server = sup.ServerProcess(settings, settings_port(settings), workers,
                               log_path=tmp / f"server-w{workers}-r{run_no}.log",
                               live=not args.sandbox,
                               serve=not args.sandbox and not args.server_timing)
    pool = ProcessPoolExecutor(max_workers=args.build_procs, initializer=_init_builder,
                               initargs=(settings, numbers))
    sent, warm_sent = Sent(), Sent()
    build_s = 0.0
    built = 0
    segments = 0
    cpu = {"server user": 0.0, "server sys": 0.0, "postgres": 0.0, "load generator": 0.0}
    switches = [0, 0]
    sessions = 0
    machine = [0.0, 0.0]
    seg_stats: list[dict[str, Any]] = []
    wait_counts: Counter[str] = Counter()
    wait_samples = [0]
    profiler: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        # warm-up (not timed): pool connections, prepared statements, caches
        notes = build_all(pool, [(channel_of[i], i) for i in warm], args.build_procs)
        send(server.base_url, [(channel_of[i], *n) for i, n in zip(warm, notes, strict=True)],
             args.concurrency, warm_sent, args.client)
        rate = max(50.0, len(warm) / max(warm_sent.seconds, 1e-3))
        # What autovacuum does within its first minute on a live system: statistics that
        # have seen the warm-up's payments, postings and inbox rows. Without them the server's
        # cached plans keep treating the ledger as the empty table it was at the start and
        # scan it whole per payment (a 15-second run never reaches autovacuum's naptime).
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        if args.profile:
            profiler = sup.start_profiler(server, Path(args.profile), args.profile_mode)
        pos = 0
        while pos < len(timed):
            # WeChat: a segment's notifications must all be sent within 300 s of signing.
            seg_len = int(min(len(timed) - pos, max(2000, rate * args.segment_s)))
            seg = timed[pos:pos + seg_len]
            pos += seg_len
            t0 = time.perf_counter()
            notes = build_all(pool, [(channel_of[i], i) for i in seg], args.build_procs)
            built_at = time.perf_counter()
            build_s += built_at - t0
            built += len(seg)
            batch = [(channel_of[i], *n) for i, n in zip(seg, notes, strict=True)]
            batch += [(channel_of[i], *n) for i, n in zip(seg, notes, strict=True)
                      if i in dup_set]
            rng.shuffle(batch)
            if args.wait_quiet:
                sup.wait_quiet(args.wait_quiet)
            dbname = _dbname(settings.database_url)
            before = (*server.cpu_split(), sup.postgres_cpu_seconds(dbname), _self_cpu())
            sw_before = server.context_switches()
            mc_before = sup.machine_cpu()
            sessions_before = sup.postgres_sessions(settings.database_url)
            seg_sent_before = sent.seconds
            with sup.WaitSampler(settings.database_url) as waits:
                send(server.base_url, batch, args.concurrency, sent, args.client)
            for k, v in waits.counts.items():
                wait_counts[k] += v
            wait_samples[0] += waits.samples
            after = (*server.cpu_split(), sup.postgres_cpu_seconds(dbname), _self_cpu())
            sw_after = server.context_switches()
            mc_after = sup.machine_cpu()
            machine[0] += mc_after[0] - mc_before[0]
            machine[1] += mc_after[1] - mc_before[1]
            sessions += sup.postgres_sessions(settings.database_url) - sessions_before - 1
            for k, name in enumerate(cpu):
                cpu[name] += after[k] - before[k]
            switches[0] += sw_after[0] - sw_before[0]
            switches[1] += sw_after[1] - sw_before[1]
            seg_s = sent.seconds - seg_sent_before
            rate = max(50.0, len(seg) / max(seg_s, 1e-3))
            segments += 1
            mine = sum(after[k] - before[k] for k in range(len(cpu)))
            other = ((mc_after[0] - mc_before[0]) - mine) / max(mc_after[1] - mc_before[1], 1e-9)
            seg_stats.append({"orders": len(seg), "notifications": len(batch), "seconds": seg_s,
                              "other_cpu_share": other, "disturbed": other > DISTURBED})
            if time.perf_counter() - built_at > WECHAT_WINDOW_S - 5:
                print("  warning: a segment took longer than the WeChat window to send",
                      file=sys.stderr)
            print(f"  segment {segments}: {len(seg):,} orders + {len(batch) - len(seg):,} "
                  f"re-deliveries in {seg_s:.1f} s ({len(seg) / seg_s:,.0f} orders/s); "
                  f"built in {built_at - t0:.1f} s; other work on the machine: {other:.0%} "
                  f"of the CPUs{' (DISTURBED)' if other > DISTURBED else ''}", file=sys.stderr)
    finally:
        if profiler is not None:
            sup.stop_profiler(profiler)
        pool.shutdown()
        server.stop()

    n_notes = len(sent.latencies_ms) + sent.answers.get("transport_error", 0)
    checks = check_database(settings.database_url, args.orders, args.preload_paid)
    non_success = sum(v for k, v in sent.answers.items() if k != "success") + sum(
        v for k, v in warm_sent.answers.items() if k != "success")
    lat = sup.summary(sent.latencies_ms)
    srv = sup.summary(sent.server_ms)
    return LoadResult(
        workers=workers, concurrency=args.concurrency, orders=len(timed),
        notifications=n_notes, seconds=sent.seconds,
        applied_per_s=len(timed) / sent.seconds, notifications_per_s=n_notes / sent.seconds,
        p50_ms=lat["p50"], p90_ms=lat["p90"], p99_ms=lat["p99"], server_p50_ms=srv["p50"],
        server_p99_ms=srv["p99"], non_success=non_success, build_seconds=build_s,
        build_per_s=built / build_s if build_s else 0.0, segments=segments,
        cpu_ms_per_notification={k: v * 1000 / max(n_notes, 1) for k, v in cpu.items()},
        server_context_switches_per_notification=(switches[0] / max(n_notes, 1),
                                                   switches[1] / max(n_notes, 1)),
        new_db_connections=sessions,
        machine_busy=machine[0] / machine[1] if machine[1] else 0.0,
        segment_stats=seg_stats, quiet_applied_per_s=_quiet_rate(seg_stats),
        other_cpu_ms_per_notification=(machine[0] - sum(cpu.values())) * 1000 / max(n_notes, 1),
        answers=dict(sent.answers + warm_sent.answers), failures=sent.failures[:20],
        checks=checks,
        database_sessions={k: v / max(wait_samples[0], 1)
                           for k, v in wait_counts.most_common(8)})


def _quiet_rate(stats: list[dict[str, Any]]) -> float:
    quiet = [x for x in stats if not x["disturbed"]]
    if not quiet:
        return float("nan")
    return sum(x["orders"] for x in quiet) / sum(x["seconds"] for x in quiet)


def _dbname(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def settings_port(settings: Any) -> int:
    return int(settings.public_base_url.rsplit(":", 1)[1])


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- checks
def check_database(url: str, n: int, preloaded: int = 0) -> dict[str, Any]:
    """The database after the run: one payment per order, all paid, ledger balanced (the
    ``preloaded`` paid orders included: each as one more of everything)."""
    n += preloaded
    total = n * AMOUNT_FEN
    out: dict[str, Any] = {}
    problems: list[str] = []

    def expect(name: str, got: Any, want: Any) -> None:
        out[name] = got
        if got != want:
            problems.append(f"{name}: {got} (expected {want})")

    with psycopg.connect(url) as conn:
        def one(q: str) -> Any:
            return conn.execute(q).fetchone()[0]  # type: ignore[index]

        expect("payments", one("SELECT count(*) FROM payments"), n)
        expect("orders with a payment", one("SELECT count(DISTINCT order_id) FROM payments"), n)
        expect("orders with more than one payment", one(
            "SELECT count(*) FROM (SELECT order_id FROM payments GROUP BY order_id "
            "HAVING count(*) > 1) x"), 0)
        expect("payments total fen", one("SELECT coalesce(sum(amount_fen), 0) FROM payments"),
               total)
        expect("bill lines not paid", one("SELECT count(*) FROM bill_lines "
                                          "WHERE status <> 'paid'"), 0)
        expect("bill lines paid fen", one("SELECT coalesce(sum(paid_fen), 0) FROM bill_lines"),
               total)
        expect("orders not paid", one("SELECT count(*) FROM orders WHERE status <> 'paid'"), 0)
        expect("attempts not paid", one("SELECT count(*) FROM attempts "
                                        "WHERE status <> 'paid'"), 0)
        expect("applied payment lines", one("SELECT count(*) FROM payment_lines "
                                            "WHERE applied"), n)
        expect("duplicate payment lines", one("SELECT count(*) FROM payment_lines "
                                              "WHERE NOT applied"), 0)
        expect("refunds", one("SELECT count(*) FROM refunds"), 0)
        inbox = dict(conn.execute("SELECT outcome, count(*) FROM notification_inbox "
                                  "GROUP BY outcome").fetchall())
        expect("inbox outcomes", inbox, {"applied": n})
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        if {"journal_entries", "postings"} <= tables:
            expect("ledger entries", one("SELECT count(*) FROM journal_entries"), n)
            expect("ledger entries per payment", one(
                "SELECT count(DISTINCT payment_id) FROM journal_entries"), n)
            expect("unbalanced entries", one(
                "SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id "
                "HAVING sum(amount_fen) <> 0) x"), 0)
            expect("postings sum", one("SELECT coalesce(sum(amount_fen), 0) FROM postings"), 0)
            expect("collected postings", one("SELECT count(*) FROM postings "
                                             "WHERE measure IN ('collected', 'duplicate')"), n)
            expect("collected fen", one("SELECT coalesce(sum(amount_fen), 0) FROM postings "
                                        "WHERE measure IN ('collected', 'duplicate')"), total)
        else:
            out["ledger"] = "no ledger tables in this schema"
    out["problems"] = problems
    out["ok"] = not problems
    return out


# (label, regex over "function (path)"): the steps whose inclusive share the profile shows
NOTIFY_STEPS = [
    ("event loop thread: uvicorn, ASGI stack, routing, middleware", r"^Server\.run "),
    ("notifications.service.handle (in the thread pool)", r"^handle \(backend/notifications"),
    ("  verify (signature, decryption, parsing)", r"\.verify \(payment_adapters/"),
    ("  _claim_event (inbox INSERT … ON CONFLICT)", r"^_claim_event "),
    ("  confirm_channel_payment", r"^confirm_channel_payment "),
    ("    apply_payment", r"^apply_payment "),
    ("    ledger post_entry", r"^post_entry "),
    ("  Session.commit", r"^Session\.commit "),
    ("  unit_of_work: Session close / connection return", r"^Session\.close "),
    ("  pool checkout (incl. pre-ping, new connections)", r"^_ConnectionFairy\._checkout "),
    ("  new database connections", r"\.connect \(psycopg/connection"),
    ("SQLAlchemy: statement compile (cache key, compile)", r"^(HasCacheKey\._generate_cache_key|"
     r"ClauseElement\._compile_w_cache) "),
    ("SQLAlchemy: ORM flush", r"^Session\.flush "),
    ("psycopg: Cursor.execute", r"^Cursor\.execute \(psycopg/"),
    ("logging (records, formatting, redaction, writes)", r"^Logger\._log "),
    ("starlette run_in_threadpool (anyio hand-off)", r"^run_in_threadpool "),
]


# --------------------------------------------------------------------------- report
def parse_mix(text: str) -> dict[Channel, float]:
    mix: dict[Channel, float] = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        mix[Channel(name.strip())] = float(share)
    if not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("--mix like wechat=0.6,alipay=0.2,unionpay=0.2")
    return {c: v for c, v in mix.items() if v > 0}


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=8_000, help="pending orders paid by the load")
    p.add_argument("--mix", type=parse_mix, default=parse_mix("wechat=1"),
                   help="channels' shares, e.g. wechat=0.6,alipay=0.2,unionpay=0.2")
    p.add_argument("--dup", type=float, default=0.10, help="share of notifications sent twice")
    p.add_argument("--preload-paid", type=int, default=0, metavar="N",
                   help="before the runs, N orders already paid (a province's campaign so far: "
                        "residents, orders, bill lines, payments, inbox rows, ledger), by COPY")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load generator: minimal asyncio HTTP/1.1 (default) or httpx.AsyncClient")
    p.add_argument("--workers", default="2", help="server processes, e.g. 1,2")
    p.add_argument("--runs", type=int, default=1, help="runs of each (median reported)")
    p.add_argument("--server-timing", action="store_true",
                   help="serve through bench/_server.py, which adds the server's own time to "
                        "every answer (Server-Timing), instead of `python -m backend serve`")
    p.add_argument("--sandbox", action="store_true",
                   help="serve in sandbox mode (the simulator in the process, COLLECT_NOW) "
                        "instead of live mode: channel keys configured (the simulators' own), "
                        "no simulator, the real clock")
    p.add_argument("--warmup", type=int, default=500, help="orders paid before timing")
    p.add_argument("--yardstick-clients", type=int, default=8)
    p.add_argument("--yardstick-seconds", type=int, default=10)
    p.add_argument("--build-procs", type=int, default=2)
    p.add_argument("--wait-quiet", type=float, default=900, metavar="S",
                   help="before each segment, wait up to S seconds for the "
                        "machine to be idle (0: do not wait)")
    p.add_argument("--segment-s", type=float, default=60,
                   help="seconds of sending per pre-built segment (< 300: WeChat window)")
    p.add_argument("--log-level", default="INFO", help="the server's LOG_LEVEL (serve: INFO)")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--database", help="its name (default bench_notify_<pid>; it is dropped and "
                        "created)")
    p.add_argument("--profile", metavar="DIR", help="py-spy the server into DIR")
    p.add_argument("--profile-mode", choices=["gil", "wall"], default="gil",
                   help="gil: the thread holding the GIL (CPU); wall: all threads, waits too")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--keep", action="store_true", help="do not drop the database")
    args = p.parse_args(argv)
    code = sup.run_on_code_snapshot()
    sup.exit_on_sigterm()
    args.database = args.database or sup.own_database_name("bench_notify")
    workers_list = [int(w) for w in args.workers.split(",")]

    url = sup.database_url(args.database)
    pg_version = sup.server_version(sup.database_url("postgres"))
    print(f"machine: {sup.machine()}; PostgreSQL {pg_version}\nservice code: {code}")
    sup.recreate_database(url)
    results: dict[str, Any] = {"machine": sup.machine(), "code": code, "orders": args.orders,
                               "mix": {c.value: v for c, v in args.mix.items()},
                               "dup": args.dup, "concurrency": args.concurrency}
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp_name:
            tmp = Path(tmp_name)
            settings = sup.bench_settings(url, tmp, sup.free_port(), log_level=args.log_level)
            numbers = sup.order_numbers(settings)   # also makes the sandbox keys
            sup.NotificationFactory(settings, numbers, AMOUNT_FEN)
            ranges = sup.channel_ranges(args.orders, args.mix)
            t0 = time.perf_counter()
            steps = sup.seed_pending_orders(url, args.orders, ranges, numbers, AMOUNT_FEN)
            print(f"seeded {args.orders:,} pending orders in {time.perf_counter() - t0:.1f} s "
                  f"({', '.join(f'{k} {v:.1f} s' for k, v in steps.items())}); "
                  + ", ".join(f"{c.value} {len(r):,}" for c, r in ranges.items()))
            if args.preload_paid:
                t0 = time.perf_counter()
                sup.preload_paid_orders(url, args.orders + 1, args.preload_paid, AMOUNT_FEN)
                print(f"preloaded {args.preload_paid:,} paid orders in "
                      f"{time.perf_counter() - t0:.1f} s")
                results["preload_paid"] = args.preload_paid
            loads: list[LoadResult] = []
            yardsticks: list[tuple[int, LoadResult, YardstickResult, float]] = []
            first = True
            for workers in workers_list:
                for run_no in range(args.runs):
                    if not first:
                        sup.reset_to_pending(url, args.orders if args.preload_paid else None)
                    first = False
                    print(f"load run {run_no + 1}/{args.runs}, {workers} worker(s), "
                          f"concurrency {args.concurrency}:", file=sys.stderr)
                    r = run_load(args, settings, numbers, ranges, workers, run_no, tmp)
                    loads.append(r)
                    print_load(r)
                    y = run_yardstick(args.yardstick_clients, args.yardstick_seconds)
                    ratio = r.notifications_per_s / y.tps if y.tps else 0.0
                    yardsticks.append((workers, r, y, ratio))
                    save(args, results, yardsticks)
                    print(f"  yardstick: {y.tps:,.0f} tps (latency average "
                          f"{y.latency_ms:.2f} ms); service {r.notifications_per_s:,.0f} "
                          f"notifications/s, p99 {r.p99_ms:.1f} ms: ratio {ratio:.3f}")
                    if not r.checks["ok"] or r.non_success:
                        print("  CHECK FAILED: " + "; ".join(r.checks["problems"])
                              + (f"; {r.non_success} non-success answers: "
                                 f"{r.failures[:3]}" if r.non_success else ""))
            if args.profile:
                sup.summarize_profile(Path(args.profile), NOTIFY_STEPS)
            results["load"] = [asdict(r) for r in loads]
            if yardsticks:
                print("\nsummary: against the fixed yardstick (median of runs)")
                for w in workers_list:
                    mine = [(r, y, q) for ww, r, y, q in yardsticks if ww == w]
                    if mine:
                        print(f"  {w} worker(s): ratio {median([q for _, _, q in mine]):.3f} "
                              f"({', '.join(f'{q:.3f}' for _, _, q in mine)}); service "
                              f"{median([r.notifications_per_s for r, _, _ in mine]):,.0f}/s, "
                              f"p50 {median([r.p50_ms for r, _, _ in mine]):.1f} ms, "
                              f"p99 {median([r.p99_ms for r, _, _ in mine]):.1f} ms; yardstick "
                              f"{median([y.tps for _, y, _ in mine]):,.0f} tps; checks "
                              + ("ok" if all(r.checks["ok"] and not r.non_success
                                             for r, _, _ in mine) else "FAILED"))
                results["yardstick"] = _yardstick_rows(yardsticks)
    finally:
        if not args.keep:
            sup.drop_database(url)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def _yardstick_rows(yardsticks: list[tuple[int, LoadResult, YardstickResult, float]]
                    ) -> list[dict[str, Any]]:
    return [{"workers": w, "ratio": q, "yardstick_tps": y.tps,
             "notifications_per_s": r.notifications_per_s, "p50_ms": r.p50_ms,
             "p99_ms": r.p99_ms, "checks_ok": r.checks["ok"] and not r.non_success}
            for w, r, y, q in yardsticks]


def save(args: argparse.Namespace, results: dict[str, Any],
         yardsticks: list[tuple[int, LoadResult, YardstickResult, float]]) -> None:
    """Write what is measured so far (a long run that gets stopped keeps its finished runs)."""
    if args.json:
        partial = {**results, "load": [asdict(r) for _, r, _, _ in yardsticks],
                   "yardstick": _yardstick_rows(yardsticks)}
        Path(args.json).write_text(json.dumps(partial, indent=2, default=str))


def print_load(r: LoadResult) -> None:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_ms_per_notification.items())
    print(f"  {r.orders:,} orders ({r.notifications:,} notifications) in {r.seconds:.1f} s: "
          f"{r.applied_per_s:,.0f} applied/s, {r.notifications_per_s:,.0f} notifications/s; "
          f"latency p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms"
          + (f" (server p50 {r.server_p50_ms:.1f}, p99 {r.server_p99_ms:.1f})"
             if r.server_p50_ms == r.server_p50_ms else "")       # nan without Server-Timing
          + f"; non-success {r.non_success}; checks {'ok' if r.checks['ok'] else 'FAILED'}")
    vol, invol = r.server_context_switches_per_notification
    print(f"  CPU ms per notification: {cpu}; server context switches per notification: "
          f"{vol:.0f} voluntary, {invol:.1f} involuntary; new database connections during "
          f"the timed phase: {r.new_db_connections:,}")
    disturbed = sum(1 for x in r.segment_stats if x["disturbed"])
    print(f"  segments disturbed by other work: {disturbed} of {r.segments}; applied/s over the "
          f"quiet ones: {r.quiet_applied_per_s:,.0f}")
    print(f"  machine CPU busy {r.machine_busy:.0%} (of {os.cpu_count()} CPUs); busy CPU "
          f"outside the benchmark's processes: {r.other_cpu_ms_per_notification:.2f} ms per "
          "notification")
    if r.database_sessions:
        print("  database sessions busy, on average, by wait event: " + ", ".join(
            f"{k} {v:.2f}" for k, v in r.database_sessions.items()))
    print(f"  notifications built at {r.build_per_s:,.0f}/s ({r.build_seconds:.1f} s, "
          f"{r.segments} segment(s))")


if __name__ == "__main__":
    sys.exit(main())
