"""Benchmark: resident lookups (``POST /api/v1/residents/lookup``, hits) under load, against a
FastAPI hello-world served the same way in the same run.

    .venv/bin/python bench/lookup_load.py                          # 1,000,000 residents, 3 runs
    .venv/bin/python bench/lookup_load.py --residents 100000 --runs 1 --duration 10
    .venv/bin/python bench/lookup_load.py --profile out/           # py-spy one lookup worker

1. A fresh database (``bench_lookup_<pid>``), migrated; the demo regions imported through
   ``run_import``; N generated residents (``backend.demo.generator``'s people) written by COPY
   from ``--seed-procs`` processes, each row as the residents import writes it (``id_hash``
   the PII vault's keyed hash, ``id_enc`` its AES-SIV ciphertext, ``id_masked``, the phone
   likewise), so the lookup finds them as it finds imported ones. One row in
   ``--sample-every`` is kept (ID number and name) for the load: hits only, spread over the
   whole table.
2. Each run serves, one after the other (alternating which goes first), the service in live
   mode (``PAYMENT_SANDBOX=0``: every channel's keys configured — the simulators' own, see
   ``_support.live_env`` —,
   no simulator, ``COLLECT_NOW`` unset: the real clock) and the hello-world
   (``_server:create_hello``: the lookup's request body validated by the same pydantic model,
   a small JSON answer), both with ``uvicorn … --workers N`` as ``bench/_server.py`` serves
   the app ``python -m backend serve`` builds. ``wrk`` (C, one Lua script: the requests'
   bodies and callers' tokens, every answer's status checked) loads each for ``--warmup``
   seconds untimed, then ``--duration`` seconds timed, at ``--concurrency`` connections.
3. Prints per run and the median of the runs: requests/s, p50/p99 (wrk's, client side), the
   server's and wrk's CPU per request, and the ratio lookups/s ÷ hello-world/s.

The callers are residents (mini-program tokens, issued with APP_SECRET as the WeChat login
issues them; one per connection). A hit is never counted by the lookup limits, which count
misses; every answer must be 200 or the run says so.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import _support as sup

from backend.config import Settings

PATH = "/api/v1/residents/lookup"


# --------------------------------------------------------------------------- seeding
def _chunk_generator(policy: Any, seed: int, chunk: int, chunks: int) -> Any:
    """The demo's people generator, its ID numbers' sequence digits split between chunks so
    that chunks generated in different processes never share an ID number."""
    from backend.demo.generator import PeopleGenerator
    from backend.residents.idnumber import make_id_number

    class ChunkPeople(PeopleGenerator):
        def _id_number(self, region: str, born: date, gender: str) -> str:
            while True:
                sequence = self.rng.randrange(0, 1000)
                if (sequence % 2 == 1) != (gender == "M"):
                    sequence = (sequence + 1) % 1000
                if (sequence // 2) % chunks != chunk:
                    continue
                number = make_id_number(region, born, sequence)
                if number[:17] not in self.used:
                    self.used.add(number[:17])
                    return number

    return ChunkPeople(policy, seed + chunk)


def seed_chunk(job: tuple[str, str, str, int, int, int, int, int]
               ) -> tuple[int, list[tuple[str, str]], float]:
    """COPY ``count`` residents of chunk ``chunk``; (rows, sample of (id, name), seconds)."""
    import psycopg

    from backend.policy import load_policy
    from backend.security.pii import PiiVault, mask_id_number, mask_phone

    url, pii_key, policy_name, seed, chunk, chunks, count, sample_every = job
    t0 = time.perf_counter()
    pii = PiiVault(Settings(pii_key=pii_key).pii_key_bytes)
    people = _chunk_generator(load_policy(policy_name), seed, chunk, chunks)
    sample: list[tuple[str, str]] = []
    columns = ["id_hash", "id_enc", "id_masked", "birth_date", "name", "village_code",
               "hukou_type", "employee_pension", "employee_medical", "student", "categories",
               "phone_enc", "phone_masked", "last_pension_tier_yuan"]

    def rows() -> Any:
        # exactly the residents import's _resident_params
        for i, p in enumerate(people.people(count)):
            if i % sample_every == 0:
                sample.append((p.id_number, p.name))
            yield {
                "id_hash": pii.hash(p.id_number), "id_enc": pii.encrypt(p.id_number),
                "id_masked": mask_id_number(p.id_number), "birth_date": p.birth_date,
                "name": p.name, "village_code": p.village_code, "hukou_type": p.hukou_type,
                "employee_pension": p.employee_pension,
                "employee_medical": p.employee_medical, "student": p.student,
                "categories": ";".join(sorted(p.categories)),
                "phone_enc": pii.encrypt(p.phone, kind="phone") if p.phone else None,
                "phone_masked": mask_phone(p.phone) if p.phone else None,
                "last_pension_tier_yuan": p.last_pension_tier_yuan,
            }

    with psycopg.connect(url) as conn:
        n = sup.copy_rows(conn, "residents", rows(), columns)
    return n, sample, time.perf_counter() - t0


def seed(url: str, args: argparse.Namespace, tmp: Path) -> tuple[list[tuple[str, str]], float]:
    """Migrate, import the demo regions, COPY the residents; (sample, seconds)."""
    import psycopg

    from backend.demo.generator import write_regions
    from backend.imports.service import run_import
    from backend.migrate import upgrade
    from backend.runtime import Runtime

    t0 = time.perf_counter()
    upgrade(url)
    regions = tmp / "regions.csv"
    write_regions(regions)
    rt = Runtime(Settings(database_url=url, data_dir=tmp, pii_key=sup.PII_KEY,
                          app_secret=sup.APP_SECRET, payment_sandbox=True))
    try:
        report = run_import(rt, "regions", regions, progress=False)
        if not report.committed:
            raise SystemExit(f"regions import failed:\n{report.summary()}")
    finally:
        rt.close()
    chunks = max(args.seed_procs, -(-args.residents // 100_000))
    per = [args.residents // chunks + (1 if k < args.residents % chunks else 0)
           for k in range(chunks)]
    jobs = [(url, sup.PII_KEY, "shanting-2021", args.seed, k, chunks, per[k], args.sample_every)
            for k in range(chunks)]
    sample: list[tuple[str, str]] = []
    total = 0
    with multiprocessing.get_context("spawn").Pool(args.seed_procs) as pool:
        for n, part, seconds in pool.imap_unordered(seed_chunk, jobs):
            total += n
            sample += part
            print(f"  {total:,} residents written (chunk of {n:,} in {seconds:.1f} s)",
                  file=sys.stderr)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE residents")
        count = conn.execute("SELECT count(*) FROM residents").fetchone()[0]  # type: ignore[index]
    if count != args.residents:
        raise SystemExit(f"seeded {count} residents, wanted {args.residents}")
    return sample, time.perf_counter() - t0


def resident_tokens(n: int) -> list[str]:
    """Mini-program callers' tokens, as ``POST /api/v1/auth/wechat`` issues them."""
    from backend.security.tokens import Principal, issue_token

    return [issue_token(sup.APP_SECRET, Principal(sub=f"wx:bench-caller-{i:03d}",
                                                  role="resident"), 8 * 3600)
            for i in range(n)]


# --------------------------------------------------------------------------- wrk
def _lua_string(s: str) -> str:
    """A Lua 5.1 string literal of ``s``'s UTF-8 bytes (other bytes as decimal escapes)."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}"
                         for b in s.encode()) + '"'


def write_wrk_script(path: Path, bodies: list[str], tokens: list[str],
                     per_connection: int) -> None:
    lines = [f"local per_connection = {per_connection}", "local bodies = {"]
    lines += [f"  {_lua_string(b)}," for b in bodies]
    lines += ["}", "local tokens = {"]
    lines += [f"  {_lua_string(t)}," for t in tokens]
    lines += ["}", f"local path = {_lua_string(PATH)}", r"""
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  n = id * 7919
  bad = 0
  first = nil
end

function request()
  n = n + 1
  local headers = {["Content-Type"] = "application/json",
                   ["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1]}
  if per_connection > 0 and n % per_connection == 0 then
    -- now and then the server closes a connection and wrk opens another: with several
    -- uvicorn workers, whichever accepts a connection serves it for as long as it lives,
    -- so connections held for the whole run would fix an uneven split between them
    headers["Connection"] = "close"
  end
  return wrk.format("POST", path, headers, bodies[(n % #bodies) + 1])
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if first == nil then first = status .. " " .. string.sub(body, 1, 200) end
  end
end

function done(summary, latency, requests)
  local non200 = 0
  for _, t in ipairs(threads) do
    non200 = non200 + t:get("bad")
    local f = t:get("first")
    if f ~= nil then io.write("FIRST-ERROR " .. f .. "\n") end
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "socket_errors": %d, "timeouts": %d, "non200": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write, e.timeout, non200))
end
"""]
    path.write_text("\n".join(lines))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(url: str, script: Path, seconds: float, args: argparse.Namespace
            ) -> tuple[dict[str, Any], float]:
    """(wrk's RESULT line, wrk's CPU seconds)."""
    cpu0 = _children_cpu()
    out = subprocess.run(
        ["wrk", "-t", str(args.wrk_threads), "-c", str(args.concurrency),
         "-d", f"{seconds:g}s", "--timeout", "10s", "-s", str(script), url + PATH],
        capture_output=True, text=True, check=False, timeout=seconds + 60)
    cpu = _children_cpu() - cpu0
    result = None
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line.removeprefix("RESULT "))
        elif line.startswith("FIRST-ERROR "):
            print(f"    a non-200 answer: {line.removeprefix('FIRST-ERROR ')}", file=sys.stderr)
    if result is None:
        raise RuntimeError(f"wrk said nothing usable:\n{out.stdout}\n{out.stderr}")
    return result, cpu


@dataclass
class Run:
    app: str
    run: int
    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    server_cpu_ms_per_req: float
    postgres_cpu_ms_per_req: float
    wrk_cpu_ms_per_req: float
    wrk_cpu_share: float        # of one core, while timed
    other_cpu_share: float      # of the machine's CPUs, used by others while timed
    worker_cpu_split: list[float]   # each server process's share of the server's CPU


def _per_process_cpu(server: sup.ServerProcess) -> dict[int, float]:
    """CPU seconds of each of the server's worker processes."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in server.pids()[1:]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def load_one(app: str, run_no: int, settings: Settings, script: Path,
             args: argparse.Namespace, tmp: Path) -> Run:
    factory = "_server:create" if app == "lookup" else "_server:create_hello"
    server = sup.ServerProcess(settings, sup.free_port(), args.workers,
                               log_path=tmp / f"server-{app}-{run_no}.log", app=factory,
                               live=True)
    profiler = None
    dbname = settings.database_url.rsplit("/", 1)[1]
    try:
        server.start()
        run_wrk(server.base_url, script, args.warmup, args)          # not timed
        if args.profile and app == "lookup":
            profiler = sup.start_profiler(server, Path(args.profile) / f"run{run_no}",
                                          args.profile_mode)
        if args.wait_quiet:
            sup.wait_quiet(args.wait_quiet, busy_below=0.15)
        cpu0, pg0 = server.cpu_seconds(), sup.postgres_cpu_seconds(dbname)
        per0 = _per_process_cpu(server)
        m0 = sup.machine_cpu()
        result, wrk_cpu = run_wrk(server.base_url, script, args.duration, args)
        m1 = sup.machine_cpu()
        cpu1, pg1 = server.cpu_seconds(), sup.postgres_cpu_seconds(dbname)
        per1 = _per_process_cpu(server)
    finally:
        if profiler is not None:
            sup.stop_profiler(profiler)
        server.stop()
    n = max(result["requests"], 1)
    seconds = result["duration_us"] / 1e6
    return Run(app=app, run=run_no, requests=result["requests"], seconds=seconds,
               per_s=result["requests"] / seconds, p50_ms=result["p50_us"] / 1000,
               p90_ms=result["p90_us"] / 1000, p99_ms=result["p99_us"] / 1000,
               max_ms=result["max_us"] / 1000,
               errors=result["non200"] + result["socket_errors"] + result["timeouts"],
               server_cpu_ms_per_req=(cpu1 - cpu0) * 1000 / n,
               postgres_cpu_ms_per_req=(pg1 - pg0) * 1000 / n if app == "lookup" else 0.0,
               wrk_cpu_ms_per_req=wrk_cpu * 1000 / n, wrk_cpu_share=wrk_cpu / seconds,
               other_cpu_share=max(0.0, (m1[0] - m0[0]) - (cpu1 - cpu0) - (pg1 - pg0) - wrk_cpu)
               / max(m1[1] - m0[1], 1e-9),
               worker_cpu_split=[(per1.get(pid, 0.0) - per0.get(pid, 0.0))
                                 / max(cpu1 - cpu0, 1e-9) for pid in sorted(per1)])


def print_run(r: Run) -> None:
    print(f"  run {r.run} {r.app:>6}: {r.per_s:8,.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
          f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}  CPU/req: server "
          f"{r.server_cpu_ms_per_req:.2f} ms, postgres {r.postgres_cpu_ms_per_req:.2f} ms, "
          f"wrk {r.wrk_cpu_ms_per_req:.3f} ms "
          f"(wrk {r.wrk_cpu_share:.0%} of a core); workers' split "
          f"{'/'.join(f'{x:.0%}' for x in r.worker_cpu_split)}; others used "
          f"{r.other_cpu_share:.0%} of the machine", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--residents", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=15.0, help="timed seconds per app and run")
    p.add_argument("--warmup", type=float, default=4.0, help="untimed seconds before each")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="uvicorn server processes")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wait-quiet", type=float, default=30.0, metavar="S",
                   help="before each timed window, wait up to S seconds for the machine to "
                        "be idle (others' test runs share it); 0: do not wait")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--seed-procs", type=int, default=2, help="processes that write residents")
    p.add_argument("--sample-every", type=int, default=50,
                   help="keep one resident in N as a lookup target")
    p.add_argument("--callers", type=int, default=32, help="distinct resident tokens")
    p.add_argument("--per-connection", type=int, default=50, metavar="N",
                   help="about one request in N asks the server to close its connection "
                        "(wrk opens another), so that the workers share the connections "
                        "evenly; 0: keep every connection for the whole run")
    p.add_argument("--only", choices=["lookup", "hello"], help="serve only one of the two")
    p.add_argument("--profile", help="py-spy a lookup worker into this folder")
    p.add_argument("--profile-mode", choices=["gil", "wall"], default="gil")
    p.add_argument("--keep", action="store_true", help="keep the database")
    p.add_argument("--database-url", help="use this database (dropped and made again)")
    p.add_argument("--reuse", action="store_true",
                   help="with --database-url: the database is seeded already (needs "
                        "--sample-file)")
    p.add_argument("--sample-file", help="write (or with --reuse, read) the lookup targets")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    code = sup.run_on_code_snapshot()
    sup.exit_on_sigterm()
    url = args.database_url or sup.database_url(sup.own_database_name("bench_lookup"))
    print(f"code: {code}\nmachine: {sup.machine()}\ndatabase: {url}", flush=True)
    import redis

    redis.Redis.from_url(sup.REDIS_URL).flushdb()    # db 12 is this benchmark's
    keep = args.keep or args.reuse
    with tempfile.TemporaryDirectory(prefix="bench-lookup-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            if args.reuse:
                if not args.sample_file:
                    raise SystemExit("--reuse needs --sample-file")
                sample = [tuple(x) for x in json.loads(Path(args.sample_file).read_text())]
                seed_s = 0.0
            else:
                sup.recreate_database(url)
                print(f"seeding {args.residents:,} residents ...", flush=True)
                sample, seed_s = seed(url, args, tmp)
                print(f"seeded in {seed_s:.1f} s ({len(sample):,} lookup targets)", flush=True)
                if args.sample_file:
                    Path(args.sample_file).write_text(json.dumps(sample))
            bodies = [json.dumps({"name": name, "id_number": idn, "year": sup.YEAR},
                                 ensure_ascii=False) for idn, name in sample]
            script = tmp / "lookup.lua"
            write_wrk_script(script, bodies, resident_tokens(args.callers),
                             args.per_connection)
            # the simulators' keys, served in live mode (sup.live_env)
            settings = sup.bench_settings(url, tmp / "data", sup.free_port())
            runs: list[Run] = []
            apps = [args.only] if args.only else ["lookup", "hello"]
            for run_no in range(1, args.runs + 1):
                order = apps if run_no % 2 else apps[::-1]
                for app in order:
                    r = load_one(app, run_no, settings, script, args, tmp)
                    print_run(r)
                    runs.append(r)
            summarize(runs, args, seed_s, code)
        finally:
            if not keep:
                sup.drop_database(url)
    return 0


def summarize(runs: list[Run], args: argparse.Namespace, seed_s: float, code: str) -> None:
    out: dict[str, Any] = {"code": code, "machine": sup.machine(),
                           "date": datetime.now(UTC).isoformat(), "residents": args.residents,
                           "concurrency": args.concurrency, "workers": args.workers,
                           "duration_s": args.duration, "seed_seconds": seed_s,
                           "runs": [asdict(r) for r in runs]}
    med: dict[str, dict[str, float]] = {}
    for app in ("lookup", "hello"):
        mine = [r for r in runs if r.app == app]
        if not mine:
            continue
        med[app] = {k: statistics.median(getattr(r, k) for r in mine)
                    for k in ("per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_req",
                              "wrk_cpu_share")}
        print(f"median of {len(mine)} {app:>6}: {med[app]['per_s']:8,.0f} req/s  p50 "
              f"{med[app]['p50_ms']:.2f} ms  p99 {med[app]['p99_ms']:.2f} ms  server CPU "
              f"{med[app]['server_cpu_ms_per_req']:.2f} ms/req  wrk "
              f"{med[app]['wrk_cpu_share']:.0%} of a core")
    out["medians"] = med
    if "lookup" in med and "hello" in med:
        ratios = [lk.per_s / h.per_s for lk, h in zip(
            [r for r in runs if r.app == "lookup"], [r for r in runs if r.app == "hello"],
            strict=True)]
        out["ratios"] = ratios
        out["ratio_of_medians"] = med["lookup"]["per_s"] / med["hello"]["per_s"]
        print(f"ratio lookups/s ÷ hello-world/s: per run {', '.join(f'{x:.3f}' for x in ratios)};"
              f" median {statistics.median(ratios):.3f} (of the medians "
              f"{out['ratio_of_medians']:.3f}); target >= 0.25, lookup p99 <= 20 ms")
    errors = sum(r.errors for r in runs)
    if errors:
        print(f"WARNING: {errors} requests did not answer 200", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
