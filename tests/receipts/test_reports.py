"""Residents' reports of paper receipts (``/r/report``), on both databases: an unknown one
and one with another amount recorded and audited, a known one with that amount not; bad
input refused naming the field with nothing written; the limit per address holding across
two apps that share Redis; a later collection matching an open report; progress counting
them per village; the form, and the desk's column in a browser."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlmodel import col

from backend.audit.models import AuditEvent
from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.receipts.report_models import NOTE_KIND, ReceiptReport
from backend.runtime import Runtime
from tests.agents.test_agent_money import collect
from tests.conftest import Live, _unavailable
from tests.contract_check import check_response
from tests.factories import OTHER_VILLAGE, TOWN, VILLAGE
from tests.orders.helpers import ref, seed, staff_headers

TODAY = date(2020, 11, 2)          # the business clock of the tests (IN_WINDOW)
MEDICAL_FEN = 28000                # 2021's medical contribution: what a collection records


def body(**change: Any) -> dict[str, Any]:
    report = {"village_code": VILLAGE, "paper_receipt_no": "SJ-0001", "amount_fen": 38000,
              "paid_on": "2020-11-01", "note": "代办员王某收的现金"}
    return {k: v for k, v in (report | change).items() if v is not ...}


def app_client(rt: Runtime, address: str = "10.1.2.3") -> TestClient:
    from backend.app import create_app

    c = TestClient(create_app(runtime=rt), client=(address, 40000))
    c.event_hooks["response"].append(check_response)
    return c


@pytest.fixture
def world(rt: Runtime) -> Iterator[SimpleNamespace]:
    """The seeded village (an agent, three residents), an auditor and finance; a client from
    one address, and the agent's headers."""
    people = seed(rt)
    with unit_of_work(rt.sessions) as s:
        create_staff_user(s, username="aud", password="auditor-pass", role="auditor")
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    with app_client(rt) as c:
        w = SimpleNamespace(rt=rt, http=c, people=people)
        w.agent = staff_headers(w)            # type: ignore[arg-type]
        yield w


def reports(rt: Runtime) -> list[ReceiptReport]:
    with unit_of_work(rt.sessions) as s:
        rows = list(s.scalars(select(ReceiptReport).order_by(col(ReceiptReport.id))).all())
        s.expunge_all()
        return rows


def note(rt: Runtime, row: ReceiptReport) -> str | None:
    """The note as kept (encrypted), decrypted with the PII key."""
    if row.note_encrypted is None:
        return None
    return rt.pii.decrypt(row.note_encrypted, NOTE_KIND)


def audit_events(w: SimpleNamespace, action: str) -> list[dict[str, Any]]:
    r = w.http.get("/api/v1/audit", headers=staff_headers(w, "aud", "auditor-pass"),
                   params={"from": TODAY.isoformat(), "to": TODAY.isoformat(), "limit": 500})
    assert r.status_code == 200, r.text
    return [e for e in r.json()["events"] if e["action"] == action]


def counted(kind: str) -> float:
    return REGISTRY.get_sample_value("collect_receipt_reports_total", {"kind": kind}) or 0.0


def take_cash(w: SimpleNamespace, receipt_no: str, name: str = "张三") -> dict[str, Any]:
    items = [{"resident_ref": ref(w, w.agent, name, w.people[name]), "insurance": "medical"}]
    r = collect(w, w.agent, items, receipt_no)
    assert r.status_code == 201, r.text   # type: ignore[attr-defined]
    return dict(r.json())                 # type: ignore[attr-defined]


# --------------------------------------------------------------------------- outcomes
def test_an_unknown_paper_receipt_is_recorded_and_audited(world: SimpleNamespace) -> None:
    before = counted("unknown_receipt")
    r = world.http.post("/r/report", json=body())
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer.pop("reported_at").startswith("2020-11-02T09:")
    assert answer == {
        "recorded": True, "report_no": answer["report_no"], "kind": "unknown_receipt",
        "status": "open", "known": False, "matches": False, "repeat": False,
        "village_code": VILLAGE, "village_name": "东村", "paper_receipt_no": "SJ-0001",
        "amount_fen": 38000, "paid_on": "2020-11-01"}
    assert answer["report_no"].startswith("J20201102") and len(answer["report_no"]) == 17
    [row] = reports(world.rt)
    assert (row.report_no, row.town_code, row.kind, row.status) == (
        answer["report_no"], TOWN, "unknown_receipt", "open")
    assert note(world.rt, row) == "代办员王某收的现金"
    # the reporter's address only as a keyed hash
    assert row.client_hash == world.rt.pii.hash("10.1.2.3", kind="report-ip")
    assert "10.1.2.3" not in row.client_hash and len(row.client_hash) == 64
    [event] = audit_events(world, "receipt_report.record")
    assert (event["actor"], event["actor_role"], event["subject_id"]) == (
        "public", "public", answer["report_no"])
    assert event["details"] == {"village_code": VILLAGE, "town_code": TOWN,
                                "kind": "unknown_receipt", "paper_receipt_no": "SJ-0001",
                                "amount_fen": 38000, "paid_on": "2020-11-01",
                                "collection_id": None}
    assert counted("unknown_receipt") == before + 1

    # the same report again while it is open: the first one, nothing new
    again = world.http.post("/r/report", json=body(note="又交一次"))
    assert again.status_code == 201 and again.json()["repeat"] is True
    assert again.json()["report_no"] == answer["report_no"]
    assert len(reports(world.rt)) == 1
    assert len(audit_events(world, "receipt_report.record")) == 1


def test_a_receipt_recorded_with_another_amount_is_reported(world: SimpleNamespace) -> None:
    collection = take_cash(world, "SJ-0007")
    assert collection["amount_fen"] == MEDICAL_FEN
    r = world.http.post("/r/report", json=body(paper_receipt_no="SJ-0007", amount_fen=38000))
    assert r.status_code == 201, r.text
    answer = r.json()
    assert (answer["kind"], answer["status"], answer["known"], answer["matches"]) == (
        "amount_differs", "open", True, False)
    assert str(MEDICAL_FEN) not in r.text      # what the agent recorded is not told
    [row] = reports(world.rt)
    assert row.kind == "amount_differs" and row.matched_collection_id is not None
    [event] = audit_events(world, "receipt_report.record")
    assert event["details"]["kind"] == "amount_differs"
    assert event["details"]["collection_id"] == row.matched_collection_id


def test_a_receipt_recorded_with_that_amount_is_not_reported(world: SimpleNamespace) -> None:
    take_cash(world, "SJ-0008")
    r = world.http.post("/r/report", json=body(paper_receipt_no="SJ-0008",
                                                amount_fen=MEDICAL_FEN))
    assert r.status_code == 200, r.text
    # that it is recorded, the day and the amount: nothing about who paid
    assert r.json() == {"recorded": False, "known": True, "matches": True,
                        "recorded_on": "2020-11-02", "amount_fen": MEDICAL_FEN}
    assert reports(world.rt) == []
    assert audit_events(world, "receipt_report.record") == []
    # the same number in another village is not that receipt
    r = world.http.post("/r/report", json=body(village_code=OTHER_VILLAGE,
                                                paper_receipt_no="SJ-0008",
                                                amount_fen=MEDICAL_FEN))
    assert r.status_code == 201 and r.json()["kind"] == "unknown_receipt"


# --------------------------------------------------------------------------- bad input
TOO_OLD = (TODAY - timedelta(days=3 * 366 + 1)).isoformat()


@pytest.mark.parametrize(("change", "field"), [
    ({"village_code": "370406999999"}, "village_code"),
    ({"village_code": "东村"}, "village_code"),
    ({"village_code": ...}, "village_code"),
    ({"paper_receipt_no": ""}, "paper_receipt_no"),
    ({"paper_receipt_no": "SJ 0001"}, "paper_receipt_no"),
    ({"paper_receipt_no": "X" * 65}, "paper_receipt_no"),
    ({"paper_receipt_no": "收据一号"}, "paper_receipt_no"),
    ({"amount_fen": 0}, "amount_fen"),
    ({"amount_fen": -38000}, "amount_fen"),
    ({"amount_fen": 10_000_001}, "amount_fen"),
    ({"amount_fen": 380.5}, "amount_fen"),
    ({"amount_fen": "38000"}, "amount_fen"),
    ({"amount_fen": True}, "amount_fen"),
    ({"paid_on": "2020-11-03"}, "paid_on"),
    ({"paid_on": TOO_OLD}, "paid_on"),
    ({"paid_on": "2020-13-01"}, "paid_on"),
    ({"paid_on": ...}, "paid_on"),
    ({"note": "x" * 501}, "note"),
    ({"note": "a\x00b"}, "note"),
    ({"name": "张三"}, "name"),
])
def test_bad_input_is_refused_naming_the_field(world: SimpleNamespace, change: dict[str, Any],
                                               field: str) -> None:
    r = world.http.post("/r/report", json=body(**change))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and error["fields"] == [field], error
    assert error["message"].startswith(f"{field}: ")
    assert reports(world.rt) == []
    assert audit_events(world, "receipt_report.record") == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_a_body_that_is_not_a_json_object_is_refused(world: SimpleNamespace, raw: bytes) -> None:
    r = world.http.post("/r/report", content=raw,
                        headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["fields"] == ["body"], r.text
    assert reports(world.rt) == []


def test_a_note_is_kept_as_given(world: SimpleNamespace) -> None:
    text = "  第一行\n第二行：电话 13812345678  "
    assert world.http.post("/r/report", json=body(note=text)).status_code == 201
    [row] = reports(world.rt)
    assert note(world.rt, row) == text
    # never in the audit trail (it may name people): the trail's details have no note
    [event] = audit_events(world, "receipt_report.record")
    assert "note" not in event["details"]


# --------------------------------------------------------------------------- the limit
def test_reports_are_limited_per_address(world: SimpleNamespace) -> None:
    limit = world.rt.settings.receipt_reports_per_hour
    assert limit == 5
    for i in range(limit):
        r = world.http.post("/r/report", json=body(paper_receipt_no=f"L-{i}"))
        assert r.status_code == 201, r.text
    refused = world.http.post("/r/report", json=body(paper_receipt_no="L-x"))
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    # the form's post gets a page saying so
    page = world.http.post("/r/report", data={"village_code": VILLAGE, "paper_receipt_no": "F",
                                              "amount_yuan": "380", "paid_on": "2020-11-01"})
    assert page.status_code == 429 and "提交太频繁" in page.text
    assert page.headers["content-type"].startswith("text/html") and page.headers["Retry-After"]
    assert len(reports(world.rt)) == limit
    # another address is not held back
    with app_client(world.rt, "10.9.9.9") as other:
        assert other.post("/r/report", json=body(paper_receipt_no="L-y")).status_code == 201


@pytest.mark.parametrize("backend_name", ["postgres"], indirect=True)
def test_the_limit_holds_across_two_apps_sharing_redis(world: SimpleNamespace) -> None:
    """Two serve processes (two Runtimes, two apps) on one Redis: one address's reports are
    counted together, whichever process answers."""
    assert world.rt.settings.redis_url
    second = Runtime(world.rt.settings)
    try:
        with app_client(second) as other:
            clients = [world.http, other]
            for i in range(5):
                r = clients[i % 2].post("/r/report", json=body(paper_receipt_no=f"M-{i}"))
                assert r.status_code == 201, r.text
            for c in clients:
                assert c.post("/r/report",
                              json=body(paper_receipt_no="M-x")).status_code == 429
    finally:
        second.close()
    assert len(reports(world.rt)) == 5


# --------------------------------------------------------------------------- matching
def test_a_later_collection_matches_an_open_report(world: SimpleNamespace) -> None:
    """The resident checked before the agent recorded: the collection matches the report in
    its own transaction (the same amount: matched; another: amount_differs, still open)."""
    first = world.http.post("/r/report", json=body(paper_receipt_no="SJ-0100",
                                                    amount_fen=MEDICAL_FEN)).json()
    second = world.http.post("/r/report", json=body(paper_receipt_no="SJ-0101",
                                                     amount_fen=30000)).json()
    elsewhere = world.http.post("/r/report", json=body(village_code=OTHER_VILLAGE,
                                                        paper_receipt_no="SJ-0100")).json()
    assert first["kind"] == second["kind"] == elsewhere["kind"] == "unknown_receipt"

    take_cash(world, "SJ-0100", "张三")
    take_cash(world, "SJ-0101", "李梅")
    by_no = {r.report_no: r for r in reports(world.rt)}
    matched, differs = by_no[first["report_no"]], by_no[second["report_no"]]
    assert (matched.kind, matched.status) == ("unknown_receipt", "matched")
    assert matched.matched_collection_id is not None and matched.matched_at is not None
    assert (differs.kind, differs.status) == ("amount_differs", "open")
    assert differs.matched_collection_id not in (None, matched.matched_collection_id)
    # another village's report of the same number is not this agent's receipt
    assert by_no[elsewhere["report_no"]].status == "open"
    assert by_no[elsewhere["report_no"]].matched_collection_id is None
    events = {e["subject_id"]: e for e in audit_events(world, "receipt_report.match")}
    assert set(events) == {first["report_no"], second["report_no"]}
    assert events[first["report_no"]]["actor"] == "agent1"
    assert events[first["report_no"]]["details"] == {
        "village_code": VILLAGE, "kind": "unknown_receipt", "status": "matched",
        "paper_receipt_no": "SJ-0100", "collection_id": matched.matched_collection_id,
        "reported_fen": MEDICAL_FEN, "recorded_fen": MEDICAL_FEN}
    # a check of the matched receipt now says it is known
    r = world.http.post("/r/report", json=body(paper_receipt_no="SJ-0100",
                                                amount_fen=MEDICAL_FEN))
    assert r.status_code == 200 and r.json()["matches"] is True


def test_progress_counts_reports_per_village(world: SimpleNamespace) -> None:
    for no in ("P-1", "P-2", "P-3"):
        assert world.http.post("/r/report", json=body(paper_receipt_no=no,
                                                       amount_fen=MEDICAL_FEN)).status_code == 201
    assert world.http.post("/r/report", json=body(village_code=OTHER_VILLAGE,
                                                   paper_receipt_no="P-1")).status_code == 201
    take_cash(world, "P-1")                   # matches one of 东村's three
    fin = staff_headers(world, "fin", "finance-pass")
    r = world.http.get("/api/v1/progress", headers=fin, params={"year": 2021})
    assert r.status_code == 200, r.text
    villages = {v["village_code"]: v for t in r.json()["towns"] for v in t["villages"]}
    towns = {t["town_code"]: t for t in r.json()["towns"]}
    assert (villages[VILLAGE]["receipt_reports_open"],
            villages[VILLAGE]["receipt_reports_total"]) == (2, 3)
    assert (villages[OTHER_VILLAGE]["receipt_reports_open"],
            villages[OTHER_VILLAGE]["receipt_reports_total"]) == (1, 1)
    assert (towns[TOWN]["receipt_reports_open"], towns[TOWN]["receipt_reports_total"]) == (2, 3)
    # a town's staff see their town's only
    r = world.http.get("/api/v1/progress", headers=fin, params={"year": 2021, "town": TOWN})
    assert [v["receipt_reports_total"] for t in r.json()["towns"] for v in t["villages"]] == [3]


# --------------------------------------------------------------------------- the page
def test_the_form_page(world: SimpleNamespace) -> None:
    page = world.http.get("/r/report", params={"village": VILLAGE})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "东村" in page.text and "西村" in page.text and "店子镇" in page.text
    assert f'<option value="{VILLAGE}" selected>' in page.text
    assert "<script" not in page.text and "frame-ancestors 'none'" in \
        page.headers["content-security-policy"]
    # the receipts page's "not valid" state links to it
    assert 'href="/r/report"' in world.http.get("/r/not-a-token").text

    form = {"village_code": VILLAGE, "paper_receipt_no": "ＳＪ－００２０ ", "amount_yuan": "380.5",
            "paid_on": "2020-11-01", "note": "王某"}
    done = world.http.post("/r/report", data=form)
    assert done.status_code == 201 and done.headers["content-type"].startswith("text/html")
    [row] = reports(world.rt)
    assert (row.paper_receipt_no, row.amount_fen, note(world.rt, row)) == ("SJ-0020", 38050,
                                                                          "王某")
    assert row.report_no in done.text and "系统中查不到这张收据" in done.text

    # every wrong field named at once, in Chinese, with what was typed kept; nothing written
    wrong = world.http.post("/r/report", data=form | {"amount_yuan": "380.505",
                                                      "paid_on": "2020-11-05",
                                                      "paper_receipt_no": "SJ-0021"})
    assert wrong.status_code == 422 and "金额" in wrong.text and "380.505" in wrong.text
    assert "请填写元，最多两位小数" in wrong.text
    missing = world.http.post("/r/report", data={"village_code": "", "amount_yuan": "",
                                                 "paid_on": ""})
    assert missing.status_code == 422
    for hint in ("请从列表中选择", "请填写收据上的编号", "请填写元", "请填写缴费日期"):
        assert hint in missing.text
    future = world.http.post("/r/report", data=form | {"paid_on": "2020-11-05",
                                                       "paper_receipt_no": "SJ-0022"})
    assert future.status_code == 422 and "不能晚于今天" in future.text
    assert len(reports(world.rt)) == 1

    # known with that amount: a page that says so, with the day and amount only
    take_cash(world, "SJ-0030")
    known = world.http.post("/r/report", data=form | {"paper_receipt_no": "SJ-0030",
                                                      "amount_yuan": "280"})
    assert known.status_code == 200 and "收据已登记" in known.text and "280.00" in known.text
    assert "张*" not in known.text and "张三" not in known.text and "********" not in known.text


# --------------------------------------------------------------------------- a browser
@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_a_report_from_a_phone_shows_on_the_desk(live: Live) -> None:
    """A resident on a phone reports a paper receipt; finance sees it on the progress page."""
    from playwright.sync_api import expect, sync_playwright

    from tests.docs.test_docs_pages import CHROMIUM, CHROMIUM_ARGS, loopback_only

    if not Path(CHROMIUM).exists():
        _unavailable("Debian's chromium (.ci/run installs it)", FileNotFoundError(CHROMIUM))
    seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="fin", password="finance-pass", role="finance")
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts" / "receipts"
    artifacts.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []

    only_ours = loopback_only(outside)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            phone = browser.new_context(viewport={"width": 375, "height": 740},
                                        is_mobile=True, locale="zh-CN")
            page = phone.new_page()
            page.route("**/*", only_ours)
            page.goto(live.base_url + "/r/report")
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"the form is {width[0]} px wide on a phone"
            page.get_by_label("村（社区）").select_option(label="东村")
            page.get_by_label("收据号").fill("SJ-0500")
            page.get_by_label("金额（元）").fill("380.5")         # a wrong amount first
            page.get_by_label("缴费日期").fill("2020-11-01")
            page.get_by_label("备注（可不填）").fill("代办员上门收的")
            page.get_by_label("金额（元）").fill("380.555")
            page.get_by_role("button", name="核对并提交").click()
            expect(page.locator("#form-errors")).to_contain_text("金额")
            expect(page.get_by_label("收据号")).to_have_value("SJ-0500")
            page.get_by_label("金额（元）").fill("380.50")
            page.get_by_role("button", name="核对并提交").click()
            expect(page.get_by_role("status")).to_contain_text("已记录您的举报")
            report_no = page.locator("#report-no").inner_text()
            assert report_no.startswith("J20201102")
            page.screenshot(path=str(artifacts / "report.png"), full_page=True)

            desk = browser.new_context(viewport={"width": 1280, "height": 860})
            d = desk.new_page()
            d.route("**/*", only_ours)
            d.goto(live.base_url + "/desk/login")
            d.get_by_label("用户名").fill("fin")
            d.get_by_label("密码").fill("finance-pass")
            d.get_by_role("button", name="登录").click()
            d.goto(live.base_url + f"/desk/progress?year=2021&town={TOWN}")
            table = d.locator("#behind-villages")
            expect(table.locator("thead")).to_contain_text("收据举报")
            row = table.locator("tbody tr", has_text="东村")
            expect(row.locator("td.receipt-reports")).to_have_text("1 / 1")
            d.screenshot(path=str(artifacts / "progress-reports.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(func.count()).select_from(ReceiptReport)) == 1
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(
            col(AuditEvent.action) == "receipt_report.record")) == 1
