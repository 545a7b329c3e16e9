"""`serve` and `worker` as a deployment starts them: server processes, trusted proxies, and
the live-mode checks that refuse to start an unsafe configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from backend.__main__ import uvicorn_options
from backend.app import create_app
from backend.channels import public_pem_of
from backend.config import ConfigError, Settings, new_ed25519_pem
from backend.residents.idnumber import make_id_number
from backend.runtime import Runtime
from tests.conftest import TEST_PII_KEY
from tests.servers import ServedApp, free_port

REPO = Path(__file__).resolve().parent.parent
HTTPS_BASE = "https://collection.example.org"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing of the test run's own (a stray WEB_CONCURRENCY or
    PAYMENT_SANDBOX would change what is tested) but what the service needs."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
            "DATA_DIR": str(tmp_path / "data"), "PII_KEY": TEST_PII_KEY,
            "APP_SECRET": "test-secret-" + "x" * 32, **extra}


@pytest.fixture(scope="module")
def live_channels(sandbox_keys: dict[str, object],
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every channel setting of live mode, as environment variables, with throwaway keys
    made for this run (the simulator's key pairs stand in for the channels')."""
    d = tmp_path_factory.mktemp("live-keys")
    publics = {}
    for name, private in (("wechat", "sandbox_wechat_private_key"),
                          ("alipay", "sandbox_alipay_private_key")):
        path = d / f"{name}_public.pem"
        path.write_text(public_pem_of(Path(str(sandbox_keys[private])).read_text()))
        publics[name] = str(path)
    receipts = d / "receipt_signing_key.pem"
    receipts.write_text(new_ed25519_pem())
    return {
        "PAYMENT_SANDBOX": "0", "PUBLIC_BASE_URL": HTTPS_BASE,
        "WECHAT_APPID": "wx8888888888888888", "WECHAT_APP_SECRET": "test-wechat-app-secret",
        "WECHAT_MCHID": "1900000109", "WECHAT_APIV3_KEY": str(sandbox_keys["wechat_apiv3_key"]),
        "WECHAT_MCH_PRIVATE_KEY": str(sandbox_keys["wechat_mch_private_key"]),
        "WECHAT_MCH_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        "WECHAT_PUBLIC_KEY": publics["wechat"],
        "WECHAT_PUBLIC_KEY_ID": "PUB_KEY_ID_0119000001092025010100000000",
        "ALIPAY_APPID": "2021000000000001",
        "ALIPAY_APP_PRIVATE_KEY": str(sandbox_keys["alipay_app_private_key"]),
        "ALIPAY_PUBLIC_KEY": publics["alipay"], "ALIPAY_SELLER_ID": "2088000000000001",
        "UNIONPAY_MID": "898340149000005", "UNIONPAY_TID": "88880001",
        "UNIONPAY_MSG_SRC": "WWW.DISTRICT.GOV.CN", "UNIONPAY_MSG_SRC_ID": "3194",
        "UNIONPAY_KEY": str(sandbox_keys["unionpay_key"]),
        "RECEIPT_SIGNING_KEY": str(receipts),
    }


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backend", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)   # uvicorn's parent stops its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)   # its own session: only what it started
                proc.wait(timeout=10)


# --- several server processes -----------------------------------------------------------

@pytest.mark.parametrize("how", ["WEB_CONCURRENCY", "--workers"])
def test_sandbox_refuses_several_processes_clearly(tmp_path: Path, how: str) -> None:
    env = _env(tmp_path, PAYMENT_SANDBOX="1")
    args = ["serve", "--port", str(free_port())]
    if how == "WEB_CONCURRENCY":
        env["WEB_CONCURRENCY"] = "2"
    else:
        args += ["--workers", "2"]
    r = _run(env, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "simulator keeps its trades in one process" in r.stderr
    assert "WEB_CONCURRENCY" in r.stderr and "Traceback" not in r.stderr


def test_web_concurrency_must_be_a_positive_number(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="web_concurrency"):
        Settings(web_concurrency=0)
    r = _run(_env(tmp_path, PAYMENT_SANDBOX="1"), "serve", "--workers", "0")
    assert r.returncode == 2 and "--workers: must be a whole number from 1 up" in r.stderr


def test_live_mode_serves_web_concurrency_processes(pg_url: str, redis_url: str,
                                                    live_channels: dict[str, str],
                                                    tmp_path: Path,
                                                    stop_later: list[subprocess.Popen[bytes]],
                                                    ) -> None:
    port = free_port()
    env = _env(tmp_path, **live_channels, DATABASE_URL=pg_url, REDIS_URL=redis_url,
               WEB_CONCURRENCY="2")
    proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", str(port)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    stop_later.append(proc)
    answer = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            break
        except httpx.TransportError:
            time.sleep(0.3)
    if answer is None:
        proc.kill()
        pytest.fail(f"serve never answered (exit {proc.poll()}): "
                    f"{proc.stderr.read().decode() if proc.stderr else ''}")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    # uvicorn's parent with two server processes (and multiprocessing's helpers, if any)
    servers = [c for c in _children(proc.pid)
               if b"multiprocessing.spawn" in Path(f"/proc/{c}/cmdline").read_bytes()
               and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(servers) == 2
    # /metrics sums what every process counted, whichever process answers the scrape
    for _ in range(40):   # a new connection each: the kernel spreads them over both
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    totals = set()
    for _ in range(4):
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scrape.status_code == 200
        line = next(x for x in scrape.text.splitlines() if x.startswith(
            'collect_http_requests_total{method="GET",route="/healthz",status="200"}'))
        totals.add(float(line.rsplit(" ", 1)[1]))
    assert totals == {41.0}
    folder = next(Path("/tmp").glob(f"collect-metrics-*/*_{servers[0]}.db")).parent
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not folder.exists()   # the counts' folder goes with the serve that made it


def test_the_lookup_limits_hold_across_server_processes(
        pg_url: str, redis_url: str, live_channels: dict[str, str], tmp_path: Path,
        stop_later: list[subprocess.Popen[bytes]]) -> None:
    """Misses count in Redis: two processes answering the same caller (and the same
    address) refuse it after the limit, not after twice the limit."""
    import json

    from backend.security.tokens import Principal, issue_token

    secret = "test-secret-" + "x" * 32
    port = free_port()
    env = _env(tmp_path, **live_channels, DATABASE_URL=pg_url, REDIS_URL=redis_url,
               WEB_CONCURRENCY="2", LOOKUP_MISS_LIMIT="6", LOG_FORMAT="json")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", str(port)],
                                env=env, cwd=REPO, stdout=out, stderr=out,
                                start_new_session=True)
    stop_later.append(proc)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    token = issue_token(secret, Principal(sub=f"wx:prober-{os.getpid()}", role="resident"), 600)
    statuses = []
    for _ in range(16):   # a new connection each: both processes answer some
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/residents/lookup",
                       headers={"Authorization": f"Bearer {token}"}, timeout=10,
                       json={"name": "某某", "id_number": NOBODY, "year": 2021})
        statuses.append(r.status_code)
    assert statuses == [404] * 6 + [429] * 10
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    answered_by = {line["process"] for line in map(json.loads, (
        x for x in log.read_text().splitlines() if x.startswith("{")))
        if line.get("route") == "/api/v1/residents/lookup"}
    assert len(answered_by) == 2, "one process answered every lookup: nothing was shared"


# --- trusted proxies --------------------------------------------------------------------

NOBODY = make_id_number("370406", date(1969, 3, 15), 99)   # valid, and registered nowhere


def _miss(http: httpx.Client, caller: str, forwarded_for: str | None) -> int:
    login = http.post("/api/v1/auth/wechat", json={"code": f"sandbox:{caller}"})
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    r = http.post("/api/v1/residents/lookup", headers=headers,
                  json={"name": "某某", "id_number": NOBODY, "year": 2021})
    return r.status_code


@pytest.fixture
def served(rt: Runtime) -> Iterator[tuple[ServedApp, httpx.Client]]:
    """The app served with the options `serve` gives uvicorn (3 misses per IP)."""
    rt.settings.lookup_ip_miss_limit = 3
    port = free_port()
    app = ServedApp(create_app(runtime=rt), port, options=uvicorn_options(
        rt.settings, host="127.0.0.1", port=port, workers=1)).start()
    try:
        with httpx.Client(base_url=app.base_url, timeout=30) as http:
            yield app, http
    finally:
        app.stop()


@pytest.fixture
def trusting_loopback(rt: Runtime) -> None:
    rt.settings.trusted_proxies = "127.0.0.1"


def test_forwarded_for_is_ignored_without_trusted_proxies(
        rt: Runtime, served: tuple[ServedApp, httpx.Client]) -> None:
    _, http = served
    # a fresh caller and a fresh claimed address each time: only 127.0.0.1's count is left
    for i in range(rt.settings.lookup_ip_miss_limit):
        assert _miss(http, f"c{i}", f"203.0.113.{i}") == 404
    assert _miss(http, "another", "198.51.100.7") == 429
    assert _miss(http, "no-header", None) == 429


def test_forwarded_for_from_a_trusted_proxy_names_the_client(
        rt: Runtime, trusting_loopback: None, served: tuple[ServedApp, httpx.Client]) -> None:
    _, http = served
    limit = rt.settings.lookup_ip_miss_limit
    for i in range(limit + 1):   # each address its own count: none over the limit
        assert _miss(http, f"c{i}", f"203.0.113.{i}") == 404
    assert _miss(http, "direct", None) == 404   # nor is the proxy's own address counted
    for i in range(limit - 1):   # 203.0.113.0 has one miss already
        assert _miss(http, f"again{i}", "203.0.113.0") == 404
    assert _miss(http, "over", "203.0.113.0") == 429
    # a client cannot hide behind an address it prepends: the proxy appends the real one
    assert _miss(http, "spoof", "198.51.100.7, 203.0.113.0") == 429


def test_trusted_proxies_setting_is_checked() -> None:
    s = Settings(trusted_proxies=" 10.0.0.0/8, 127.0.0.1 ,::1")
    assert s.trusted_proxy_list == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    assert uvicorn_options(s, host="0.0.0.0", port=8000, workers=1)["proxy_headers"] is True
    none = uvicorn_options(Settings(), host="0.0.0.0", port=8000, workers=1)
    assert none["proxy_headers"] is False and none["forwarded_allow_ips"] == []
    for bad, reason in (("proxy.internal", "not an IP address or network"),
                        ("10.0.0.1/8", "has host bits set"), ("*", "anyone")):
        with pytest.raises(ValidationError, match="TRUSTED_PROXIES") as info:
            Settings(trusted_proxies=bad)
        assert reason in str(info.value)


# --- live mode's notify URL -------------------------------------------------------------

def _live(url: str) -> Settings:
    return Settings(payment_sandbox=False, wechat_mchid="1", alipay_appid="2",
                    unionpay_mid="3", unionpay_tid="4", unionpay_msg_src="WWW.DISTRICT.GOV.CN",
                    unionpay_msg_src_id="3194", unionpay_key="k" * 32,
                    wechat_platform_certs_dir="/etc/wechatpay/certs", public_base_url=url,
                    app_secret="s" * 40, pii_key=TEST_PII_KEY,
                    receipt_signing_key="/run/secrets/receipts.pem")


@pytest.mark.parametrize("url", [
    "http://collection.example.org", "https://", "https:///api", "collection.example.org",
    "https://collection.example.org/?x=1", "https://collection.example.org/#top",
    "ftp://collection.example.org"])
def test_live_mode_names_an_unsafe_public_base_url(url: str) -> None:
    (problem,) = _live(url).live_mode_problems()
    assert problem.startswith("PUBLIC_BASE_URL must be https://") and repr(url) in problem
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        create_app(_live(url))


@pytest.mark.parametrize("url", ["https://collection.example.org",
                                 "https://collection.example.org:8443/district/"])
def test_live_mode_takes_an_https_public_base_url(url: str) -> None:
    assert _live(url).live_mode_problems() == []


def test_live_mode_refuses_a_business_clock_of_its_own() -> None:
    """COLLECT_NOW is for demos and rehearsals: the real channels date trades by real time."""
    settings = _live("https://collection.example.org").model_copy(
        update={"collect_now": datetime.fromisoformat("2020-11-02T09:00:00+08:00")})
    (problem,) = settings.live_mode_problems()
    assert problem.startswith("COLLECT_NOW must be unset")
    with pytest.raises(ConfigError, match="COLLECT_NOW"):
        create_app(settings)


def test_sandbox_mode_has_no_live_mode_problems() -> None:
    assert Settings(payment_sandbox=True).live_mode_problems() == []


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_an_unsafe_notify_url(command: str, tmp_path: Path,
                                                      live_channels: dict[str, str]) -> None:
    env = _env(tmp_path, **live_channels)
    env["PUBLIC_BASE_URL"] = "http://collection.example.org"
    r = _run(env, command, *(["--port", str(free_port())] if command == "serve" else []))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "PUBLIC_BASE_URL must be https://" in r.stderr and "Traceback" not in r.stderr


def test_live_mode_needs_the_secrets_every_process_shares() -> None:
    unset = _live("https://collection.example.org").model_copy(
        update={"app_secret": "", "pii_key": "", "receipt_signing_key": ""})
    problems = unset.live_mode_problems()
    assert [p.split()[0] for p in problems] == ["APP_SECRET", "PII_KEY", "RECEIPT_SIGNING_KEY"]


def test_several_live_processes_need_redis(tmp_path: Path, live_channels: dict[str, str]) -> None:
    env = _env(tmp_path, **live_channels, WEB_CONCURRENCY="2")
    env.pop("REDIS_URL", None)
    r = _run(env, "serve", "--port", str(free_port()))
    assert r.returncode == 2 and "REDIS_URL" in r.stderr and "Traceback" not in r.stderr


def test_processes_starting_together_share_one_generated_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without APP_SECRET (sandbox), the first process makes it; the others read that one."""
    import concurrent.futures as cf
    import secrets

    made = secrets.token_urlsafe

    def slow(n: int) -> str:        # every starter gets past "is it there yet?" first
        time.sleep(0.05)
        return made(n)

    monkeypatch.setattr(secrets, "token_urlsafe", slow)

    def secret(_: int) -> str:
        return Settings(data_dir=tmp_path / "data").app_secret_value

    with cf.ThreadPoolExecutor(8) as pool:
        values = set(pool.map(secret, range(32)))
    assert len(values) == 1 and len(next(iter(values))) > 40



def test_live_one_off_commands_never_make_their_own_secrets(tmp_path: Path,
                                                             live_channels: dict[str, str]
                                                             ) -> None:
    """An import with a throwaway PII_KEY would store ID numbers no server can read."""
    unset = _live("https://collection.example.org").model_copy(
        update={"app_secret": "", "pii_key": "", "data_dir": tmp_path / "data"})
    with pytest.raises(ConfigError, match="PII_KEY"):
        _ = unset.pii_key_bytes
    with pytest.raises(ConfigError, match="APP_SECRET"):
        _ = unset.app_secret_value
    assert not (tmp_path / "data" / "pii_key").exists()
    env = _env(tmp_path, **live_channels) | {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}"}
    env.pop("PII_KEY")
    regions = tmp_path / "regions.csv"
    regions.write_text("town_code,town_name,village_code,village_name\n"
                       "370406100,店子镇,370406100201,店子村\n")
    # a newcomer who forgot to migrate is told so
    r = _run(env, "import", "regions", str(regions), "--quiet")
    assert r.returncode == 2 and "python -m backend migrate" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert _run(env, "migrate").returncode == 0
    assert _run(env, "import", "regions", str(regions), "--quiet").returncode == 0
    residents = tmp_path / "residents.csv"
    residents.write_text(
        "id_number,name,village_code,hukou_type,employee_pension,employee_medical,categories,"
        "phone,last_pension_tier_yuan,student\n"
        f"{make_id_number('370406', date(1969, 3, 15), 11)},张三,370406100201,local,0,0,,,,0\n")
    r = _run(env, "import", "residents", str(residents), "--quiet")
    assert r.returncode == 2 and "PII_KEY must be set" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
