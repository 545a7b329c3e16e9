"""`make run PORT=…` and `python -m backend sandbox pay`, as a newcomer uses them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Live
from tests.orders.helpers import get_order, order, ref, resident_headers, seed
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def _pay(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PUBLIC_BASE_URL"}
    return subprocess.run([sys.executable, "-m", "backend", "sandbox", "pay", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)


def test_make_run_serves_and_points_its_urls_at_the_same_port() -> None:
    dry = subprocess.run(["make", "-n", "run", "PORT=8123"], capture_output=True, text=True,
                         cwd=REPO, env={k: v for k, v in os.environ.items()
                                        if k != "PUBLIC_BASE_URL"}, timeout=60)
    serve = [line for line in dry.stdout.splitlines() if "serve" in line or "PUBLIC" in line]
    text = " ".join(serve)
    assert "PUBLIC_BASE_URL=http://127.0.0.1:8123" in text and "--port 8123" in text, dry.stdout


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_sandbox_pay_takes_the_service_address(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    body = order(live, h, "wechat_native", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]).json()
    no = body["payment"]["out_trade_no"]
    # a refused notification is said plainly, not reported as a payment
    wrong = _pay(no, "--url", live.base_url, "--amount-fen", "1")
    assert wrong.returncode == 1 and "refused" in wrong.stdout, wrong.stdout + wrong.stderr
    assert get_order(live, h, body["order_no"])["status"] == "pending"


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_sandbox_pay_pays_and_says_so(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    body = order(live, h, "alipay_qr", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}]).json()
    paid = _pay(body["payment"]["out_trade_no"], "--url", live.base_url)
    assert paid.returncode == 0, paid.stdout + paid.stderr
    assert "taken" in paid.stdout
    assert get_order(live, h, body["order_no"])["status"] == "paid"
    unknown = _pay("NOSUCHTRADE", "--url", live.base_url)
    assert unknown.returncode == 1 and "has no trade NOSUCHTRADE" in unknown.stderr


def test_sandbox_pay_at_the_wrong_address_says_what_to_do() -> None:
    r = _pay("20201102000000ABCDEFG01", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "--url" in r.stderr and "Traceback" not in r.stderr, r.stderr
