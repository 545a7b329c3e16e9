"""The finance desk's pages without a browser: login, sessions, CSRF, roles, scopes, headers.

(tests/desk/test_desk_browser.py drives the same pages in Chromium.)
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_staff_user, staff_principal
from backend.db import unit_of_work
from backend.desk.render import yuan
from backend.ledger.daily import daily_ledger
from backend.runtime import Runtime
from backend.security.tokens import issue_token
from tests.factories import OTHER_TOWN, TOWN, VILLAGE, add_regions

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

    # the district's pages with nothing in them yet; what is not there is said so
    for path, text in (("/desk/statements", "这一天还没有对账"),
                       ("/desk/reconciliation", "还没有对账批次"),
                       ("/desk/refunds", "没有待审批的退款"),
                       ("/desk/day-close?date=2020-11-01", "确认日结 2020-11-01")):
        r = client.get(path)
        assert r.status_code == 200 and text in r.text and "尚未开放" not in r.text, path
    r = client.get("/desk/reconciliation/1")
    assert r.status_code == 404 and "找不到对账批次" in r.text
    token = _csrf(client)
    r = client.post("/desk/refunds/1/approve", data={"csrf": token})
    assert r.status_code == 404 and "找不到要操作的记录" in r.text
    r = client.post("/desk/statements/upload", data={"csrf": token, "channel": "wechat",
                                                     "date": "2020-11-01"},
                    files={"file": ("bill.csv", b"a,b\n", "text/csv")})
    assert r.status_code == 422 and "未导入任何内容" in r.text
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


def _bill(rt: Runtime, day: date, paid: list[int]) -> bytes:
    """The WeChat trade bill of ``day`` with trades ``paid`` (as the simulator writes it)."""
    import io

    from payment_adapters.sandbox.statements import BillRow, write_wechat_bill
    from tests.reconciliation.world import at, trade, txn

    out = io.BytesIO()
    write_wechat_bill(out, [BillRow(kind="payment", at=at(day, 9, i), out_trade_no=trade(i),
                                    transaction_id=txn(i), amount_fen=38_000) for i in paid],
                      fee_rate=rt.settings.fee_rate("wechat"))
    return out.getvalue()


def test_statements_resolution_refunds_and_close_through_the_pages(client: TestClient,
                                                                   rt: Runtime) -> None:
    """The real services behind the pages (both databases): a WeChat bill uploaded; a
    payment the channel took and we did not record, resolved by one user and approved by
    another; a refund asked, refused to its requester, rejected by another; the day closed
    in the page's unit of work. Refusals answer as pages saying why, and change nothing."""
    from sqlalchemy import select

    from backend.orders.models import Order
    from tests.reconciliation.world import build_world, trade

    day = date(2020, 11, 1)
    with unit_of_work(rt.sessions) as s:
        build_world(s, day, 3, unpaid=[3])
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
        create_staff_user(s, username="fin2", password="finance-pass2", role="finance")
    bill = _bill(rt, day, [1, 2, 3])

    def post(path: str, **data: str) -> tuple[int, str, str]:
        r = client.post(path, data={"csrf": _csrf(client), **data}, follow_redirects=False)
        return r.status_code, r.headers.get("location", ""), r.text

    assert _login(client, "fin", "finance-pass")[0] == 303
    bad = client.post("/desk/statements/upload", follow_redirects=False, data={
        "csrf": _csrf(client), "channel": "wechat", "date": day.isoformat()},
        files={"file": ("bill.csv", bill.replace(b"380.00", b"38x.00", 1), "text/csv")})
    assert bad.status_code == 422 and "对账单文件无法识别" in bad.text, bad.text
    r = client.post("/desk/statements/upload", follow_redirects=False, data={
        "csrf": _csrf(client), "channel": "wechat", "date": day.isoformat()},
        files={"file": ("bill.csv", bill, "text/csv")})
    assert r.status_code == 303, r.text
    run_page = r.headers["location"].split("?")[0]
    assert run_page.startswith("/desk/reconciliation/")
    page = client.get(r.headers["location"]).text
    for text in ("对账单已上传", "微信支付", "1,140.00 元", "760.00 元", "我方漏单", trade(3),
                 "待处理", "提交处理", "bill.csv"):
        assert text in page, text
    d_id = re.search(r'/desk/discrepancies/(\d+)/resolve', page)
    assert d_id
    resolve, approve = (f"/desk/discrepancies/{d_id.group(1)}/{a}" for a in ("resolve",
                                                                           "approve"))
    assert "对账批次" in client.get(f"/desk/statements?date={day}").text

    status, _, text = post(resolve, side="channel", reason="  ", run=run_page.rsplit("/")[-1])
    assert status == 422 and "请填写原因" in text
    status, where, _ = post(resolve, side="channel", reason="渠道已扣款",
                            run=run_page.rsplit("/")[-1])
    assert (status, where) == (303, f"{run_page}?done=resolved")
    page = client.get(run_page).text
    assert "待复核" in page and "/approve" not in page and "另一位财务人员复核" in page
    status, _, text = post(approve)
    assert status == 403 and "须由另一位财务人员操作" in text
    closing = post("/desk/day-close", date=day.isoformat())
    assert closing[0] == 409 and "未处理完的对账差异" in closing[2]

    # refunds: asked by fin, refused to fin, rejected by fin2
    status, where, _ = post("/desk/refunds/request", order_no="O000000001", reason="误缴")
    assert (status, where) == (303, "/desk/refunds?done=refund_requested")
    page = client.get("/desk/refunds").text
    assert "O000000001" in page and "380.00" in page and "批准退款" not in page
    refund_id = re.search(r'id="r(\d+)"', page)
    assert refund_id
    assert post(f"/desk/refunds/{refund_id.group(1)}/approve")[0] == 403
    again = post("/desk/refunds/request", order_no="O000000001", reason="误缴")
    assert again[0] == 409 and "超过了可退金额" in again[2]
    assert post("/desk/refunds/request", order_no="O000000002", reason="x" * 81)[0] == 422

    assert _login(client, "fin2", "finance-pass2")[0] == 303
    assert "/approve" in client.get(run_page).text
    status, where, _ = post(approve, run=run_page.rsplit("/")[-1])
    assert (status, where) == (303, f"{run_page}?done=approved")
    assert "已解决" in client.get(run_page).text
    with rt.sessions() as s:
        assert s.scalar(select(Order.status).where(Order.order_no == "O000000003")) == "paid"
    assert post(f"/desk/refunds/{refund_id.group(1)}/reject", reason="")[0] == 422
    status, where, _ = post(f"/desk/refunds/{refund_id.group(1)}/reject", reason="核实无误")
    assert where == "/desk/refunds?done=refund_rejected"
    assert "已驳回" in client.get("/desk/refunds?status=all").text

    today = post("/desk/day-close", date="2020-11-02")
    assert today[0] == 409 and "还没有结束" in today[2]
    status, where, _ = post("/desk/day-close", date=day.isoformat(), note="对账完毕")
    assert (status, where) == (303, f"/desk/day-close?date={day}&done=closed")
    page = client.get(where).text
    assert "已日结：fin2" in page and "对账完毕" in page and "确认日结" not in page
    twice = post("/desk/day-close", date=day.isoformat())
    assert twice[0] == 409 and "已经日结" in twice[2]
    home = client.get("/desk/").text
    assert "已日结" not in home or "昨日日结" in home


def test_progress_page_charts_behind_villages_money_and_scopes(client: TestClient,
                                                               rt: Runtime) -> None:
    """The 进度 page over the progress service's small district (tests/progress): rates per
    town, then per village of one town, behind ones red; the villages furthest behind first;
    money per day from the daily ledger; town staff scoped to their town; auditors read."""
    from backend.ledger.models import COLLECTED
    from backend.ledger.service import Leg, contributions, post_entry, town_collection
    from tests.progress.test_progress import EMPTY, SOUTH, _seed

    _seed(rt)          # users finance / auditor / town_staff / agent, password "password-1"
    today = rt.clock.today()
    with unit_of_work(rt.sessions) as s:   # 380.25 yuan collected yesterday in 东村
        post_entry(s, kind="payment", reason="test", business_date=today - timedelta(days=1),
                   occurred_at=rt.clock.now(), legs=[
                       Leg(town_collection(TOWN), 38_025, VILLAGE, TOWN, "cash", COLLECTED),
                       Leg(contributions("medical", 2021), -38_025)])

    assert _login(client, "finance", "password-1")[0] == 303
    assert 'href="/desk/progress"' in client.get("/desk/").text
    r = client.get("/desk/progress?year=2021")
    assert r.status_code == 200, r.text
    page = r.text
    assert "<script" not in page and "style=" not in page
    for text in ("征缴进度", "2021年度", "全区", "医疗保险 缴费率", "养老保险 45–59 岁 缴费率",
                 "养老保险 16–44 岁 缴费率", "目标 100%", "目标 95%", "目标 60%",
                 "60.00%", "66.66%", "无参保对象", "每日收款", "380.25", "合计 380.25 元",
                 'viewBox="0 0 360'):
        assert text in page, text
    assert page.count("<svg") == 4 and 'width="100%"' in page
    # district: one bar per town; the medical chart's 店子镇 (5 of 9) is behind, red
    medical = page.split('id="chart-medical"')[1].split("</figure>")[0]
    assert medical.count('class="bar-row') == 3
    assert "店子镇：参保对象 9 人，已缴 5 人，缴费率 55.55%，目标 100.00%，未达标，还差 4 人" \
        in medical
    assert 'fill="#c62828"' in medical and 'class="bar-row behind"' in medical
    # the villages furthest behind first, over the towns: 南村 (60 %), 东村 (57.15 %), …
    table = page.split('id="behind-villages"')[1].split("</table>")[0]
    names = re.findall(r"<td>([^<]+)</td><td>", table)
    assert names[:2] == ["南村", "东村"] and "空村" in names, names
    assert table.index("57.15%") > table.index("60.00%")
    # the daily money: 14 days ending today, yesterday's 380.25 yuan
    money = page.split('id="chart-money"')[1].split("</figure>")[0]
    assert money.count('class="bar-row') == 14
    yesterday = today - timedelta(days=1)
    assert f"{yesterday.month}月{yesterday.day}日 收款 380.25 元" in money
    assert f"{today.month}月{today.day}日 收款 0.00 元" in money

    # one town: its villages' bars, the town's own row first
    one = client.get(f"/desk/progress?year=2021&town={TOWN}").text
    medical = one.split('id="chart-medical"')[1].split("</figure>")[0]
    labels = re.findall(r'class="label"[^>]*>([^<]+)<', medical)
    assert labels == ["店子镇合计", "南村", "东村"], labels
    assert "380.25" in one
    assert "380.25" not in client.get(f"/desk/progress?year=2021&town={OTHER_TOWN}").text
    for path, status, text in (("/desk/progress?year=2020", 422, "没有本区的征缴政策"),
                               ("/desk/progress?year=20x1", 422, "年度应为四位数字"),
                               ("/desk/progress?year=2021&town=999", 404, "找不到乡镇"),
                               ("/desk/progress?town=a%20b", 422, "乡镇代码")):
        r = client.get(path)
        assert r.status_code == status and text in r.text, path
    assert "2021年度" in client.get("/desk/progress").text     # the policy's year

    # town staff: their own town only
    assert _login(client, "town_staff", "password-1")[0] == 303
    own = client.get("/desk/progress?year=2021")
    assert own.status_code == 200 and "乡镇：店子镇" in own.text and "南村" in own.text
    assert EMPTY not in own.text and "空村" not in own.text
    r = client.get(f"/desk/progress?year=2021&town={OTHER_TOWN}")
    assert r.status_code == 403 and "本镇的进度" in r.text
    # an auditor reads the district
    assert _login(client, "auditor", "password-1")[0] == 303
    r = client.get(f"/desk/progress?year=2021&town={OTHER_TOWN}")
    assert r.status_code == 200 and "空村" in r.text and SOUTH not in r.text


def test_receipt_reports_page_scopes_roles_and_refusals(client: TestClient,
                                                        rt: Runtime) -> None:
    """The open reports per village: town staff their town's, auditors without a close
    form; a close needs the form's token, a reason and a role that acts; a second close is
    refused saying why."""
    from tests.factories import OTHER_VILLAGE

    _staff(rt)
    made = []
    for village, no in ((VILLAGE, "D-1"), (OTHER_VILLAGE, "D-2")):
        r = client.post("/r/report", json={"village_code": village, "paper_receipt_no": no,
                                           "amount_fen": 38000, "paid_on": "2020-11-01",
                                           "note": "身份证 370406199001011234"})
        assert r.status_code == 201, r.text
        made.append(r.json()["report_no"])
    assert _login(client, "town", "town-pass1")[0] == 303
    page = client.get("/desk/receipt-reports")
    assert page.status_code == 200, page.text
    assert made[0] in page.text and made[1] not in page.text
    assert "370406********1234" in page.text and "370406199001011234" not in page.text
    assert "关闭举报" in page.text
    r = client.get(f"/desk/receipt-reports?town={OTHER_TOWN}")
    assert r.status_code == 403 and "本镇" in r.text
    token = _csrf(client, "/desk/receipt-reports")
    close = f"/desk/receipt-reports/{made[0]}/close"
    r = client.post(close, data={"reason": "重复"})
    assert r.status_code == 403 and "表单校验失败" in r.text
    r = client.post(close, data={"csrf": token, "reason": "  "})
    assert r.status_code == 422 and "请填写原因" in r.text
    r = client.post(f"/desk/receipt-reports/{made[1]}/close",
                    data={"csrf": token, "reason": "重复"})
    assert r.status_code == 403, r.text            # another town's
    r = client.post(close, data={"csrf": token, "reason": "重复"}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (
        303, "/desk/receipt-reports?done=report_closed")
    after = client.get(r.headers["location"]).text
    assert "收据举报已关闭" in after and made[0] not in after and "没有待处理的收据举报" in after
    r = client.post(close, data={"csrf": token, "reason": "重复"})
    assert r.status_code == 409 and "已不是待处理状态" in r.text

    assert _login(client, "aud", "auditor-pass")[0] == 303
    page = client.get("/desk/receipt-reports")
    assert made[1] in page.text and "关闭举报" not in page.text
    token = _csrf(client, "/desk/receipt-reports")
    r = client.post(f"/desk/receipt-reports/{made[1]}/close",
                    data={"csrf": token, "reason": "重复"})
    assert r.status_code == 403 and "审计只查看" in r.text
