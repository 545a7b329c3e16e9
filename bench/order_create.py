"""Benchmark: server time to create an order and serve its QR code, on PostgreSQL.

    .venv/bin/python bench/order_create.py --runs 3              # 500 orders per channel and run
    .venv/bin/python bench/order_create.py --orders 200 --channels alipay_qr --json out.json

1. A fresh database (``bench_orders_<pid>``, or ``--database``), migrated, with the demo
   district loaded by ``backend.demo.generator.load_demo`` (``--residents``, default 3,000).
2. Per run (``--runs``), fresh server processes: the channel simulator alone
   (``_server:create_simulator``), and the service as ``python -m backend serve`` builds it,
   served by uvicorn and wrapped by ``bench/_server.py``'s timing middleware, with its
   channel clients pointed at the simulator (``BENCH_SIMULATOR_URL``). The service returns
   in ``Server-Timing`` its time for each request and the time spent in the payment
   adapter's ``create`` (the channel's round trip: our signing, the HTTP call, verifying the
   answer); the simulator's own server time is read from the simulator after each order.
   ``--simulator-in-process`` serves the simulator inside the service instead (its CPU then
   competes with the service's).
3. A resident logs in (``POST /api/v1/auth/wechat`` with ``sandbox:<openid>``), looks up
   demo residents (``POST /api/v1/residents/lookup``) until there are enough payable items,
   then each run creates ``--orders`` single-item orders per channel (``alipay_qr``,
   ``aggregate_qr``, ``wechat_native``), each for a different bill line, with an
   ``Idempotency-Key``, and fetches each order's QR PNG twice (first: render; then cached).
   For ``aggregate_qr`` it also scans the code once with a WeChat User-Agent (the landing
   page opens the WeChat trade and redirects).

Requests go one at a time (no queueing: the figures are the service's own time). Printed:
median / p90 / p99 per step and run, server time and, for order creation, the channel call
inside it; then per channel the median of each run and the median of those: server time,
channel round trip, ours (server - channel), QR PNG first and cached fetch. ``--parts`` adds
the steps of the path and the SQL time and statement count (``_server.PARTS``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
import httpx  # noqa: E402
import redis  # noqa: E402
from _server import server_timing  # noqa: E402

from backend.migrate import upgrade  # noqa: E402

CHANNELS = ("alipay_qr", "aggregate_qr", "wechat_native")
# (label, regex over "function (path)"): the steps whose inclusive share --profile shows
ORDER_STEPS = [
    ("event loop thread: uvicorn, ASGI stack, routing, middleware", r"^Server\.run "),
    ("POST /api/v1/orders (endpoint, in the thread pool)",
     r"^create_order \(backend/orders/endpoints"),
    ("  idempotency: claim + finish (two transactions)", r"^(_claim|_finish) \(backend/idem"),
    ("  service.create_order", r"^create_order \(backend/orders/service"),
    ("    _write_order", r"^_write_order "),
    ("      _priced_items (ref decode, resident, assessment)", r"^_priced_items "),
    ("        assess_resident", r"^assess_resident "),
    ("      bill_lines_for (insert + lock)", r"^bill_lines_for "),
    ("      live_orders_of_others", r"^live_orders_of_others "),
    ("      _new_attempt", r"^_new_attempt "),
    ("    _open_at_channel", r"^_open_at_channel "),
    ("      adapter create (our client: sign, HTTP, verify)",
     r"\.create \(payment_adapters/(alipay|wechat|unionpay)/client"),
    ("    render (answer)", r"^render \(backend/orders/service"),
    ("  response model validation / serialization", r"^(serialize_response|_prepare_response"
     r"_content|jsonable_encoder) "),
    ("simulator: its API handlers (the channel's side)", r"\(payment_adapters/sandbox/"),
    ("GET /api/v1/qr/… (QR image)", r"^qr_image "),
    ("  qr_content_for_token (DB)", r"^qr_content_for_token "),
    ("  QR render (qrcode + PNG)", r"^_render \(backend/orders/qr"),
    ("GET /pay/… (aggregate landing)", r"^landing \(backend/orders"),
    ("SQLAlchemy: Session.commit", r"^Session\.commit "),
    ("SQLAlchemy: statement compile (cache key, compile)", r"^(HasCacheKey\._generate_cache_key|"
     r"ClauseElement\._compile_w_cache) "),
    ("SQLAlchemy: ORM flush", r"^Session\.flush "),
    ("pool checkout (incl. pre-ping)", r"^_ConnectionFairy\._checkout "),
    ("psycopg: Cursor.execute", r"^Cursor\.execute \(psycopg/"),
    ("logging (records, formatting, redaction, writes)", r"^Logger\._log "),
    ("requests (adapter HTTP client)", r"\(requests/"),
    ("httpx (adapter HTTP client)", r"\(httpx/"),
]
WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
             "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI")


class Timings:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, list[float]]] = {}

    def add(self, step: str, resp: httpx.Response, client_ms: float) -> dict[str, float]:
        st = server_timing(resp.headers.get("server-timing"))
        row = self.rows.setdefault(step, {})
        row.setdefault("client", []).append(client_ms)
        for k, v in st.items():
            row.setdefault(k, []).append(v)
        if "channel" in st:
            row.setdefault("app - channel", []).append(st["app"] - st["channel"])
            if "cpu" in st and "channelcpu" in st:
                row.setdefault("cpu - channelcpu", []).append(st["cpu"] - st["channelcpu"])
            if "sandbox" in st:
                row.setdefault("channel - sandbox", []).append(st["channel"] - st["sandbox"])
        return st


def timed(t: Timings, step: str, http: httpx.Client, method: str, url: str,
          expect: int, **kw: Any) -> tuple[httpx.Response, dict[str, float]]:
    t0 = time.perf_counter()
    resp = http.request(method, url, **kw)
    ms = (time.perf_counter() - t0) * 1000
    if resp.status_code != expect:
        raise SystemExit(f"{method} {url}: {resp.status_code} {resp.text[:500]}")
    return resp, t.add(step, resp, ms)


def demo_people(rt: Any, residents: int, seed: int) -> list[Any]:
    """The people load_demo loads, in its order (named demo residents first)."""
    from dataclasses import replace

    from backend.demo.generator import DEMO_RESIDENTS, generate_people

    policy, today = rt.policy, rt.clock.today()
    named = [p if p.last_pension_tier_yuan in (None, *policy.tiers_yuan)
             else replace(p, last_pension_tier_yuan=None)
             for p in DEMO_RESIDENTS if p.birth_date <= today]
    return named + list(generate_people(policy, max(residents - len(named), 0), seed,
                                        latest_birth=today))


def payable_items(t: Timings, http: httpx.Client, people: list[Any], wanted: int,
                  ) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for person in people:
        if len(items) >= wanted:
            break
        resp, _ = timed(t, "resident lookup", http, "POST", "/api/v1/residents/lookup", 200,
                        json={"name": person.name, "id_number": person.id_number,
                              "year": sup.YEAR})
        data = resp.json()
        for item in data["items"]:
            if item["status"] == "unpaid" and item["payable"]:
                items.append({"resident_ref": data["resident"]["ref"],
                              "insurance": item["insurance"]})
    if len(items) < wanted:
        raise SystemExit(f"only {len(items)} payable items among {len(people)} residents; "
                         "use more --residents")
    return items


def _self_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fmt(values: list[float]) -> str:
    s = sup.summary(values)
    return f"{s['p50']:8.2f} {s['p90']:8.2f} {s['p99']:8.2f}"


def _sandbox_ms(http: httpx.Client | None) -> float:
    """The separate simulator's running total of its own server time (ms)."""
    return float(http.get("/bench/sandbox-ms").text) if http is not None else 0.0


def _one_run(args: argparse.Namespace, t: Timings, http: httpx.Client,
             sim_http: httpx.Client | None, server: Any, sim: Any, channels: list[str],
             items: list[dict[str, Any]], qr_keys: list[str]
             ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Warm up, then ``--orders`` orders per channel, one request at a time."""
    # warm-up (not counted): first use of each channel client, QR renderer
    for ch in channels:
        warm = Timings()
        r, _ = timed(warm, "warm", http, "POST", "/api/v1/orders", 201,
                     json={"year": sup.YEAR, "channel": ch, "items": [items.pop()]})
        timed(warm, "warm", http, "GET", r.json()["payment"]["qr_image_url"], 200)
    disturbance: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    profiler = (sup.start_profiler(server, Path(args.profile), args.profile_mode)
                if args.profile else None)
    for ch in channels:
        if args.wait_quiet and profiler is None:
            sup.wait_quiet(args.wait_quiet)

        def own_cpu() -> float:
            return (server.cpu_seconds() + (sim.cpu_seconds() if sim else 0.0)
                    + _self_cpu())

        mc0, own0 = sup.machine_cpu(), own_cpu()
        pg0 = sup.postgres_cpu_seconds(args.database)
        srv0, sim0_cpu = server.cpu_seconds(), (sim.cpu_seconds() if sim else 0.0)
        for _ in range(args.orders):
            item = items.pop()
            headers = ({} if args.no_idempotency_key
                       else {"Idempotency-Key": uuid.uuid4().hex})
            sim0 = _sandbox_ms(sim_http)
            r, st_create = timed(
                t, f"create {ch}", http, "POST", "/api/v1/orders", 201,
                json={"year": sup.YEAR, "channel": ch, "items": [item]},
                headers=headers)
            if sim_http is not None and "channel" in st_create:
                sandbox = _sandbox_ms(sim_http) - sim0
                row = t.rows[f"create {ch}"]
                row.setdefault("sandbox", []).append(sandbox)
                row.setdefault("channel - sandbox", []).append(st_create["channel"] - sandbox)
            order = r.json()
            png_url = order["payment"]["qr_image_url"]
            img, st_png = timed(t, f"QR PNG first fetch ({ch})", http, "GET", png_url, 200)
            if not img.content.startswith(b"\x89PNG"):
                raise SystemExit(f"{png_url} is not a PNG")
            t.rows.setdefault(f"create + QR PNG ({ch})", {}).setdefault(
                "app", []).append(st_create["app"] + st_png["app"])
            timed(t, f"QR PNG cached fetch ({ch})", http, "GET", png_url, 200)
            content = order["payment"]["qr_content"]
            qr_keys.append(f"qr:png:{hashlib.sha256(content.encode()).hexdigest()}")
            if ch == "aggregate_qr":
                token = png_url.rsplit("/", 1)[1].removesuffix(".png")
                timed(t, "aggregate scan by WeChat (landing → trade)", http, "GET",
                      f"/pay/{token}", 302, headers={"User-Agent": WECHAT_UA})
        mc1, own1 = sup.machine_cpu(), own_cpu()
        pg1 = sup.postgres_cpu_seconds(args.database)
        other = (((mc1[0] - mc0[0]) - (own1 - own0) - (pg1 - pg0))
                 / max(mc1[1] - mc0[1], 1e-9))
        disturbance[ch] = other
        # CPU per order and its QR fetches (and, for aggregate_qr, its scan): less moved by
        # other work on the machine than the times are
        cpu[ch] = {"service": (server.cpu_seconds() - srv0) * 1000 / args.orders,
                   "postgres": (pg1 - pg0) * 1000 / args.orders,
                   "simulator": ((sim.cpu_seconds() if sim else 0.0) - sim0_cpu) * 1000
                   / args.orders}
        print(f"  {ch}: CPU ms per order + its QR fetches: "
              + ", ".join(f"{k} {v:.2f}" for k, v in cpu[ch].items()), file=sys.stderr)
        print(f"  {ch}: other work on the machine took {other:.0%} of the CPUs"
              f"{' (DISTURBED)' if other > 0.05 else ''}", file=sys.stderr)
    if profiler is not None:
        sup.stop_profiler(profiler)
        sup.summarize_profile(Path(args.profile), ORDER_STEPS)
    return disturbance, cpu


# (label, step, part) of the summary: per channel, the medians of each run
SUMMARY = [
    ("server", "create {ch}", "app"),
    ("channel round trip", "create {ch}", "channel"),
    ("  of which the simulator's own time", "create {ch}", "sandbox"),
    ("ours (server - channel)", "create {ch}", "app - channel"),
    ("QR PNG first fetch (render)", "QR PNG first fetch ({ch})", "app"),
    ("QR PNG cached fetch", "QR PNG cached fetch ({ch})", "app"),
    ("server CPU", "create {ch}", "cpu"),
    ("  of which the channel call's (signing…)", "create {ch}", "channelcpu"),
    ("ours CPU (server CPU - channel call's)", "create {ch}", "cpu - channelcpu"),
    ("QR PNG first fetch CPU", "QR PNG first fetch ({ch})", "cpu"),
    ("QR PNG cached fetch CPU", "QR PNG cached fetch ({ch})", "cpu"),
]


def summary_table(runs: list[Timings], channels: list[str]) -> dict[str, Any]:
    """Per channel and figure: each run's median and the median of those (server ms)."""
    import statistics

    out: dict[str, Any] = {}
    print(f"\n{'median server ms per run':42} " + " ".join(f"{'run ' + str(i + 1):>8}"
                                                        for i in range(len(runs)))
          + f" {'median':>8}")
    for ch in channels:
        print(f"create {ch}")
        for label, step, part in SUMMARY:
            if ch == "aggregate_qr":    # no channel call until the code is scanned
                part = {"app - channel": "app", "cpu - channelcpu": "cpu"}.get(part, part)
            medians = [sup.summary(r.rows[step.format(ch=ch)][part])["p50"] for r in runs
                       if part in r.rows.get(step.format(ch=ch), {})]
            if not medians:
                continue
            m = statistics.median(medians)
            out.setdefault(ch, {})[label.strip()] = {"runs": medians, "median": m}
            print(f"  {label:40} " + " ".join(f"{v:8.2f}" for v in medians) + f" {m:8.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=500, help="orders per channel and run")
    p.add_argument("--runs", type=int, default=1,
                   help="runs, each with a fresh server (and simulator) process")
    p.add_argument("--channels", default=",".join(CHANNELS))
    p.add_argument("--residents", type=int, default=3000)
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--no-idempotency-key", action="store_true")
    p.add_argument("--simulator-in-process", action="store_true",
                   help="serve the channel simulator in the service's process (its /sandbox "
                        "routes), as PAYMENT_SANDBOX=1 alone does; default: its own process")
    p.add_argument("--parts", action="store_true",
                   help="time the steps of the path and the SQL inside the server too "
                        "(bench/_server.py PARTS; a little overhead)")
    p.add_argument("--log-level", default="INFO", help="the server's LOG_LEVEL (serve: INFO)")
    p.add_argument("--wait-quiet", type=float, default=900, metavar="S",
                   help="before each channel, wait up to S s for the machine to be idle")
    p.add_argument("--database", help="its name (default bench_orders_<pid>; it is dropped and "
                        "created)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--profile", metavar="DIR", help="py-spy the server into DIR (last run)")
    p.add_argument("--profile-mode", choices=["gil", "wall"], default="gil",
                   help="gil: the thread holding the GIL (CPU); wall: all threads, waits too")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    code = sup.run_on_code_snapshot()
    sup.exit_on_sigterm()
    args.database = args.database or sup.own_database_name("bench_orders")
    channels = [c for c in args.channels.split(",") if c]

    from backend.demo.generator import load_demo
    from backend.runtime import Runtime

    url = sup.database_url(args.database)
    pg_version = sup.server_version(sup.database_url("postgres"))
    print(f"machine: {sup.machine()}; PostgreSQL {pg_version}\nservice code: {code}")
    print("channel simulator: " + ("in the service's process" if args.simulator_in_process
                                   else "its own server process"))
    sup.recreate_database(url)
    runs: list[Timings] = []
    setup = Timings()
    qr_keys: list[str] = []
    disturbance: list[dict[str, float]] = []
    cpu_ms: list[dict[str, dict[str, float]]] = []
    profile = args.profile
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix="bench-orders-") as tmp_name:
            tmp = Path(tmp_name)
            port, sim_port = sup.free_port(), sup.free_port()
            settings = sup.bench_settings(url, tmp, port, log_level=args.log_level)
            rt = Runtime(settings)
            t0 = time.perf_counter()
            load_demo(rt, residents=args.residents, seed=args.seed, progress=False)
            people = demo_people(rt, args.residents, args.seed)
            rt.close()
            print(f"demo district with {args.residents:,} residents loaded in "
                  f"{time.perf_counter() - t0:.1f} s")
            sim_url = f"http://127.0.0.1:{sim_port}"
            env = {} if args.simulator_in_process else {"BENCH_SIMULATOR_URL": sim_url}
            if args.parts:
                env["BENCH_PARTS"] = "1"
            items: list[dict[str, Any]] = []
            token = ""
            for run in range(args.runs):
                args.profile = profile if run == args.runs - 1 else None
                sim = (None if args.simulator_in_process else sup.ServerProcess(
                    settings, sim_port, 1, log_path=tmp / "simulator.log",
                    app="_server:create_simulator", extra_env=env).start())
                try:
                    with sup.ServerProcess(settings, port, 1, log_path=tmp / "server.log",
                                           extra_env=env) as server, \
                            httpx.Client(base_url=server.base_url, timeout=30) as http, \
                            httpx.Client(base_url=sim_url, timeout=30) as sim_http:
                        if not token:
                            resp, _ = timed(setup, "login", http, "POST", "/api/v1/auth/wechat",
                                            200, json={"code": "sandbox:oBench"
                                                       f"{uuid.uuid4().hex[:12]}"})
                            token = resp.json()["access_token"]
                        http.headers["Authorization"] = f"Bearer {token}"
                        if not items:
                            items = payable_items(setup, http, people,
                                                  (args.orders + 1) * len(channels)
                                                  * args.runs + 20)
                        t = Timings()
                        print(f"run {run + 1} of {args.runs}", file=sys.stderr)
                        other, cpu = _one_run(args, t, http,
                                              None if sim is None else sim_http,
                                              server, sim, channels, items, qr_keys)
                        disturbance.append(other)
                        cpu_ms.append(cpu)
                        runs.append(t)
                finally:
                    if sim is not None:
                        sim.stop()
    finally:
        if qr_keys:
            try:
                redis.Redis.from_url(sup.REDIS_URL).delete(*qr_keys)
            except redis.RedisError:
                pass
        if not args.keep:
            sup.drop_database(url)

    out: dict[str, Any] = {"machine": sup.machine(), "code": code,
                           "orders_per_channel": args.orders, "runs": args.runs,
                           "simulator": "in-process" if args.simulator_in_process
                           else "own process",
                           "idempotency_key": not args.no_idempotency_key,
                           "other_cpu_share": disturbance,
                           "cpu_ms_per_order": cpu_ms, "steps": []}
    for n, t in enumerate(runs):
        print(f"\nrun {n + 1}: {'step (ms; one request at a time)':46} {'':22} {'p50':>8} "
              f"{'p90':>8} {'p99':>8}     n")
        out["steps"].append({step: {k: sup.summary(v) for k, v in row.items()}
                             for step, row in t.rows.items()})
        for step, row in t.rows.items():
            for k in ("app", "channel", "sandbox", "channel - sandbox", "app - channel",
                      "client"):
                if k in row:
                    label = {"app": "server", "channel": "  channel call",
                             "sandbox": "    simulator side", "channel - sandbox":
                             "    our client side", "app - channel": "  server w/o channel",
                             "client": "client round trip"}[k]
                    print(f"{step[:46]:46} {label:22} {fmt(row[k])} {len(row[k]):5d}")
            for k in row:
                if k not in ("app", "channel", "sandbox", "channel - sandbox", "app - channel",
                             "client"):
                    print(f"{step[:46]:46} {'  part ' + k:22} {fmt(row[k])} {len(row[k]):5d}")
    out["summary"] = summary_table(runs, channels)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
