"""What the service benchmarks share: their own database, settings, a served app, seeding.

Not a benchmark itself. The scripts beside it put ``bench/`` on ``sys.path`` (Python does
that for the script's folder) and import it as ``_support``.
"""

from __future__ import annotations

import base64
import io
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
# The service's code the benchmark runs: the working tree, or a frozen copy of it (see
# run_on_code_snapshot) so that edits made while a long benchmark runs do not change it.
CODE_ROOT = Path(os.environ.get("BENCH_CODE_ROOT") or ROOT)
if sys.path[0] != str(CODE_ROOT):
    sys.path.insert(0, str(CODE_ROOT))

from backend.config import Settings  # noqa: E402
from payment_adapters.base import Channel  # noqa: E402

CODE_DIRS = ("backend", "payment_adapters")


def describe_code(root: Path) -> str:
    """The git commit, how many files of the service differ from it, and a hash of them."""
    import hashlib

    digest = hashlib.sha256()
    for d in CODE_DIRS:
        for f in sorted((root / d).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=False).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", *CODE_DIRS], cwd=ROOT,
                                 text=True, capture_output=True, check=False).stdout
        n = len([line for line in changed.splitlines() if line.strip()])
    except OSError:
        head, n = "?", 0
    dirty = f" + {n} uncommitted file(s)" if n else ""
    return f"commit {head}{dirty} (code hash {digest.hexdigest()[:12]})"


def run_on_code_snapshot() -> str:
    """Run this benchmark on a frozen copy of the service's code.

    Others edit the service while a benchmark may run for an hour, and each run starts a new
    server process that would import whatever is on disk then. The first call copies
    backend/ (migrations included) and payment_adapters/ to a temporary folder and runs this
    same command again with that copy first on the path (BENCH_CODE_ROOT), then exits with its
    status; in that second process it returns the code's description. BENCH_NO_SNAPSHOT=1
    runs on the working tree as it is.
    """
    import shutil
    import tempfile

    if os.environ.get("BENCH_CODE_ROOT"):
        return os.environ.get("BENCH_CODE_DESC", describe_code(CODE_ROOT))
    if os.environ.get("BENCH_NO_SNAPSHOT"):
        return describe_code(ROOT) + ", working tree"
    exit_on_sigterm()
    dest = Path(tempfile.mkdtemp(prefix="bench-code-"))
    try:
        for d in CODE_DIRS:
            shutil.copytree(ROOT / d, dest / d,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        desc = describe_code(dest) + ", frozen copy"
        env = {**os.environ, "BENCH_CODE_ROOT": str(dest), "BENCH_CODE_DESC": desc}
        rc = subprocess.call([sys.executable, *sys.argv], env=env)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    sys.exit(rc)


PG_BASE = "postgresql://postgres@127.0.0.1:5432"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PII_KEY = base64.b64encode(b"bench-service-pii-key".ljust(32, b".")).decode()
APP_SECRET = "bench-" + "s" * 40
# Inside the 2021 collection window (2020-10-01 .. 2020-12-20 Beijing time), as `make run`.
COLLECT_NOW = "2020-11-02T09:00:00+08:00"
YEAR = 2021
BEIJING_TZ = "Asia/Shanghai"


# --------------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values) if values else float("nan")}


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} vCPU ({cpu}), {mem_gb:.0f} GB RAM, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


# --------------------------------------------------------------------------- database
def database_url(name: str) -> str:
    return f"{PG_BASE}/{name}"


def own_database_name(prefix: str) -> str:
    """``<prefix>_<pid>``: two runs at once (people share this machine) never drop each
    other's database."""
    return f"{prefix}_{os.getpid()}"


def exit_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: the finally blocks stop the server, drop the
    database and remove the temporary folders."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _admin(url: str) -> tuple[str, str]:
    base, name = url.rsplit("/", 1)
    return f"{base}/postgres", name.split("?", 1)[0]


def recreate_database(url: str) -> None:
    admin_url, name = _admin(url)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(url: str) -> None:
    admin_url, name = _admin(url)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]


# --------------------------------------------------------------------------- settings
def bench_settings(db_url: str, data_dir: Path, port: int, redis_url: str = REDIS_URL,
                   **extra: Any) -> Settings:
    return Settings(database_url=db_url, redis_url=redis_url, data_dir=data_dir,
                    pii_key=PII_KEY, app_secret=APP_SECRET,
                    collect_now=datetime.fromisoformat(COLLECT_NOW), payment_sandbox=True,
                    public_base_url=f"http://127.0.0.1:{port}", run_worker_in_serve=False,
                    **extra)


@contextmanager
def migrated_runtime(url: str, collect_now: datetime, label: str) -> Iterator[Any]:
    """An in-process Runtime on a database made for the benchmark: recreated, migrated, the
    business clock at ``collect_now``; closed and the database dropped after, however the
    benchmark ends. (For benchmarks that drive the app in-process, through a TestClient.)"""
    from backend.migrate import upgrade
    from backend.runtime import Runtime

    recreate_database(url)
    rt = None
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix=f"bench-{label}-") as tmp:
            rt = Runtime(Settings(database_url=url, data_dir=Path(tmp), pii_key=PII_KEY,
                                  app_secret=APP_SECRET, collect_now=collect_now,
                                  login_slowdown_max_s=0.05))
            yield rt
    finally:
        if rt is not None:
            rt.close()
        drop_database(url)


def staff_headers(client: Any, username: str, password: str) -> dict[str, str]:
    """A staff member's Authorization header, logged in through the app."""
    r = client.post("/api/v1/auth/staff", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def settings_env(s: Settings) -> dict[str, str]:
    """The same Settings as environment variables, for a server in another process."""
    env = {
        "DATABASE_URL": s.database_url, "REDIS_URL": s.redis_url, "DATA_DIR": str(s.data_dir),
        "PII_KEY": s.pii_key, "APP_SECRET": s.app_secret, "POLICY": s.policy,
        "COLLECT_NOW": s.collect_now.isoformat() if s.collect_now else "",
        "PAYMENT_SANDBOX": "1" if s.sandbox else "0", "PUBLIC_BASE_URL": s.public_base_url,
        "LOG_LEVEL": s.log_level,
        "RUN_WORKER_IN_SERVE": "" if s.run_worker_in_serve is None
        else ("1" if s.run_worker_in_serve else "0"),
        "CHANNEL_TIMEOUT_S": str(s.channel_timeout_s),
    }
    return {k: v for k, v in env.items() if v != ""}


def live_env(settings: Settings) -> dict[str, str]:
    """The environment of a server in live mode (``PAYMENT_SANDBOX=0``: channel keys
    configured, no simulator in the process, the business clock real time) whose channel keys
    are the simulators' own, so the simulators in the benchmark's process sign notifications
    that this server verifies as it would the real channels'. ``settings`` is the sandbox
    Settings the simulators use; their keys are written under ``data_dir/live``."""
    from backend.channels import SANDBOX_IDS, Channels, public_pem_of
    from backend.config import new_ed25519_pem

    ch = Channels(settings)
    wx, ali, ums = ch.wechat_config, ch.alipay_config, ch.unionpay_config
    _ = ch.sandbox_wechat_certificate           # the platform certificate's folder
    keys = settings.data_dir / "live"
    keys.mkdir(parents=True, exist_ok=True)

    def pem(name: str, text: str) -> str:
        path = keys / name
        path.write_text(text)
        path.chmod(0o600)
        return str(path)

    env = {k: v for k, v in settings_env(settings).items() if k != "COLLECT_NOW"}
    env.update({
        "PAYMENT_SANDBOX": "0", "PUBLIC_BASE_URL": "https://collect.bench.example",
        "WECHAT_APPID": wx.appid, "WECHAT_MCHID": wx.mchid, "WECHAT_APIV3_KEY": wx.apiv3_key,
        "WECHAT_MCH_PRIVATE_KEY": pem("wechat_merchant_key.pem", wx.mch_private_key_pem),
        "WECHAT_MCH_SERIAL": wx.mch_serial,
        "WECHAT_PUBLIC_KEY": pem("wechat_pay_public_key.pem",
                                 public_pem_of(ch.sandbox_wechat_private_key)),
        "WECHAT_PUBLIC_KEY_ID": SANDBOX_IDS["wechat_public_key_id"],
        "WECHAT_PLATFORM_CERTS_DIR": str(ch._wechat_certs_dir),
        "ALIPAY_APPID": ali.appid, "ALIPAY_SELLER_ID": ali.seller_id,
        "ALIPAY_APP_PRIVATE_KEY": pem("alipay_app_key.pem", ali.app_private_key_pem),
        "ALIPAY_PUBLIC_KEY": pem("alipay_public_key.pem",
                                 public_pem_of(ch.sandbox_alipay_private_key)),
        "UNIONPAY_MID": ums.mid, "UNIONPAY_TID": ums.tid, "UNIONPAY_MSG_SRC": ums.msg_src,
        "UNIONPAY_MSG_SRC_ID": ums.msg_src_id, "UNIONPAY_KEY": ums.key,
        "RECEIPT_SIGNING_KEY": pem("receipt_signing_key.pem", new_ed25519_pem()),
        "RUN_WORKER_IN_SERVE": "0",
    })
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- served app
@dataclass
class ServerProcess:
    """``uvicorn _server:create --factory`` in a child process on 127.0.0.1 (see _server.py).

    The child is the service as ``python -m backend serve`` runs it (same logging setup,
    uvloop + httptools), wrapped in the bench's timing middleware.
    """

    settings: Settings
    port: int
    workers: int = 1
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    # live mode (see live_env): channel keys configured, no simulator, real business clock
    live: bool = False
    # the ASGI factory uvicorn serves (``_server:create_hello``: the hello-world yardstick;
    # ``_server:create_simulator``: the channel simulator alone)
    app: str = "_server:create"
    # environment beyond the settings' own
    extra_env: dict[str, str] = field(default_factory=dict)
    # `python -m backend serve` itself, without the bench's Server-Timing wrapper (in sandbox
    # mode with one process only: the simulator keeps its trades in one)
    serve: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> ServerProcess:
        return self.spawn().ready(timeout_s)

    def spawn(self) -> ServerProcess:
        """Start the process without waiting for it (``ready`` waits): its imports can
        overlap whatever the caller does meanwhile."""
        served = live_env(self.settings) if self.live else settings_env(self.settings)
        env = {**{k: v for k, v in os.environ.items() if k != "COLLECT_NOW"}, **served,
               **self.extra_env, "PYTHONPATH": str(CODE_ROOT), "BENCH_CODE_ROOT": str(CODE_ROOT)}
        if self.serve:
            cmd = [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(self.workers)]
        else:
            # as `serve` runs uvicorn (backend.__main__.uvicorn_options): no proxy headers
            # without TRUSTED_PROXIES
            cmd = [sys.executable, "-m", "uvicorn", self.app, "--factory",
                   "--app-dir", str(BENCH), "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(self.workers), "--no-server-header", "--no-proxy-headers",
                   "--timeout-graceful-shutdown", "5"]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=CODE_ROOT, env=env, stdout=out, stderr=out,
                                     start_new_session=True)
        return self

    def ready(self, timeout_s: float = 60) -> ServerProcess:
        """Wait until the spawned server answers /healthz (every process of it)."""
        import httpx

        assert self.proc is not None
        deadline = time.monotonic() + timeout_s

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see "
                                   f"{self.log_path}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                    # every worker process must be up: ask a few times
                    for _ in range(4 * self.workers):
                        httpx.get(self.base_url + "/healthz", timeout=5)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not start in time")

    def pids(self) -> list[int]:
        """The uvicorn process and its worker children (for py-spy and CPU accounting)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        try:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                                 capture_output=True, text=True, check=False).stdout
            pids += [int(p) for p in out.split()]
        except OSError:
            pass
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU of the server's processes so far (from /proc)."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server's processes so far."""
        user = system = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                user += int(fields[11]) / tick
                system += int(fields[12]) / tick
            except (OSError, IndexError, ValueError):
                pass
        return user, system

    def context_switches(self) -> tuple[int, int]:
        """(voluntary, involuntary) context switches of all the server's threads."""
        vol = invol = 0
        for pid in self.pids():
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    for line in (task / "status").read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            invol += int(line.split()[1])
            except OSError:
                pass
        return vol, invol

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer ends it: no shutdown of any kind."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)    # our own session: only our server
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)    # our own session: only our server
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def postgres_cpu_seconds(database: str | None = None) -> float:
    """CPU of the postgres processes (backends that have exited included: their time is in
    the postmaster's cutime). With ``database``, the backends of other databases (other
    people's tests and benchmarks) are left out; the shared processes (WAL writer,
    checkpointer, …) and the exited backends count as ours."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    procs: dict[int, tuple[int, list[str]]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            if name not in ("postgres", "postmaster"):
                continue
            if database is not None:
                title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    "utf-8", "replace").split()
                # "postgres: 15/main: <user> <database> <host(port)> <state>"
                if (len(title) >= 5 and title[0] == "postgres:" and "(" in title[4]
                        and title[3] != database):
                    continue
                if len(title) >= 5 and title[2:4] == ["autovacuum", "worker"] and \
                        title[4] != database:
                    continue
            fields = stat.rsplit(")", 1)[1].split()
            procs[int(d.name)] = (int(fields[1]), fields)
        except (OSError, ValueError, IndexError):
            continue
    for _pid, (ppid, fields) in procs.items():
        total += int(fields[11]) + int(fields[12])
        if ppid not in procs:        # the postmaster: add its reaped children
            total += int(fields[13]) + int(fields[14])
    return total / tick


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat, all CPUs)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / tick, sum(fields) / tick


def wait_quiet(max_wait_s: float, busy_below: float = 0.12, window_s: float = 3.0) -> float:
    """Wait (up to max_wait_s) for the machine to be idle — other people's test runs share
    it — i.e. a window_s window with less than busy_below of all CPUs busy. Returns the
    seconds waited; prints once when it has to wait."""
    start = time.monotonic()
    told = False
    while True:
        b0, t0 = machine_cpu()
        time.sleep(window_s)
        b1, t1 = machine_cpu()
        busy = (b1 - b0) / max(t1 - t0, 1e-9)
        waited = time.monotonic() - start
        if busy < busy_below or waited >= max_wait_s:
            if told:
                print(f"  (waited {waited:.0f} s for other work on the machine to finish; "
                      f"now {busy:.0%} busy)", file=sys.stderr)
            return waited
        if not told:
            print(f"  machine {busy:.0%} busy with other work: waiting for it to be idle…",
                  file=sys.stderr)
            told = True


def postgres_sessions(url: str) -> int:
    """Sessions (connections) opened to this database so far (pg_stat_database)."""
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT sessions FROM pg_stat_database "
                                "WHERE datname = current_database()").fetchone()[0])  # type: ignore[index]


class WaitSampler:
    """What the database's sessions are doing, sampled every ``interval_s`` while running
    (``pg_stat_activity``: on CPU, waiting on a lock, on the WAL, on the client…): where the
    database's time goes, by wait event."""

    def __init__(self, url: str, interval_s: float = 0.05) -> None:
        import threading

        self.url, self.interval_s = url, interval_s
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            me = conn.info.backend_pid
            while not self._stop.wait(self.interval_s):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> %s "
                    "AND backend_type = 'client backend'", (me,)).fetchall()
                self.samples += 1
                for state, kind, event in rows:
                    if state == "idle":
                        continue
                    self.counts[f"{kind}:{event}" if kind else "CPU (no wait)"] += 1

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def busy_sessions(self) -> dict[str, float]:
        """Average number of non-idle sessions per state, over the samples."""
        return {k: v / max(self.samples, 1) for k, v in self.counts.most_common()}


# --------------------------------------------------------------------------- seeding
def _copy_value(v: Any) -> str:
    if v is None:
        return "\\N"
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, datetime | date):
        return v.isoformat()
    s = str(v)
    return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def copy_rows(conn: psycopg.Connection[Any], table: str, rows: Iterable[dict[str, Any]],
              columns: Sequence[str]) -> int:
    """COPY rows into a table of the service's schema, filling every other NOT NULL column
    from the model's Python default (``created_at`` → now, ``tries`` → 0, …), so that a
    column added to the models later does not break the seeding."""
    from backend.models import metadata

    model = metadata.tables[table]
    present = {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
        (table,))}
    columns = [c for c in columns if c in present]   # a column this schema does not have yet
    now = datetime.now(UTC)
    defaults: dict[str, Any] = {}
    for col in model.columns:
        if col.name in columns or col.name not in present or col.nullable:
            continue
        d = col.default
        if d is None:
            if col.primary_key:
                continue
            raise RuntimeError(f"{table}.{col.name} is NOT NULL without a default: "
                               "the bench seeding must learn to fill it")
        arg = d.arg  # type: ignore[attr-defined]
        if d.is_callable:
            try:
                defaults[col.name] = arg(None)   # SQLAlchemy wraps it to take a context
            except TypeError:
                defaults[col.name] = arg()
        else:
            defaults[col.name] = arg
        if isinstance(defaults[col.name], datetime):
            defaults[col.name] = now
    all_cols = list(columns) + list(defaults)
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, all_cols)))
    n = 0
    buf = io.StringIO()
    tail = [_copy_value(defaults[c]) for c in defaults]
    with conn.cursor().copy(stmt) as copy:
        for row in rows:
            buf.write("\t".join([_copy_value(row[c]) for c in columns] + tail))
            buf.write("\n")
            n += 1
            if n % 20_000 == 0:
                copy.write(buf.getvalue())
                buf = io.StringIO()
        copy.write(buf.getvalue())
    return n


CHANNEL_KIND = {Channel.WECHAT: ("wechat_native", "native"),
                Channel.ALIPAY: ("alipay_qr", "qr"),
                Channel.UNIONPAY: ("unionpay_qr", "qr")}


@dataclass(frozen=True)
class OrderNumbers:
    """How the seeded orders are numbered, so that pgbench can name them from an id.

    Order ``i`` (1-based) has ``order_no = stamp + lpad(i, 7)`` (``new_order_no``'s 21
    characters: Beijing time + 7 characters of its alphabet); its attempt ``i`` has the
    ``out_trade_no`` its channel's client would make from ``order_no + "01"``, i.e.
    ``prefix[channel] + order_no + "01" + suffix[channel]``.
    """

    stamp: str
    prefix: dict[Channel, str]
    suffix: dict[Channel, str]
    keep: dict[Channel, int]         # how much of the order number's end the channel keeps

    def order_no(self, i: int) -> str:
        return f"{self.stamp}{i:07d}"

    def out_trade_no(self, channel: Channel, i: int) -> str:
        kept = f"{self.order_no(i)}01"[-self.keep[channel]:]
        return f"{self.prefix[channel]}{kept}{self.suffix[channel]}"


def order_numbers(settings: Settings) -> OrderNumbers:
    """The three channels' real formats, made by their clients' ``new_out_trade_no``."""
    from backend.channels import Channels
    from backend.clock import SHANGHAI

    clients = Channels(settings).clients
    stamp = datetime.now(SHANGHAI).strftime("%Y%m%d%H%M%S")
    base = f"{stamp}{0:07d}01"
    prefix, suffix, keep = {}, {}, {}
    for ch in Channel:
        made = clients[ch].new_out_trade_no(base)
        # ChinaUMS keeps only the end of it (its numbers are 27 characters at most)
        k = next(k for k in range(len(base), 0, -1) if base[-k:] in made)
        at = made.index(base[-k:])
        prefix[ch], suffix[ch], keep[ch] = made[:at], made[at + k:], k
    return OrderNumbers(stamp, prefix, suffix, keep)


def channel_ranges(n: int, mix: dict[Channel, float]) -> dict[Channel, range]:
    """Orders 1..n split into contiguous id ranges per channel, in Channel order."""
    total = sum(mix.values())
    out: dict[Channel, range] = {}
    start = 1
    chans = [c for c in Channel if mix.get(c, 0) > 0]
    for k, ch in enumerate(chans):
        count = n - (start - 1) if k == len(chans) - 1 else round(n * mix[ch] / total)
        out[ch] = range(start, start + count)
        start += count
    return out


def qr_content(channel: Channel, i: int) -> str:
    if channel is Channel.WECHAT:
        return f"weixin://wxpay/bizpayurl/up?pr={i:x}{secrets.token_hex(3)}&groupid=00"
    if channel is Channel.ALIPAY:
        return f"https://qr.alipay.com/bax0{secrets.token_hex(12)}"
    return f"https://qr.chinaums.com/bills/qrCode.do?id=3194{i:022d}"


# 4 towns of 10 villages each: the seeded residents' and orders' places
BENCH_VILLAGES = [f"370406{100 + t:03d}{200 + v:03d}" for t in range(4) for v in range(10)]


def copy_bench_residents(conn: psycopg.Connection[Any], ids: Iterable[int]) -> None:
    """Residents with these ids (COPY), spread over BENCH_VILLAGES."""
    import hashlib

    copy_rows(conn, "residents", ({
        "id": i, "id_hash": hashlib.sha256(f"bench-resident-{i}".encode()).hexdigest(),
        "id_enc": "bench." + secrets.token_hex(24),
        "id_masked": f"370406********{i % 10000:04d}",
        "birth_date": date(1950 + i % 50, 1 + i % 12, 1 + i % 28), "name": f"测试{i}",
        "village_code": BENCH_VILLAGES[i % len(BENCH_VILLAGES)], "hukou_type": "rural",
        "employee_pension": False, "employee_medical": False, "student": False,
        "categories": ""} for i in ids),
        ["id", "id_hash", "id_enc", "id_masked", "birth_date", "name", "village_code",
         "hukou_type", "employee_pension", "employee_medical", "student", "categories"])


def seed_pending_orders(db_url: str, n: int, ranges: dict[Channel, range],
                        numbers: OrderNumbers, amount_fen: int = 38_000,
                        ttl: timedelta = timedelta(hours=6),
                        vacuum: bool = True) -> dict[str, float]:
    """n residents, each with one unpaid medical bill line in one pending single-item order
    with one pending attempt at its channel (ids 1..n in every table). COPY, not the ORM:
    100,000 orders take seconds. Returns the seconds per step. ``vacuum``: VACUUM ANALYZE
    and CHECKPOINT after (what a timed run needs; a test's few hundred orders do not)."""

    timings: dict[str, float] = {}
    now = datetime.now(UTC)
    expires = now + ttl
    channel_of = {i: ch for ch, r in ranges.items() for i in r}
    villages = BENCH_VILLAGES
    with psycopg.connect(db_url) as conn:
        t0 = time.perf_counter()
        copy_rows(conn, "towns", ({"code": f"370406{100 + t:03d}", "name": f"测试镇{t}"}
                                  for t in range(4)), ["code", "name"])
        copy_rows(conn, "villages", ({"code": v, "name": f"测试村{k}", "town_code": v[:9]}
                                     for k, v in enumerate(villages)),
                  ["code", "name", "town_code"])
        copy_bench_residents(conn, range(1, n + 1))
        timings["residents"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        copy_rows(conn, "bill_lines", ({"id": i, "resident_id": i, "year": YEAR,
                                        "insurance": "medical", "status": "unpaid"}
                                       for i in range(1, n + 1)),
                  ["id", "resident_id", "year", "insurance", "status"])
        copy_rows(conn, "orders", ({
            "id": i, "order_no": numbers.order_no(i), "payer_sub": f"wx:oBench{i % 5000:06d}",
            "payer_role": "resident", "year": YEAR, "channel": CHANNEL_KIND[channel_of[i]][0],
            "status": "pending", "amount_fen": amount_fen, "expires_at": expires,
            "qr_token": secrets.token_urlsafe(24)} for i in range(1, n + 1)),
            ["id", "order_no", "payer_sub", "payer_role", "year", "channel", "status",
             "amount_fen", "expires_at", "qr_token"])
        copy_rows(conn, "order_lines", ({
            "id": i, "order_id": i, "bill_line_id": i, "resident_id": i, "insurance": "medical",
            "tier_yuan": None, "amount_fen": amount_fen,
            "village_code": villages[i % len(villages)],
            "town_code": villages[i % len(villages)][:9]} for i in range(1, n + 1)),
            ["id", "order_id", "bill_line_id", "resident_id", "insurance", "tier_yuan",
             "amount_fen", "village_code", "town_code"])
        copy_rows(conn, "attempts", ({
            "id": i, "order_id": i, "channel": channel_of[i].value,
            "kind": CHANNEL_KIND[channel_of[i]][1],
            "out_trade_no": numbers.out_trade_no(channel_of[i], i), "amount_fen": amount_fen,
            "status": "pending", "expires_at": expires,
            "qr_content": qr_content(channel_of[i], i)} for i in range(1, n + 1)),
            ["id", "order_id", "channel", "kind", "out_trade_no", "amount_fen", "status",
             "expires_at", "qr_content"])
        for table in ("residents", "bill_lines", "orders", "order_lines", "attempts"):
            conn.execute(sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), {})").format(
                sql.Literal(table), sql.Literal(n)))
        conn.commit()
        timings["orders"] = time.perf_counter() - t0
    if not vacuum:
        return timings
    t0 = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    timings["vacuum"] = time.perf_counter() - t0
    return timings


def preload_paid_orders(db_url: str, first: int, count: int, amount_fen: int = 38_000,
                        progress: bool = True) -> dict[str, float]:
    """``count`` orders already paid, ids ``first`` … ``first + count - 1`` in every table: a
    province's campaign so far — residents, bill lines, orders and their lines, attempts,
    payments and payment lines, the inbox rows of their WeChat notifications (a real
    notification's size), journal entries and postings — written by COPY as the replica
    role (no trigger or foreign-key check per row: the data is made consistent here, and
    :func:`check_preloaded` checks it after). Spread over 90 business days. Returns the
    seconds per step."""
    from backend.ledger import service as ledger

    timings: dict[str, float] = {}
    villages = BENCH_VILLAGES
    ids = range(first, first + count)
    start_day = date(2020, 9, 1)
    base = datetime(2020, 9, 1, 1, 0, tzinfo=UTC)
    body = "x" * 900            # an encrypted WeChat notification's size
    numbers_stamp = "20200901090000"

    def paid_at(i: int) -> datetime:
        return base + timedelta(days=i % 90, seconds=i % 36000)

    def txn(i: int) -> str:
        return f"4200000{i:021d}"

    def step(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        if progress:
            print(f"  preloaded {name} in {timings[name]:.1f} s", file=sys.stderr)

    with psycopg.connect(db_url) as conn:
        conn.execute("SET session_replication_role = replica")
        # the accounts as the service makes them (backend/ledger/service.py)
        clearing, contributions = (conn.execute(
            "INSERT INTO ledger_accounts (code, kind, name, created_at) "
            "VALUES (%s, %s, %s, now()) ON CONFLICT (code) DO UPDATE SET code = EXCLUDED.code "
            "RETURNING id", (a.code, a.kind, a.name)).fetchone()[0]  # type: ignore[index]
            for a in (ledger.channel_clearing("wechat"), ledger.contributions("medical", YEAR)))
        t0 = time.perf_counter()
        copy_bench_residents(conn, ids)
        step("residents", t0)
        t0 = time.perf_counter()
        copy_rows(conn, "bill_lines", ({
            "id": i, "resident_id": i, "year": YEAR, "insurance": "medical", "status": "paid",
            "paid_payment_id": i, "paid_at": paid_at(i), "paid_fen": amount_fen}
            for i in ids),
            ["id", "resident_id", "year", "insurance", "status", "paid_payment_id", "paid_at",
             "paid_fen"])
        copy_rows(conn, "orders", ({
            "id": i, "order_no": f"{numbers_stamp}{i:07d}", "payer_sub": f"wx:oPaid{i % 5000:06d}",
            "payer_role": "resident", "year": YEAR, "channel": "wechat_native", "status": "paid",
            "amount_fen": amount_fen, "expires_at": paid_at(i) + timedelta(hours=2),
            "paid_at": paid_at(i), "channel_transaction_id": txn(i),
            "qr_token": secrets.token_urlsafe(24)} for i in ids),
            ["id", "order_no", "payer_sub", "payer_role", "year", "channel", "status",
             "amount_fen", "expires_at", "paid_at", "channel_transaction_id", "qr_token"])
        copy_rows(conn, "order_lines", ({
            "id": i, "order_id": i, "bill_line_id": i, "resident_id": i, "insurance": "medical",
            "tier_yuan": None, "amount_fen": amount_fen,
            "village_code": villages[i % len(villages)],
            "town_code": villages[i % len(villages)][:9]} for i in ids),
            ["id", "order_id", "bill_line_id", "resident_id", "insurance", "tier_yuan",
             "amount_fen", "village_code", "town_code"])
        copy_rows(conn, "attempts", ({
            "id": i, "order_id": i, "channel": "wechat", "kind": "native",
            "out_trade_no": f"{numbers_stamp}{i:07d}01", "amount_fen": amount_fen,
            "status": "paid", "transaction_id": txn(i), "paid_at": paid_at(i),
            "expires_at": paid_at(i) + timedelta(hours=2),
            "qr_content": f"weixin://wxpay/bizpayurl/up?pr={i:x}&groupid=00"} for i in ids),
            ["id", "order_id", "channel", "kind", "out_trade_no", "amount_fen", "status",
             "transaction_id", "paid_at", "expires_at", "qr_content"])
        step("orders", t0)
        t0 = time.perf_counter()
        copy_rows(conn, "payments", ({
            "id": i, "attempt_id": i, "order_id": i, "channel": "wechat", "transaction_id": txn(i),
            "amount_fen": amount_fen, "paid_at": paid_at(i),
            "business_date": start_day + timedelta(days=i % 90), "source": "notification",
            "shared_transaction": False} for i in ids),
            ["id", "attempt_id", "order_id", "channel", "transaction_id", "amount_fen",
             "paid_at", "business_date", "source", "shared_transaction"])
        copy_rows(conn, "payment_lines", ({
            "id": i, "payment_id": i, "bill_line_id": i, "amount_fen": amount_fen,
            "applied": True} for i in ids),
            ["id", "payment_id", "bill_line_id", "amount_fen", "applied"])
        step("payments", t0)
        t0 = time.perf_counter()
        copy_rows(conn, "notification_inbox", ({
            "id": i, "channel": "wechat", "dedupe_key": f"preloaded-{i:012d}",
            "out_trade_no": f"{numbers_stamp}{i:07d}01", "verified": True, "outcome": "applied",
            "detail": f"order {numbers_stamp}{i:07d}",
            "headers": '{"content-type": "application/json"}', "body": body,
            "received_at": paid_at(i)} for i in ids),
            ["id", "channel", "dedupe_key", "out_trade_no", "verified", "outcome", "detail",
             "headers", "body", "received_at"])
        step("inbox", t0)
        t0 = time.perf_counter()
        copy_rows(conn, "journal_entries", ({
            "id": i, "kind": "channel_payment",
            "reason": f"order {numbers_stamp}{i:07d} paid by wechat {txn(i)}",
            "business_date": start_day + timedelta(days=i % 90), "occurred_at": paid_at(i),
            "payment_id": i} for i in ids),
            ["id", "kind", "reason", "business_date", "occurred_at", "payment_id"])

        def postings() -> Iterator[dict[str, Any]]:
            for i in ids:
                v = villages[i % len(villages)]
                day = start_day + timedelta(days=i % 90)
                yield {"id": 2 * i, "entry_id": i, "account_id": clearing,
                       "amount_fen": amount_fen, "business_date": day, "town_code": v[:9],
                       "village_code": v, "channel": "wechat", "measure": "collected",
                       "items": 1}
                yield {"id": 2 * i + 1, "entry_id": i, "account_id": contributions,
                       "amount_fen": -amount_fen, "business_date": day, "town_code": v[:9],
                       "village_code": v, "channel": "wechat", "measure": None, "items": 1}

        copy_rows(conn, "postings", postings(),
                  ["id", "entry_id", "account_id", "amount_fen", "business_date", "town_code",
                   "village_code", "channel", "measure", "items"])
        step("ledger", t0)
        last = first + count - 1
        for table, top in (("residents", last), ("bill_lines", last), ("orders", last),
                           ("order_lines", last), ("attempts", last), ("payments", last),
                           ("payment_lines", last), ("notification_inbox", last),
                           ("journal_entries", last), ("postings", 2 * last + 1)):
            conn.execute(sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), {})").format(
                sql.Literal(table), sql.Literal(top)))
        conn.execute("SET session_replication_role = DEFAULT")
        conn.commit()
    t0 = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    step("vacuum", t0)
    return timings


# Tables a payment writes to; emptied (and the orders set back to pending) between runs.
PAYMENT_TABLES = ("payment_lines", "refunds", "payments", "notification_inbox")
MAYBE_PAYMENT_TABLES = ("postings", "journal_entries", "outbox", "agent_collections")
# what refers to payments or ledger entries, emptied before them
RESET_FIRST = ("refund_lines", "department_credit_lines", "department_credit_notes",
               "department_transfers", "department_bill_lines", "department_bills",
               "ledger_entry_checks")


def reset_to_pending(db_url: str, upto: int | None = None) -> None:
    """Undo every payment: the orders, attempts and bill lines pending again, no payments.
    With ``upto`` (orders preloaded as paid after it: :func:`preload_paid_orders`), only the
    payments of orders 1 … ``upto`` and what they wrote."""
    if upto is not None:
        _reset_first_orders(db_url, upto)
        return
    with psycopg.connect(db_url) as conn:
        present = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        tables = [t for t in (*MAYBE_PAYMENT_TABLES, *PAYMENT_TABLES) if t in present]
        # Not TRUNCATE … CASCADE: department bills refer to payments and bill lines to the
        # bills, so a cascade would empty bill_lines (and the orders' lines with them). Rows
        # are deleted instead, as the replica role, which skips the ledger's append-only
        # triggers and the foreign-key checks for this reset only.
        conn.execute("SET session_replication_role = replica")
        for table in (*RESET_FIRST, *tables):
            if table in present:
                conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("UPDATE bill_lines SET status = 'unpaid', paid_payment_id = NULL, "
                     "paid_tier_yuan = NULL, paid_fen = NULL, paid_at = NULL "
                     "WHERE status <> 'unpaid'")
        conn.execute("UPDATE attempts SET status = 'pending', transaction_id = NULL, "
                      "paid_at = NULL WHERE status <> 'pending'")
        conn.execute("UPDATE orders SET status = 'pending', paid_at = NULL, "
                     "channel_transaction_id = NULL WHERE status <> 'pending'")
        conn.commit()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def _reset_first_orders(db_url: str, upto: int) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("CREATE TEMP TABLE undo AS SELECT id FROM payments WHERE order_id <= %s",
                     (upto,))
        conn.execute("CREATE TEMP TABLE undo_entries AS SELECT id FROM journal_entries "
                     "WHERE payment_id IN (SELECT id FROM undo)")
        for statement in (
                "DELETE FROM postings WHERE entry_id IN (SELECT id FROM undo_entries)",
                "DELETE FROM journal_entries WHERE id IN (SELECT id FROM undo_entries)",
                "DELETE FROM ledger_entry_checks",
                "DELETE FROM refund_lines WHERE refund_id IN (SELECT id FROM refunds "
                "WHERE payment_id IN (SELECT id FROM undo))",
                "DELETE FROM refunds WHERE payment_id IN (SELECT id FROM undo)",
                "DELETE FROM payment_lines WHERE payment_id IN (SELECT id FROM undo)",
                "DELETE FROM payments WHERE id IN (SELECT id FROM undo)",
                "DELETE FROM outbox",
                "DELETE FROM notification_inbox WHERE dedupe_key IS NULL "
                "OR dedupe_key NOT LIKE 'preloaded-%%'"):
            conn.execute(statement)
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("UPDATE bill_lines SET status = 'unpaid', paid_payment_id = NULL, "
                     "paid_tier_yuan = NULL, paid_fen = NULL, paid_at = NULL "
                     "WHERE id <= %s AND status <> 'unpaid'", (upto,))
        conn.execute("UPDATE attempts SET status = 'pending', transaction_id = NULL, "
                     "paid_at = NULL WHERE id <= %s AND status <> 'pending'", (upto,))
        conn.execute("UPDATE orders SET status = 'pending', paid_at = NULL, "
                     "channel_transaction_id = NULL WHERE id <= %s AND status <> 'pending'",
                     (upto,))
        conn.commit()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def checkpoint(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


# --------------------------------------------------------------------------- notifications
DESCRIPTION = f"{YEAR}年度城乡居民基本医疗保险"


def paid_trade(channel: Channel, numbers: OrderNumbers, i: int, amount_fen: int,
               notify_url: str, paid_at: datetime, src: str) -> Any:
    """The simulator's record of attempt ``i`` after the payer paid it."""
    from payment_adapters.sandbox.core import SimTrade, sim_transaction_id
    from payment_adapters.unionpay.client import bill_date_of

    out_trade_no = numbers.out_trade_no(channel, i)
    extra: dict[str, Any] = {}
    if channel is Channel.UNIONPAY:
        qr_id = f"{src}{paid_at:%y%m%d}{i:016d}"
        extra = {"billDate": bill_date_of(out_trade_no, src).isoformat(), "qrCodeId": qr_id,
                 "billQRCode": "https://qr.chinaums.com/bills/qrCode.do?id=" + qr_id,
                 "createTime": (paid_at - timedelta(minutes=2)).astimezone(
                     _beijing()).strftime("%Y-%m-%d %H:%M:%S")}
    return SimTrade(channel=channel, out_trade_no=out_trade_no, amount_fen=amount_fen,
                    notify_url=notify_url, kind=CHANNEL_KIND[channel][1],
                    description=DESCRIPTION, state="paid",
                    transaction_id=sim_transaction_id(channel, i, paid_at),
                    paid_at=paid_at, paid_fen=amount_fen,
                    created_at=paid_at - timedelta(minutes=2), extra=extra)


def _beijing() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(BEIJING_TZ)


class NotificationFactory:
    """Real-format signed notifications for seeded attempts, built by the channel simulators
    (WeChat APIv3: AES-256-GCM resource + RSA signature headers; Alipay RSA2 form; ChinaUMS
    SHA256-signed form)."""

    def __init__(self, settings: Settings, numbers: OrderNumbers, amount_fen: int) -> None:
        from backend.channels import Channels

        self.channels = Channels(settings)
        self.sims = self.channels.simulators
        self.numbers = numbers
        self.amount_fen = amount_fen
        self.src = self.channels.unionpay_config.msg_src_id

    def build(self, channel: Channel, i: int) -> tuple[str, dict[str, str], bytes]:
        """(path, headers, body) of the payment notification of attempt ``i``."""
        from payment_adapters.sandbox.core import PayOptions

        url = self.channels.notify_url(channel)
        paid_at = datetime.now(UTC).replace(microsecond=0)
        trade = paid_trade(channel, self.numbers, i, self.amount_fen, url, paid_at, self.src)
        note = self.sims[channel].payment_notification(trade, PayOptions())
        return f"/api/v1/notify/{channel.value}", dict(note.headers), note.body


# --------------------------------------------------------------------------- profiling
def start_profiler(server: ServerProcess, out: Path, mode: str = "gil",
                   rate: int = 200) -> subprocess.Popen[bytes]:
    """py-spy on the server (its one worker; with several, the last). ``mode``: "gil" samples
    the thread holding the GIL (where the Python CPU goes); "wall" samples every thread,
    waiting ones included (where the time goes: round trips, the channel call)."""
    out.mkdir(parents=True, exist_ok=True)
    pids = server.pids()
    pid = pids[-1] if server.workers > 1 else pids[0]
    pyspy = Path(sys.executable).parent / "py-spy"
    cmd = [str(pyspy), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
           "--output", str(out / "server.collapsed"), "--nonblocking",
           "--gil" if mode == "gil" else "--idle"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(  # noqa: SIM115
        out / "py-spy.log", "wb"))
    time.sleep(1.0)
    return proc


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def summarize_profile(out: Path, steps: Sequence[tuple[str, str]], top: int = 30) -> None:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    path = out / "server.collapsed"
    if not path.exists():
        print(f"no profile at {path}")
        return
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    compiled = [(label, re.compile(pattern)) for label, pattern in steps]
    watched: dict[str, int] = {label: 0 for label, _ in steps}
    total = 0
    frame_re = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = []
        for fr in stack.split(";"):
            m = frame_re.match(fr)
            name = fr if not m else f"{m.group(1)} ({_short_path(m.group(2))})"
            frames.append(name)
        self_c[frames[-1]] += count
        for name in set(frames):
            incl[name] += count
        for label, pattern in compiled:
            if any(pattern.search(name) for name in frames):
                watched[label] += count
    by_layer: Counter[str] = Counter()
    for name, c in self_c.items():
        by_layer[_layer(name)] += c
    lines = [f"{total:,} samples", "",
             "self time by layer (the library of the innermost Python frame):"]
    lines += [f"  {c / total:6.1%}  {name}" for name, c in by_layer.most_common()]
    lines += ["", "inclusive time of the steps of the path:"]
    lines += [f"  {c / total:6.1%}  {label}" for label, c in watched.items()]
    lines += ["  (a sample counts for a step when the step is anywhere on its stack)"]
    lines += ["", "self time (top functions):"]
    lines += [f"  {c / total:6.1%}  {name}" for name, c in self_c.most_common(top)]
    lines += ["", "inclusive time (top):"]
    lines += [f"  {c / total:6.1%}  {name}" for name, c in incl.most_common(top * 2)]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(by_layer) + len(watched) + top + 8]))
    print(f"(full summary: {out / 'summary.txt'})")


_LAYERS = [("sqlalchemy/", "SQLAlchemy"), ("psycopg", "psycopg"), ("uvicorn/", "uvicorn"),
           ("starlette/", "Starlette"), ("fastapi/", "FastAPI"), ("anyio/", "anyio"),
           ("pydantic", "pydantic"), ("cryptography/", "cryptography"),
           ("logging/", "logging"), ("json/", "json"), ("asyncio/", "asyncio"),
           ("threading.py", "threading"), ("backend/", "backend (service code)"),
           ("payment_adapters/", "payment_adapters"), ("_server.py", "bench wrapper"),
           ("urllib/", "urllib"), ("uuid.py", "uuid"), ("datetime", "datetime")]


def _layer(name: str) -> str:
    for marker, label in _LAYERS:
        if marker in name:
            return label
    return "other: " + name.rsplit("(", 1)[-1].rstrip(")")


def _short_path(path: str) -> str:
    if not path.startswith("/"):
        return path
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.basename(path)
