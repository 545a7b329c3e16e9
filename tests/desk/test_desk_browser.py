"""The finance desk in a real browser (Debian's Chromium driven by Playwright).

One test, one browser: finance logs in and reads the day's ledger in yuan, overdue cash is
flagged, a wrong password is said so, a forged POST is refused, town staff see their own
town only, logout ends the session, and a phone-sized screen shows every page without
sideways scrolling (only a wide table scrolls, inside its box). Screenshots are kept in
test-artifacts/desk/.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from backend.auth.service import create_staff_user
from backend.clock import BusinessClock
from backend.db import unit_of_work
from tests.conftest import Live, _unavailable
from tests.docs.test_docs_pages import CHROMIUM, CHROMIUM_ARGS
from tests.factories import OTHER_TOWN, TOWN
from tests.orders.helpers import order, pay, ref, resident_headers, seed, staff_headers

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "desk"
PHONE = {"width": 375, "height": 740}


def _money(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """A WeChat payment today (2020-11-02) and cash collected on 10-30, never remitted."""
    people = seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
        create_staff_user(s, username="town", password="town-pass1", role="town_staff",
                          town_code=TOWN)
        create_staff_user(s, username="town2", password="town-pass2", role="town_staff",
                          town_code=OTHER_TOWN)
    h = resident_headers(live)
    wx = order(live, h, "wechat_native", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                           "insurance": "medical"}]).json()
    pay(live, wx["payment"]["out_trade_no"])
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


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_the_finance_desk_in_a_browser(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import Page, Route, expect, sync_playwright

    if not Path(CHROMIUM).exists():
        _unavailable("Debian's chromium (.ci/run installs it)", FileNotFoundError(CHROMIUM))
    _money(live, monkeypatch)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = live.base_url
    outside: list[str] = []

    def only_ours(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:           # the desk needs nothing from outside (an intranet has no internet)
            outside.append(route.request.url)
            route.abort()

    def login(page: Page, username: str, password: str) -> None:
        page.goto(base + "/desk/login")
        page.get_by_label("用户名").fill(username)
        page.get_by_label("密码").fill(password)
        page.get_by_role("button", name="登录").click()

    def no_sideways_scroll(page: Page, what: str) -> None:
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"{what}: the page is {widths[0]} px wide on a " \
                                       f"{widths[1]} px screen"

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
            expect(page.get_by_role("heading", level=1)).to_contain_text("首页")
            expect(page.locator(".tile.warn")).to_contain_text("300.00 元")   # overdue cash
            page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)

            # 2. today's ledger: the WeChat payment in yuan
            page.get_by_role("navigation").get_by_role("link", name="日报解台账").click()
            table = page.locator("#ledger-table")
            row = table.locator("tbody tr", has_text="微信支付")
            expect(row).to_contain_text("店子镇 东村")
            expect(row.locator("td.num").nth(1)).to_have_text("280.00")
            expect(table.locator("tfoot")).to_contain_text("280.00")
            page.screenshot(path=str(ARTIFACTS / "ledger.png"), full_page=True)
            # the day the cash was collected: its row is flagged overdue
            page.get_by_label("营业日").fill("2020-10-30")
            page.get_by_role("button", name="查看").click()
            overdue = table.locator("tr.overdue")
            expect(overdue).to_contain_text("现金")
            expect(overdue).to_contain_text("逾期未解缴")
            expect(overdue.locator("td.num").last).to_have_text("300.00")

            # 3. a forged POST (the session cookie, not the form's token) is refused
            forged = page.request.post(base + "/desk/day-close", form={"date": "2020-11-01"})
            assert forged.status == 403 and "表单校验失败" in forged.text()
            page.goto(base + "/desk/day-close?date=2020-11-01")
            expect(page.locator("main")).to_contain_text("尚未开放")

            # 4. logout: the session is over
            page.get_by_role("button", name="退出登录").click()
            expect(page.get_by_role("status")).to_have_text("已退出登录。")
            page.goto(base + "/desk/ledger")
            expect(page).to_have_url(base + "/desk/login?m=login")

            # 5. town staff on a phone: their own town, no sideways scrolling
            phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            mobile = phone.new_page()
            mobile.route("**/*", only_ours)
            login(mobile, "town", "town-pass1")
            expect(mobile.get_by_role("heading", level=1)).to_contain_text("首页")
            nav = mobile.get_by_role("navigation")
            expect(nav.get_by_role("link")).to_have_count(2)   # 首页, 日报解台账
            no_sideways_scroll(mobile, "home")
            mobile.goto(base + "/desk/ledger?date=2020-11-02")
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
            # the other town's staff see none of this town's money
            phone.clear_cookies()
            login(mobile, "town2", "town-pass2")
            mobile.goto(base + "/desk/ledger?date=2020-11-02")
            expect(mobile.locator("main")).to_contain_text("这一天没有收款")
            expect(mobile.locator("main")).not_to_contain_text("280.00")
            mobile.goto(base + "/desk/refunds")
            expect(mobile.get_by_role("heading", level=1)).to_have_text("无权访问")
            # the login page on a phone
            phone.clear_cookies()
            mobile.goto(base + "/desk/login")
            no_sideways_scroll(mobile, "login")
            mobile.screenshot(path=str(ARTIFACTS / "phone-login.png"), full_page=True)
        finally:
            browser.close()
    assert outside == [], f"the desk asked for things from outside: {outside}"
