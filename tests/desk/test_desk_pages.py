"""The finance desk's pages without a browser: login, sessions, CSRF, roles, scopes, headers.

(tests/desk/test_desk_browser.py drives the same pages in Chromium.)
"""

from __future__ import annotations

import re
from datetime import date

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user, staff_principal
from backend.db import unit_of_work
from backend.desk.render import yuan
from backend.ledger.daily import daily_ledger
from backend.runtime import Runtime
from backend.security.tokens import issue_token
from tests.factories import OTHER_TOWN, TOWN, add_regions

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ALERT = re.compile(r'role="alert">([^<]*)<')


def test_yuan_is_exact_for_any_fen() -> None:
    assert [yuan(f) for f in (0, 1, 99, 100, 28000, -5, -12345, 123456789)] == [
        "0.00", "0.01", "0.99", "1.00", "280.00", "-0.05", "-123.45", "1,234,567.89"]
    assert yuan(None) == "—"


def _staff(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
        create_staff_user(s, username="aud", password="auditor-pass", role="auditor")
        create_staff_user(s, username="town", password="town-pass1", role="town_staff",
                          town_code=TOWN)
        create_staff_user(s, username="civil", password="civil-pass", role="department",
                          department="civil_affairs")


def _login(client: TestClient, username: str, password: str) -> tuple[int, str]:
    client.cookies.clear()
    form = client.get("/desk/login")
    token = CSRF.search(form.text)
    assert token, form.text
    r = client.post("/desk/login", data={"username": username, "password": password,
                                         "csrf": token.group(1)}, follow_redirects=False)
    return r.status_code, r.text


def _csrf(client: TestClient, path: str = "/desk/") -> str:
    match = CSRF.search(client.get(path).text)
    assert match
    return match.group(1)


def test_desk_login_roles_csrf_scopes_and_headers(client: TestClient, rt: Runtime) -> None:
    _staff(rt)
    # no session: back to the login page, saying why
    r = client.get("/desk/ledger", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/desk/login?m=login")
    page = client.get("/desk/login")
    assert page.status_code == 200 and "工作人员登录" in page.text
    assert 'name="viewport"' in page.text
    headers = page.headers
    assert headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in headers[
        "content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]   # default-src 'none'
    assert headers["cache-control"] == "no-store"
    assert "<script" not in page.text
    css = client.get("/desk/static/desk.css")
    assert css.status_code == 200 and "table-wrap" in css.text

    # a login form posted without its token (from another site) is refused
    client.cookies.clear()
    r = client.post("/desk/login", data={"username": "fin", "password": "finance-pass"})
    assert r.status_code == 403 and "请求已被拒绝" in r.text
    # a wrong password and an unknown user get the same answer
    for username in ("fin", "nobody"):
        status, text = _login(client, username, "wrong-password")
        assert status == 401 and ALERT.search(text).group(1) == "用户名或密码错误。"
    # a department user has the right password and the wrong role
    status, text = _login(client, "civil", "civil-pass")
    assert status == 403 and "不能使用财务工作台" in text
    assert "desk_session" not in client.cookies

    client.cookies.clear()
    form = client.get("/desk/login")
    r = client.post("/desk/login", follow_redirects=False, data={
        "username": "fin", "password": "finance-pass", "csrf": CSRF.search(form.text).group(1)})
    assert (r.status_code, r.headers["location"]) == (303, "/desk/")
    cookie = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith("desk_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/desk" in cookie
    assert "Secure" not in cookie    # PUBLIC_BASE_URL is http here
    home = client.get("/desk/")
    assert home.status_code == 200
    for label in ("日报解台账", "对账单", "对账结果", "退款审批", "日结", "fin（财务）"):
        assert label in home.text
    assert client.get("/desk/login", follow_redirects=False).headers["location"] == "/desk/"

    # pages whose services are not wired yet say so; their actions write nothing
    for path in ("/desk/statements", "/desk/reconciliation", "/desk/reconciliation/1",
                 "/desk/refunds", "/desk/day-close?date=2020-11-01"):
        r = client.get(path)
        assert r.status_code == 200 and "尚未开放" in r.text, path
    token = _csrf(client)
    r = client.post("/desk/refunds/1/approve", data={"csrf": token})
    assert r.status_code == 503 and "功能尚未开放" in r.text
    r = client.post("/desk/statements/upload", data={"csrf": token, "channel": "wechat",
                                                     "date": "2020-11-01"},
                    files={"file": ("bill.csv", b"a,b\n", "text/csv")})
    assert r.status_code == 503
    r = client.post("/desk/statements/upload", data={"csrf": token, "channel": "paypal",
                                                     "date": "2020-11-01"},
                    files={"file": ("bill.csv", b"a,b\n", "text/csv")})
    assert r.status_code == 422 and "渠道不对" in r.text
    r = client.post("/desk/statements/upload", data={"csrf": token, "channel": "alipay",
                                                     "date": "2020-11-01"},
                    files={"file": ("bill.zip", b"", "application/zip")})
    assert r.status_code == 422 and "请选择文件" in r.text
    # a forged POST: the session cookie without the form's token
    for data in ({}, {"csrf": "0" * 64}, {"csrf": token[:-1] + "x"}):
        r = client.post("/desk/refunds/1/approve", data=data)
        assert r.status_code == 403 and "表单校验失败" in r.text
    r = client.post("/desk/discrepancies/1/resolve", data={"csrf": token, "side": "local"})
    assert r.status_code == 422 and "请填写原因" in r.text
    assert "退款审批" in r.text     # the refusal page keeps the menu of who is logged in
    # bad input is a page naming what was wrong, not JSON
    r = client.get("/desk/ledger?date=2020-13-45")
    assert r.status_code == 422 and "日期格式不对" in r.text
    r = client.get("/desk/reconciliation/abc")
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert client.get("/desk/nothing-here").status_code == 404
    # the API's errors stay JSON (and the desk's cookie is no API login)
    assert client.get("/api/v1/ledger/daily?date=x").json()["error"]["code"] == "unauthorized"

    # town staff: their own town's ledger only, no district pages
    assert _login(client, "town", "town-pass1")[0] == 303
    home = client.get("/desk/")
    assert "退款审批" not in home.text and "日报解台账" in home.text
    assert client.get(f"/desk/ledger?town={TOWN}").status_code == 200
    r = client.get(f"/desk/ledger?town={OTHER_TOWN}")
    assert r.status_code == 403 and "本镇" in r.text
    for path in ("/desk/refunds", "/desk/statements", "/desk/day-close"):
        assert client.get(path).status_code == 403, path
    # an auditor sees the district's pages and may not act
    assert _login(client, "aud", "auditor-pass")[0] == 303
    assert "只有财务人员" in client.get("/desk/statements").text
    r = client.post("/desk/day-close", data={"csrf": _csrf(client), "date": "2020-11-01"})
    assert r.status_code == 403 and "无权操作" in r.text

    # logout (a POST with the token), then the old pages send back to the login
    r = client.post("/desk/logout", data={"csrf": _csrf(client)}, follow_redirects=False)
    assert r.headers["location"] == "/desk/login?m=logout"
    assert "已退出登录" in client.get("/desk/login?m=logout").text
    assert client.get("/desk/", follow_redirects=False).headers["location"] == \
        "/desk/login?m=login"
    # an expired session says so
    with unit_of_work(rt.sessions) as s:
        from sqlalchemy import select

        from backend.auth.models import StaffUser
        fin = s.scalar(select(StaffUser).where(StaffUser.username == "fin"))
        assert fin is not None
        expired = issue_token(rt.app_secret, staff_principal(fin), -10)
    client.cookies.set("desk_session", expired, path="/desk")
    r = client.get("/desk/ledger", follow_redirects=False)
    assert r.headers["location"] == "/desk/login?m=expired"
    assert "登录已过期" in client.get(r.headers["location"]).text


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_the_session_cookie_is_secure_behind_https(rt: Runtime) -> None:
    from fastapi.responses import Response

    from backend.desk.session import set_session

    https = Runtime(rt.settings.model_copy(update={
        "public_base_url": "https://collect.example.gov.cn"}))
    response = Response()
    set_session(response, https, "token")
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    with unit_of_work(rt.sessions) as s:     # the API's computation, the desk's too
        assert daily_ledger(s, date(2020, 11, 2), today=date(2020, 11, 2)).rows == []


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_the_pages_show_what_the_services_answer(client: TestClient, rt: Runtime,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The templates with data in them, through stand-ins for the services' answers (what
    backend/desk/services.py is to translate the services' answers into)."""
    from datetime import datetime

    from backend.desk import services as sv

    day = date(2020, 11, 1)
    at = datetime.fromisoformat("2020-11-02T10:30:00+08:00")
    run = sv.RunSummary(run_id=7, date=day, channel="wechat", matched=9998, discrepancies=2,
                        open_discrepancies=1, created_at=at, file_sha256="ab" * 32)
    found = [sv.Discrepancy(id=1, kind="missing_locally", out_trade_no="W1", status="open",
                            channel_amount_fen=28000),
             sv.Discrepancy(id=2, kind="amount_mismatch", out_trade_no="W2", status="resolved",
                            local_amount_fen=30000, channel_amount_fen=29999, side="channel",
                            reason="渠道少收一分", resolved_by="finance")]
    refunds = [sv.RefundView(id=3, order_no="20201102000001", amount_fen=28000,
                             channel="alipay", status="requested", reason="重复缴费",
                             requested_at=at, requested_by="finance")]
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(sv, "list_runs", lambda *a, **k: [run])
    monkeypatch.setattr(sv, "get_run", lambda *a, **k: sv.RunDetail(
        run, found, {"amount_fen": 279_944_000, "fee_fen": 559_888}))
    monkeypatch.setattr(sv, "list_refunds", lambda *a, **k: refunds)
    monkeypatch.setattr(sv, "day_close_state", lambda s, rt, p, d: sv.DayCloseState(
        date=d, closed=d < day, open_discrepancies=1, closed_at=at, closed_by="finance2"))
    monkeypatch.setattr(sv, "approve_refund", lambda s, rt, p, i: calls.append(("refund", i)))
    monkeypatch.setattr(sv, "resolve_discrepancy",
                        lambda s, rt, p, i, side, reason: calls.append(("resolve", side)))
    monkeypatch.setattr(sv, "upload_statement", lambda s, rt, p, **k: calls.append(
        ("upload", k["stream"].read())) or 7)
    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    assert _login(client, "fin", "finance-pass")[0] == 303

    home = client.get("/desk/").text
    assert "1 笔" in home and "1 条" in home and "未日结" in home
    page = client.get("/desk/reconciliation").text
    assert "#7" in page and "9998" in page and "微信支付" in page
    page = client.get("/desk/reconciliation/7").text
    for text in ("2,799,440.00", "5,598.88", "本地缺失", "280.00", "以渠道为准：渠道少收一分",
                 "复核通过", "提交处理", "ab" * 32):
        assert text in page, text
    page = client.get("/desk/refunds").text
    assert "20201102000001" in page and "批准退款" in page and "驳回" in page
    assert "已日结" in client.get("/desk/day-close?date=2020-10-31").text
    assert "确认日结 2020-11-01" in client.get("/desk/day-close?date=2020-11-01").text
    assert "对账批次" in client.get("/desk/statements?date=2020-11-01").text

    token = _csrf(client)
    r = client.post("/desk/refunds/3/approve", data={"csrf": token}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/desk/refunds?done=refund_approved")
    assert "退款已审批" in client.get(r.headers["location"]).text
    r = client.post("/desk/discrepancies/1/resolve", follow_redirects=False, data={
        "csrf": token, "side": "local", "reason": "我方有收款记录", "run": "7"})
    assert r.headers["location"] == "/desk/reconciliation/7?done=resolved"
    r = client.post("/desk/statements/upload", follow_redirects=False,
                    data={"csrf": token, "channel": "wechat", "date": "2020-11-01"},
                    files={"file": ("bill.csv", b"`a,`b\n", "text/csv")})
    assert r.headers["location"] == "/desk/reconciliation/7?done=uploaded"
    assert calls == [("refund", 3), ("resolve", "local"), ("upload", b"`a,`b\n")]
