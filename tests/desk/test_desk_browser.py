"""The finance desk in a real browser (Debian's Chromium driven by Playwright).

One test, one browser, the issue's flow on the demo day 2020-11-02, paid through the
channel simulator (one WeChat payment whose notification never arrived: the channel has it,
we do not), the business clock then moved to 10:30 the next morning:

1. finance logs in (a wrong password is said so) and reads the ledger in yuan, overdue cash
   flagged; a forged POST is refused;
2. fetches the day's WeChat and Alipay statements from the simulator and reads the runs:
   the missing payment is a 我方漏单;
3. resolves it (the channel's side, with a reason) — the day cannot close while it waits —
   and asks for a refund of another order; a second finance user approves the resolution
   (the order becomes paid) and the refund (its requester could not);
4. the second user closes the day: who and when is shown;
5. on a phone (375 px) no page scrolls sideways, the town's progress charts included;
   auditors and town staff cannot act.

Screenshots are kept in test-artifacts/desk/.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backend.auth.service import create_staff_user
from backend.clock import BusinessClock
from backend.db import unit_of_work
from tests.conftest import Live, _unavailable
from tests.docs.test_docs_pages import CHROMIUM, CHROMIUM_ARGS, loopback_only
from tests.factories import OTHER_TOWN, OTHER_VILLAGE, TOWN, VILLAGE
from tests.orders.helpers import (
    get_order,
    order,
    pay,
    ref,
    resident_headers,
    seed,
    staff_headers,
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "desk"
PHONE = {"width": 375, "height": 740}
DAY = "2020-11-02"


def _money(live: Live, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """On 2020-11-02: a WeChat payment, an Alipay payment, and a WeChat payment the
    simulator took but whose notification never came; cash collected on 10-30, never
    remitted. Then the business clock moves to 10:30 on 11-03 (the statements are out)."""
    people = seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        for username, password, role, town in (
                ("fin", "finance-pass", "finance", None),
                ("fin2", "finance-pass2", "finance", None),
                ("aud", "auditor-pass", "auditor", None),
                ("town", "town-pass1", "town_staff", TOWN),
                ("town2", "town-pass2", "town_staff", OTHER_TOWN)):
            create_staff_user(s, username=username, password=password, role=role,
                              town_code=town)
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    wx = order(live, h, "wechat_native", [{"resident_ref": zhang, "insurance": "medical"}])
    pay(live, wx.json()["payment"]["out_trade_no"])
    ali = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, "李梅", people["李梅"]),
                                        "insurance": "medical"}]).json()
    pay(live, ali["payment"]["out_trade_no"])
    lost = order(live, h, "wechat_native", [{"resident_ref": zhang, "insurance": "pension",
                                             "tier_yuan": 300}]).json()
    pay(live, lost["payment"]["out_trade_no"], deliver=False)     # paid; we never heard
    assert get_order(live, h, lost["order_no"])["status"] == "pending"

    agent = staff_headers(live)
    wang = ref(live, agent, "王芳", people["王芳"])
    today = live.rt.clock
    monkeypatch.setattr(live.rt, "clock", BusinessClock(
        datetime.fromisoformat("2020-10-30T15:00:00+08:00")))
    cash = live.http.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "method": "cash", "receipt_no": "C-1",
        "items": [{"resident_ref": wang, "insurance": "pension", "tier_yuan": 300}]})
    assert cash.status_code == 201 and cash.json()["business_date"] == "2020-10-30", cash.text
    monkeypatch.setattr(live.rt, "clock", today)
    moved = live.http.post("/sandbox/clock", json={"to": "2020-11-03T10:30:00+08:00"})
    assert moved.status_code == 200, moved.text
    return {"resident": h, "lost": lost, "ali": ali}


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_the_finance_desk_in_a_browser(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    if not Path(CHROMIUM).exists():
        _unavailable("Debian's chromium (.ci/run installs it)", FileNotFoundError(CHROMIUM))
    world = _money(live, monkeypatch)
    lost_trade = world["lost"]["payment"]["out_trade_no"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = live.base_url
    outside: list[str] = []

    only_ours = loopback_only(outside)

    def login(page: Page, username: str, password: str) -> None:
        page.goto(base + "/desk/login")
        page.get_by_label("用户名").fill(username)
        page.get_by_label("密码").fill(password)
        page.get_by_role("button", name="登录").click()

    def logout(page: Page) -> None:
        page.get_by_role("button", name="退出登录").click()
        expect(page.get_by_role("status")).to_have_text("已退出登录。")

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def no_sideways_scroll(page: Page, what: str) -> None:
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"{what}: the page is {widths[0]} px wide on a " \
                                       f"{widths[1]} px screen"

    def notice(page: Page) -> Any:
        return page.locator("main > p.notice.ok[role=status]")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            desk = browser.new_context(viewport={"width": 1280, "height": 860})
            page = desk.new_page()
            page.route("**/*", only_ours)

            # 1. a wrong password, then finance logs in
            login(page, "fin", "not-the-password")
            expect(page.get_by_role("alert")).to_have_text("用户名或密码错误。")
            login(page, "fin", "finance-pass")
            expect(page.get_by_role("heading", level=1)).to_contain_text("2020年11月3日")
            expect(page.locator(".tile.warn").first).to_contain_text("300.00 元")  # overdue
            shot(page, "home")

            # the demo day's ledger: the payments in yuan (the lost one is not there)
            page.get_by_role("navigation").get_by_role("link", name="日报解台账").click()
            page.get_by_label("营业日").fill(DAY)
            page.get_by_role("button", name="查看").click()
            table = page.locator("#ledger-table")
            row = table.locator("tbody tr", has_text="微信支付")
            expect(row).to_contain_text("店子镇 东村")
            expect(row.locator("td.num").nth(1)).to_have_text("280.00")
            expect(table.locator("tfoot")).to_contain_text("560.00")
            shot(page, "ledger")
            page.get_by_label("营业日").fill("2020-10-30")
            page.get_by_role("button", name="查看").click()
            overdue = table.locator("tr.overdue")
            expect(overdue).to_contain_text("逾期未解缴")
            expect(overdue.locator("td.num").last).to_have_text("300.00")

            # a forged POST (the session cookie, not the form's token) is refused
            forged = page.request.post(base + "/desk/day-close", form={"date": DAY})
            assert forged.status == 403 and "表单校验失败" in forged.text()

            # 2. fetch the day's statements from the simulator: WeChat, then Alipay
            page.get_by_role("navigation").get_by_role("link", name="对账单").click()
            expect(page.get_by_role("heading", level=1)).to_contain_text("2020年11月2日")
            fetch = page.locator("form[action='/desk/statements/fetch']")
            expect(fetch.get_by_label("账单日期")).to_have_value(DAY)
            fetch.get_by_label("渠道").select_option("wechat")
            fetch.get_by_role("button", name="获取并对账").click()
            expect(notice(page)).to_contain_text("已从渠道获取对账单")
            expect(page.get_by_role("heading", level=1)).to_contain_text("微信支付")
            wechat_run = page.url.split("?")[0]
            totals = page.locator("#run-totals")
            expect(totals).to_contain_text("渠道账单收款580.00 元2 笔")
            expect(totals).to_contain_text("我方记录收款280.00 元1 笔")
            expect(totals).to_contain_text("手续费")
            found = page.locator("#discrepancies tbody tr")
            expect(found).to_have_count(1)
            expect(found).to_contain_text("我方漏单")
            expect(found).to_contain_text(lost_trade)
            expect(found).to_contain_text("300.00")
            expect(found).to_contain_text("待处理")
            shot(page, "run-wechat")

            page.goto(base + "/desk/statements")
            fetch.get_by_label("渠道").select_option("alipay")
            fetch.get_by_role("button", name="获取并对账").click()
            expect(page.get_by_role("heading", level=1)).to_contain_text("支付宝")
            expect(page.locator("main")).to_contain_text("没有差异")
            expect(page.locator("#run-totals")).to_contain_text("280.00 元1 笔")
            # the same statement again: the same run
            page.goto(base + "/desk/statements")
            fetch.get_by_label("渠道").select_option("wechat")
            fetch.get_by_role("button", name="获取并对账").click()
            assert page.url.split("?")[0] == wechat_run
            # the day's runs, listed on the statements page
            page.goto(base + "/desk/statements")
            expect(page.locator(".table-wrap tbody tr")).to_have_count(2)

            # 3. resolve: the channel is right; one person cannot also approve
            page.goto(wechat_run)
            found.get_by_label("以哪一方为准").select_option(label="以渠道为准")
            found.get_by_label("原因").fill("渠道已扣款，支付通知未送达")
            found.get_by_role("button", name="提交处理").click()
            expect(notice(page)).to_contain_text("等待另一位财务人员复核")
            expect(found).to_contain_text("待复核")
            expect(found).to_contain_text("以渠道为准：渠道已扣款，支付通知未送达（fin）")
            expect(found.get_by_role("button", name="复核通过")).to_have_count(0)
            # the day cannot close while it waits
            page.get_by_role("link", name=f"去日结 {DAY}").click()
            expect(page.locator("#open-discrepancies")).to_contain_text("1 条")
            expect(page.locator("#day-runs")).to_contain_text("微信支付")
            expect(page.locator("#day-runs")).to_contain_text("银联商务")
            page.get_by_role("button", name=f"确认日结 {DAY}").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("操作未完成")
            expect(page.locator("main")).to_contain_text("还有未处理完的对账差异")
            shot(page, "close-refused")

            # a refund asked for at the desk; its requester cannot approve it
            page.goto(base + "/desk/refunds")
            form = page.locator("#refund-request")
            form.get_by_label("订单号").fill(world["ali"]["order_no"])
            form.get_by_label("退款原因").fill("误缴")
            form.get_by_role("button", name="提交退款申请").click()
            expect(notice(page)).to_contain_text("退款申请已提交")
            mine = page.locator("#refunds tbody tr", has_text=world["ali"]["order_no"])
            expect(mine).to_contain_text("280.00")
            expect(mine).to_contain_text("须由另一位财务人员审批")
            expect(mine.get_by_role("button", name="批准退款")).to_have_count(0)
            logout(page)

            # the second finance user approves the resolution: the order is paid
            login(page, "fin2", "finance-pass2")
            page.get_by_role("navigation").get_by_role("link", name="对账结果").click()
            page.get_by_role("link", name="#" + wechat_run.rsplit("/", 1)[1], exact=True).click()
            found.get_by_role("button", name="复核通过").click()
            expect(notice(page)).to_contain_text("已复核")
            expect(found).to_contain_text("已解决")
            expect(found).to_contain_text("复核：fin2")
            assert get_order(live, world["resident"], world["lost"]["order_no"])["status"] \
                == "paid"
            shot(page, "run-resolved")

            # 4. and the refund
            page.get_by_role("navigation").get_by_role("link", name="退款审批").click()
            mine.get_by_role("button", name="批准退款").click()
            expect(notice(page)).to_contain_text("退款已审批")
            expect(page.locator("main")).to_contain_text("没有待审批的退款")
            page.get_by_role("link", name="全部").click()
            expect(mine).to_contain_text("已审批，待退款")
            expect(mine).to_contain_text("审批：fin2")
            shot(page, "refunds")

            # 5. close the day
            page.get_by_role("navigation").get_by_role("link", name="日结").click()
            expect(page.get_by_role("heading", level=1)).to_contain_text("2020年11月2日")
            expect(page.locator("#open-discrepancies")).to_contain_text("0 条")
            page.get_by_label("备注").fill("对账完毕")
            page.get_by_role("button", name=f"确认日结 {DAY}").click()
            expect(notice(page)).to_contain_text("已日结")
            expect(page.locator("#closed-note")).to_contain_text("fin2")
            expect(page.locator("#closed-note")).to_contain_text("对账完毕")
            expect(page.get_by_role("button", name=f"确认日结 {DAY}")).to_have_count(0)
            shot(page, "day-closed")
            # the closed day's declaration (申报文件) per town, for finance
            links = page.locator("#declarations").get_by_role("link")
            expect(links).to_have_count(2)
            with page.expect_download() as got:
                links.filter(has_text=f"店子镇（{TOWN}）").click()
            assert got.value.suggested_filename == f"declaration-{TOWN}-{DAY}.csv"
            declared = Path(got.value.path()).read_bytes()
            assert declared.startswith("\ufeff序号,类型,身份证号码".encode())
            assert "汇总,合计".encode() in declared
            # today is not over: said so before anyone tries
            page.goto(base + "/desk/day-close?date=2020-11-03")
            expect(page.locator("#close-day")).to_contain_text("还没有结束")

            # phones: finance's pages with their forms fit a 375 px screen
            phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            mobile = phone.new_page()
            mobile.route("**/*", only_ours)
            login(mobile, "fin", "finance-pass")
            for path in ("/desk/", "/desk/statements", wechat_run.removeprefix(base),
                         "/desk/reconciliation", "/desk/refunds?status=all",
                         f"/desk/day-close?date={DAY}", "/desk/day-close?date=2020-11-03"):
                mobile.goto(base + path)
                no_sideways_scroll(mobile, path)
            mobile.goto(wechat_run)
            shot(mobile, "phone-run")

            # auditors read everything and act on nothing
            phone.clear_cookies()
            login(mobile, "aud", "auditor-pass")
            mobile.goto(wechat_run)
            expect(mobile.locator("#discrepancies")).to_contain_text("已解决")
            mobile.goto(base + "/desk/refunds?status=all")
            expect(mobile.locator("main")).to_contain_text(world["ali"]["order_no"])
            for path in ("/desk/statements", "/desk/refunds", "/desk/day-close?date=2020-11-01",
                         wechat_run.removeprefix(base)):
                mobile.goto(base + path)
                no_sideways_scroll(mobile, path)
                expect(mobile.locator("main form[method=post]")).to_have_count(0)
            # no declaration for auditors: no link, and the file itself refused
            mobile.goto(base + f"/desk/day-close?date={DAY}")
            expect(mobile.locator("#closed-note")).to_be_visible()
            expect(mobile.locator("#declarations")).to_have_count(0)
            refused = mobile.request.get(base + f"/desk/declarations/{TOWN}/{DAY}.csv")
            assert refused.status == 403 and "身份证号码" not in refused.text()
            csrf = mobile.locator("input[name=csrf]").first.input_value()
            for action, form_data in (
                    ("/desk/refunds/request", {"order_no": world["ali"]["order_no"],
                                               "reason": "x"}),
                    ("/desk/day-close", {"date": "2020-11-01"}),
                    ("/desk/statements/fetch", {"channel": "wechat", "date": "2020-11-01"})):
                refused = mobile.request.post(base + action, form={"csrf": csrf, **form_data})
                assert refused.status == 403 and "无权操作" in refused.text(), action

            # town staff on a phone: their own town, no sideways scrolling
            phone.clear_cookies()
            login(mobile, "town", "town-pass1")
            expect(mobile.get_by_role("heading", level=1)).to_contain_text("首页")
            nav = mobile.get_by_role("navigation")
            # 首页, 日报解台账, 进度, 收据举报
            expect(nav.get_by_role("link")).to_have_count(4)
            no_sideways_scroll(mobile, "home")
            # the town's progress on a phone: server-drawn charts, no sideways scrolling
            mobile.goto(base + "/desk/progress?year=2021")
            expect(mobile.locator("#chart-medical svg")).to_contain_text("店子镇合计")
            expect(mobile.locator("#chart-money")).to_contain_text("860.00")   # 11-02, all paid
            no_sideways_scroll(mobile, "progress")
            mobile.screenshot(path=str(ARTIFACTS / "progress.png"), full_page=True)
            mobile.goto(base + f"/desk/ledger?date={DAY}")
            expect(mobile.locator("#ledger-table")).to_contain_text("280.00")
            expect(mobile.locator("main")).to_contain_text("乡镇：店子镇")
            no_sideways_scroll(mobile, "ledger")
            box = mobile.locator(".table-wrap").evaluate(
                "e => [e.scrollWidth, e.clientWidth]")
            assert box[0] >= box[1]
            mobile.screenshot(path=str(ARTIFACTS / "phone-ledger.png"), full_page=True)
            tap = mobile.get_by_role("button", name="查看").bounding_box()
            assert tap is not None and tap["height"] >= 44
            mobile.goto(base + f"/desk/ledger?town={OTHER_TOWN}")
            expect(mobile.get_by_role("heading", level=1)).to_have_text("无权查看")
            no_sideways_scroll(mobile, "refusal")
            for path in ("/desk/refunds", "/desk/day-close", wechat_run.removeprefix(base)):
                mobile.goto(base + path)
                expect(mobile.get_by_role("heading", level=1)).to_have_text("无权访问")
            # the other town's staff see none of this town's money
            phone.clear_cookies()
            login(mobile, "town2", "town-pass2")
            mobile.goto(base + f"/desk/ledger?date={DAY}")
            expect(mobile.locator("main")).to_contain_text("这一天没有收款")
            expect(mobile.locator("main")).not_to_contain_text("280.00")
            # the login page on a phone
            phone.clear_cookies()
            mobile.goto(base + "/desk/login")
            no_sideways_scroll(mobile, "login")
            mobile.screenshot(path=str(ARTIFACTS / "phone-login.png"), full_page=True)
        finally:
            browser.close()
    assert outside == [], f"the desk asked for things from outside: {outside}"


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_town_staff_close_a_receipt_report_in_a_browser(live: Live) -> None:
    """Residents report paper receipts in both towns; the town's staff, on a phone, read their
    town's open ones per village (the note masked) and close one with a reason; an auditor
    reads them without a close form."""
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        _unavailable("Debian's chromium (.ci/run installs it)", FileNotFoundError(CHROMIUM))
    seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="town", password="town-pass1", role="town_staff",
                          town_code=TOWN)
        create_staff_user(s, username="aud", password="auditor-pass", role="auditor")
    made = []
    for village, no, note in ((VILLAGE, "B-1", "代办员收现金，电话 13812345678"),
                              (VILLAGE, "B-2", None), (OTHER_VILLAGE, "B-3", None)):
        r = live.http.post("/r/report", json={
            "village_code": village, "paper_receipt_no": no, "amount_fen": 38000,
            "paid_on": "2020-11-01", "note": note})
        assert r.status_code == 201, r.text
        made.append(r.json()["report_no"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []

    only_ours = loopback_only(outside)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            page = phone.new_page()
            page.route("**/*", only_ours)
            page.goto(live.base_url + "/desk/login")
            page.get_by_label("用户名").fill("town")
            page.get_by_label("密码").fill("town-pass1")
            page.get_by_role("button", name="登录").click()
            page.get_by_role("link", name="收据举报").first.click()
            expect(page.locator("h1")).to_contain_text("店子镇")
            expect(page.locator(f"#village-{VILLAGE} tbody tr")).to_have_count(2)
            expect(page.locator(f"tr#{made[2]}")).to_have_count(0)     # another town's
            row = page.locator(f"tr#{made[0]}")
            expect(row.locator("td.note")).to_have_text("代办员收现金，电话 138****5678")
            widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], f"the page is {widths[0]} px wide on a phone"
            page.screenshot(path=str(ARTIFACTS / "receipt-reports.png"), full_page=True)
            row.get_by_label("关闭原因").fill("已与代办员核实：收据作废重开")
            row.get_by_role("button", name="关闭举报").click()
            expect(page.get_by_role("status")).to_contain_text("收据举报已关闭")
            expect(page.locator(f"tr#{made[0]}")).to_have_count(0)
            expect(page.locator(f"#village-{VILLAGE} tbody tr")).to_have_count(1)

            phone.clear_cookies()
            page.goto(live.base_url + "/desk/login")
            page.get_by_label("用户名").fill("aud")
            page.get_by_label("密码").fill("auditor-pass")
            page.get_by_role("button", name="登录").click()
            page.goto(live.base_url + "/desk/receipt-reports")
            expect(page.locator(f"tr#{made[1]}")).to_have_count(1)
            expect(page.locator(f"tr#{made[2]}")).to_have_count(1)
            expect(page.get_by_role("button", name="关闭举报")).to_have_count(0)
        finally:
            browser.close()
    assert outside == []
    r = live.http.get("/api/v1/receipt-reports", params={"status": "closed"},
                      headers=staff_headers(live, "aud", "auditor-pass"))
    assert [(i["report_no"], i["closed_by"], i["close_reason"]) for i in r.json()["reports"]] \
        == [(made[0], "town", "已与代办员核实：收据作废重开")]
