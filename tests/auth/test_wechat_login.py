"""Mini-program login against a local fake of WeChat's API: one jscode2session per login,
no access_token, and every errcode mapped to a clear answer."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.runtime import Runtime
from tests.conftest import TEST_PII_KEY
from tests.contract_check import check_response
from tests.servers import ServedApp, free_port

APPID = "wx5a9e0c0d1e2f3a4b"
SECRET = "appsecret-0123456789abcdef0123456"
SESSION_KEY = "tiihtNczf5v6AKRyjwEUhQ=="
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
# js_code → what WeChat answers (errcodes from the code2Session documentation)
ANSWERS: dict[str, dict[str, object]] = {
    "bad-code": {"errcode": 40029, "errmsg": "invalid code, rid: 1"},
    "used-code": {"errcode": 40163, "errmsg": "code been used, rid: 2"},
    "risky-code": {"errcode": 40226, "errmsg": "code blocked"},
    "busy-code": {"errcode": -1, "errmsg": "system error"},
    "limit-code": {"errcode": 45011, "errmsg": "api minute-quota reach limit"},
    "secret-code": {"errcode": 40125, "errmsg": "invalid appsecret"},
    "no-openid-code": {"session_key": SESSION_KEY},
}


@dataclass
class FakeWechat:
    asked: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/sns/jscode2session")
        def jscode2session(request: Request) -> Response:
            params = dict(request.query_params)
            self.asked.append((request.url.path, params))
            code = params.get("js_code", "")
            if code == "slow-code":
                time.sleep(1.5)
            if code == "html-code":
                return Response("<html>502 Bad Gateway</html>", status_code=502,
                                media_type="text/html")
            answer = ANSWERS.get(code, {"openid": OPENID, "session_key": SESSION_KEY})
            # WeChat answers errors with HTTP 200 and a JSON body, as text/plain
            return Response(json.dumps(answer), media_type="text/plain")

        @app.get("/cgi-bin/token")
        def token(request: Request) -> dict[str, object]:
            self.asked.append((request.url.path, dict(request.query_params)))
            return {"access_token": "ACCESS_TOKEN", "expires_in": 7200}

        return app


def live_login_app(tmp_path: Path, api_base_url: str) -> tuple[TestClient, Runtime]:
    settings = Settings(
        data_dir=tmp_path, app_secret="test-secret-" + "x" * 32, pii_key=TEST_PII_KEY,
        payment_sandbox=False, run_worker_in_serve=False, wechat_appid=APPID,
        wechat_app_secret=SECRET, wechat_api_base_url=api_base_url,
        wechat_login_timeout_s=0.5,
        # live mode needs a way to verify WeChat Pay; the login never reads it
        wechat_public_key=str(tmp_path / "pub_key.pem"),
        wechat_public_key_id="PUB_KEY_ID_0119000001092020110200000000000001",
        # and live mode's other settings (the login never reads them either)
        public_base_url="https://collection.example.org", unionpay_mid="898340149000005",
        unionpay_tid="88880001",
        unionpay_msg_src="WWW.DISTRICT.GOV.CN", unionpay_msg_src_id="3194",
        unionpay_key="k" * 32, receipt_signing_key=str(tmp_path / "receipts.pem"))
    from backend.app import create_app
    from backend.config import new_ed25519_pem

    (tmp_path / "receipts.pem").write_text(new_ed25519_pem())
    rt = Runtime(settings)
    client = TestClient(create_app(runtime=rt))
    client.event_hooks["response"].append(check_response)   # every answer as documented
    return client, rt


@pytest.fixture
def fake() -> Iterator[tuple[FakeWechat, ServedApp]]:
    wechat = FakeWechat()
    served = ServedApp(wechat.app()).start()
    yield wechat, served
    served.stop()


@pytest.fixture
def login(tmp_path: Path, fake: tuple[FakeWechat, ServedApp]) -> Iterator[TestClient]:
    client, rt = live_login_app(tmp_path, fake[1].base_url)
    with client:
        yield client
    rt.close()


def test_a_login_is_one_jscode2session_call_and_no_access_token(
        login: TestClient, fake: tuple[FakeWechat, ServedApp]) -> None:
    wechat, _ = fake
    for n in (1, 2):
        r = login.post("/api/v1/auth/wechat", json={"code": f"good-code-{n}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["openid"] == OPENID
        assert "session_key" not in r.text and SESSION_KEY not in r.text
        claims = jwt.decode(body["access_token"], "test-secret-" + "x" * 32,
                            algorithms=["HS256"], options={"verify_iss": False})
        assert claims["sub"] == f"wx:{OPENID}"
    assert wechat.asked == [
        ("/sns/jscode2session", {"appid": APPID, "secret": SECRET, "js_code": f"good-code-{n}",
                                 "grant_type": "authorization_code"}) for n in (1, 2)]
    assert not [path for path, _ in wechat.asked if path == "/cgi-bin/token"]


@pytest.mark.parametrize("code, status, error", [
    ("bad-code", 401, "unauthorized"),
    ("used-code", 401, "unauthorized"),
    ("risky-code", 403, "wechat_login_blocked"),
    ("busy-code", 503, "wechat_unavailable"),
    ("limit-code", 503, "wechat_unavailable"),
    ("secret-code", 503, "wechat_unavailable"),
    ("no-openid-code", 503, "wechat_unavailable"),
    ("html-code", 503, "wechat_unavailable"),
    ("slow-code", 503, "wechat_unavailable"),
])
def test_wechat_refusals_and_trouble_are_clear_answers(
        login: TestClient, fake: tuple[FakeWechat, ServedApp], code: str, status: int,
        error: str) -> None:
    started = time.monotonic()
    r = login.post("/api/v1/auth/wechat", json={"code": code})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == error
    if status == 503:
        assert "try again" in r.json()["error"]["message"]
    if status == 401:
        assert "wx.login" in r.json()["error"]["message"]
    assert time.monotonic() - started < 1.4          # the timeout (0.5 s) held
    assert len(fake[0].asked) == 1


def test_unreachable_wechat_is_unavailable(tmp_path: Path) -> None:
    client, rt = live_login_app(tmp_path, f"http://127.0.0.1:{free_port()}")
    with client:
        r = client.post("/api/v1/auth/wechat", json={"code": "good-code"})
    rt.close()
    assert r.status_code == 503 and r.json()["error"]["code"] == "wechat_unavailable"


def test_neither_the_secret_nor_the_session_key_is_logged(
        login: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for code in ("good-code-logged", "busy-code", "secret-code"):
        login.post("/api/v1/auth/wechat", json={"code": code})
    assert "jscode2session" in caplog.text              # httpx did log the URL …
    assert "secret=***" in caplog.text                  # … with the secret masked
    for secret in (SECRET, SESSION_KEY, "good-code-logged"):
        assert secret not in caplog.text
