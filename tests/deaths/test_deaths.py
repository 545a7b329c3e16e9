"""A death list (死亡名单) through the whole service, on both databases: the residents named
are deceased wherever they are assessed, their pending orders are closed at the channel,
money paid for a coverage year that starts after the death is refunded once — and money
that still arrives for a closed order of theirs is refunded too.

The ``live`` fixture's business clock starts at 2020-11-02 09:00 Asia/Shanghai, inside the
collection window of coverage year 2021.
"""

from __future__ import annotations

import csv
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.__main__ import main
from backend.audit.models import AuditEvent
from backend.audit.service import verify
from backend.clock import SHANGHAI
from backend.db import unit_of_work
from backend.imports.columns import COLUMNS
from backend.imports.service import ImportReport, run_import
from backend.orders.models import BillLine, Order, Refund, RefundLine
from backend.outbox.service import run_due
from backend.residents.models import Death, Resident
from tests.conftest import Live
from tests.orders.helpers import (
    get_order,
    order,
    pay,
    ref,
    resident_headers,
    seed,
    staff_headers,
)

MEDICAL, PENSION_300 = 28000, 30000


@pytest.fixture
def people(live: Live) -> dict[str, str]:
    return seed(live.rt)


def deaths_file(path: Path, rows: list[tuple[str, str, date]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS["deaths"])
        out.writerows([(number, name, died.isoformat()) for number, name, died in rows])
    return path


def import_deaths(live: Live, path: Path) -> ImportReport:
    report = run_import(live.rt, "deaths", path, progress=False)
    assert report.committed, report.summary()
    assert report.deaths is not None
    return report


def move_clock(live: Live, day: date) -> None:
    live.rt.clock.advance_to(datetime(day.year, day.month, day.day, 10, tzinfo=SHANGHAI))


def run_jobs(live: Live) -> None:
    while run_due(live.rt):
        pass


def refunds(live: Live) -> list[Refund]:
    with unit_of_work(live.rt.sessions) as s:
        return list(s.scalars(select(Refund).order_by(Refund.id)))


def bill_lines(live: Live) -> dict[str, str]:
    with unit_of_work(live.rt.sessions) as s:
        return {b.insurance: b.status for b in s.scalars(select(BillLine))}


def audit_of(live: Live, action: str) -> list[AuditEvent]:
    with unit_of_work(live.rt.sessions) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.id)))


def pay_both(live: Live, people: dict[str, str], channel: str = "wechat_native") -> Any:
    """张三's medical and pension (tier 300) for 2021, paid through ``channel``."""
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    body = order(live, h, channel, [{"resident_ref": zhang, "insurance": "medical"},
                                    {"resident_ref": zhang, "insurance": "pension",
                                     "tier_yuan": 300}]).json()
    pay(live, body["payment"]["out_trade_no"])
    assert get_order(live, h, body["order_no"])["status"] == "paid"
    return h, body


def test_a_death_after_payment_before_the_year_refunds_the_payment_once(
        live: Live, people: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    h, body = pay_both(live, people)
    move_clock(live, date(2020, 12, 10))
    path = deaths_file(tmp_path / "deaths-12.csv", [(people["张三"], "张三", date(2020, 12, 5))])
    # through the command line, as it is run each month
    monkeypatch.setattr("backend.__main__._runtime", lambda: live.rt)
    assert main(["import", "deaths", str(path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "1 resident marked deceased" in printed and "1 refund queued (580.00 yuan)" in printed
    assert "0 pending orders closed" in printed
    # the list is dated by the business clock, not the wall clock
    with unit_of_work(live.rt.sessions) as s:
        imported = s.scalar(select(Death.imported_at))
    assert imported is not None and imported.astimezone(SHANGHAI).date() == date(2020, 12, 10)

    [refund] = refunds(live)
    assert (refund.reason, refund.status, refund.method, refund.amount_fen) == (
        "deceased", "queued", "channel", MEDICAL + PENSION_300)
    assert refund.requested_by == refund.approved_by == "system"
    with unit_of_work(live.rt.sessions) as s:
        lines = list(s.scalars(select(RefundLine).where(RefundLine.refund_id == refund.id)))
    assert sorted(line.amount_fen for line in lines) == [MEDICAL, PENSION_300]
    assert all(line.applied for line in lines)

    # one audit record for the import: by the command line, counts and the refund, no ID
    [event] = audit_of(live, "deaths.applied")
    assert (event.actor_username, event.actor_role) == ("cli", "cli")
    assert {k: event.details[k] for k in ("named", "registered", "marked", "orders_closed",
                                          "refunds_queued", "refund_ids", "refund_fen")} == {
        "named": 1, "registered": 1, "marked": 1, "orders_closed": 0, "refunds_queued": 1,
        "refund_ids": [refund.id], "refund_fen": MEDICAL + PENSION_300}
    assert people["张三"] not in json.dumps(event.details, ensure_ascii=False)

    # the same list again, and next month's list naming him again: nothing more
    again = import_deaths(live, path)
    assert again.deaths is not None and (again.deaths.marked, again.deaths.refunds_queued) == (
        0, 0)
    assert "0 residents marked deceased" in again.summary()
    move_clock(live, date(2021, 1, 5))
    later = deaths_file(tmp_path / "deaths-01.csv", [
        (people["李梅"], "李梅", date(2020, 12, 28)), (people["张三"], "张三", date(2020, 12, 5))])
    assert import_deaths(live, later).deaths.refunds_queued == 0  # type: ignore[union-attr]
    assert len(refunds(live)) == 1

    # the worker refunds it through WeChat: the items are unpaid, the order refunded
    run_jobs(live)
    [refund] = refunds(live)
    assert refund.status == "succeeded"
    assert bill_lines(live) == {"medical": "unpaid", "pension": "unpaid"}
    assert get_order(live, h, body["order_no"])["status"] == "refunded"
    trade = live.http.get(f"/sandbox/trades/{body['payment']['out_trade_no']}").json()
    assert trade["refunded_fen"] == MEDICAL + PENSION_300
    # and a list naming him once more still queues nothing
    assert import_deaths(live, path).deaths.refunds_queued == 0  # type: ignore[union-attr]
    assert len(refunds(live)) == 1
    assert len(audit_of(live, "deaths.applied")) == 4
    with unit_of_work(live.rt.sessions) as s:
        assert verify(s)[0]


def test_a_death_during_the_coverage_year_refunds_nothing(
        live: Live, people: dict[str, str], tmp_path: Path) -> None:
    h, body = pay_both(live, people)
    move_clock(live, date(2021, 3, 1))
    report = import_deaths(live, deaths_file(tmp_path / "d.csv", [
        (people["张三"], "张三", date(2021, 2, 10))]))
    assert report.deaths is not None
    assert (report.deaths.marked, report.deaths.refunds_queued, report.deaths.orders_closed) == (
        1, 0, 0)
    assert report.deaths.deceased == []          # charged for 2021: he lived into it
    assert refunds(live) == []
    assert bill_lines(live) == {"medical": "paid", "pension": "paid"}
    assert get_order(live, h, body["order_no"])["status"] == "paid"
    [event] = audit_of(live, "deaths.applied")
    assert event.details["refunds_queued"] == 0


def test_a_refund_finance_asked_for_is_not_doubled(live: Live, people: dict[str, str],
                                                  tmp_path: Path) -> None:
    from backend.auth.models import StaffUser

    with unit_of_work(live.rt.sessions) as s:
        s.add(StaffUser(username="fin1", password_hash="-", role="finance"))
    from backend.auth.service import staff_principal
    from backend.security.tokens import issue_token

    with unit_of_work(live.rt.sessions) as s:
        fin = s.scalar(select(StaffUser).where(StaffUser.username == "fin1"))
        assert fin is not None
        fin_h = {"Authorization": "Bearer " + issue_token(live.rt.app_secret,
                                                          staff_principal(fin), 600)}
    _, body = pay_both(live, people)
    items = {i["insurance"]: i for i in get_order(live, fin_h, body["order_no"])["items"]}
    asked = live.http.post("/api/v1/refunds", headers=fin_h, json={
        "order_no": body["order_no"], "reason": "误缴",
        "items": [{"resident_ref": items["medical"]["resident_ref"], "insurance": "medical"}]})
    assert asked.status_code == 201, asked.text
    report = import_deaths(live, deaths_file(tmp_path / "d.csv", [
        (people["张三"], "张三", date(2020, 10, 20))]))
    assert report.deaths is not None and report.deaths.refunds_queued == 1
    finance, deceased = refunds(live)
    assert (finance.status, finance.amount_fen) == ("requested", MEDICAL)
    assert (deceased.reason, deceased.amount_fen) == ("deceased", PENSION_300)


def test_a_pending_order_is_closed_at_the_channel_and_the_resident_is_deceased(
        live: Live, people: dict[str, str], tmp_path: Path) -> None:
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    li = ref(live, h, "李梅", people["李梅"])
    body = order(live, h, "wechat_native", [{"resident_ref": zhang, "insurance": "medical"},
                                            {"resident_ref": li, "insurance": "medical"}]).json()
    report = import_deaths(live, deaths_file(tmp_path / "d.csv", [
        (people["张三"], "张三", date(2020, 10, 20))]))
    assert report.deaths is not None and report.deaths.orders_closed == 1
    assert "1 pending order closed" in report.summary()
    # the import asked no channel: the order is closed by the worker's job
    assert get_order(live, h, body["order_no"])["status"] == "pending"
    run_jobs(live)
    assert get_order(live, h, body["order_no"])["status"] == "closed"
    trade = live.http.get(f"/sandbox/trades/{body['payment']['out_trade_no']}").json()
    assert trade["state"] == "closed"
    assert refunds(live) == []

    # the lookup says so, and he can not be ordered for; 李梅 can
    r = live.http.post("/api/v1/residents/lookup", headers=h,
                       json={"name": "张三", "id_number": people["张三"], "year": 2021})
    assert r.status_code == 200 and r.json()["resident"]["deceased"] is True
    assert {i["status"] for i in r.json()["items"]} == {"not_eligible"}
    refused = order(live, h, "wechat_native", [{"resident_ref": zhang, "insurance": "medical"}])
    assert refused.status_code == 409
    assert (refused.json()["error"]["code"], refused.json()["error"]["reason"]) == (
        "not_eligible", "deceased")
    assert order(live, h, "wechat_native", [{"resident_ref": li, "insurance": "medical"}]
                 ).status_code == 201
    # and the agent's roster
    roster = live.http.get("/api/v1/agent/roster", headers=staff_headers(live),
                           params={"year": 2021}).json()
    zhang_row = next(row for row in roster["rows"] if row["name"] == "张*")
    assert {(i["status"], i["reason"]) for i in zhang_row["items"]} == {
        ("not_eligible", "deceased")}


def test_money_for_the_closed_order_of_a_deceased_resident_is_refunded(
        live: Live, people: dict[str, str], tmp_path: Path) -> None:
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    body = order(live, h, "alipay_qr", [{"resident_ref": zhang, "insurance": "medical"}]).json()
    import_deaths(live, deaths_file(tmp_path / "d.csv", [
        (people["张三"], "张三", date(2020, 10, 20))]))
    run_jobs(live)
    # Alipay had no trade before the scan: closed on our side, still payable there
    assert get_order(live, h, body["order_no"])["status"] == "closed"
    out_trade_no = body["payment"]["out_trade_no"]
    assert live.http.get(f"/sandbox/trades/{out_trade_no}").json()["state"] == "pending"
    # the relative still had the code open, and pays it: money received, applied, refunded
    pay(live, out_trade_no)
    [refund] = refunds(live)
    assert (refund.reason, refund.status, refund.amount_fen) == ("deceased", "queued", MEDICAL)
    assert len(audit_of(live, "deaths.late_payment_refunded")) == 1
    run_jobs(live)
    assert refunds(live)[0].status == "succeeded"
    assert bill_lines(live) == {"medical": "unpaid"}
    assert get_order(live, h, body["order_no"])["status"] == "refunded"
    assert live.http.get(f"/sandbox/trades/{out_trade_no}").json()["refunded_fen"] == MEDICAL


def test_money_the_channel_had_before_the_close_is_refunded(
        live: Live, people: dict[str, str], tmp_path: Path) -> None:
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    body = order(live, h, "wechat_native", [{"resident_ref": zhang, "insurance": "medical"}]
                 ).json()
    # paid at WeChat, the notification not yet here when the list is imported
    note = pay(live, body["payment"]["out_trade_no"], deliver=False)["notifications"][0]
    report = import_deaths(live, deaths_file(tmp_path / "d.csv", [
        (people["张三"], "张三", date(2020, 10, 20))]))
    assert report.deaths is not None and report.deaths.orders_closed == 1
    assert report.deaths.refunds_queued == 0       # nothing was received yet
    run_jobs(live)
    # the close found it paid: applied, then refunded
    [refund] = refunds(live)
    assert (refund.reason, refund.status, refund.amount_fen) == ("deceased", "succeeded",
                                                                  MEDICAL)
    assert len(audit_of(live, "deaths.paid_before_close_refunded")) == 1
    assert get_order(live, h, body["order_no"])["status"] == "refunded"
    # the late notification is a repeat: nothing more
    resp = live.http.post(note["url"].removeprefix(live.base_url), content=note["body"].encode(),
                          headers=note["headers"])
    assert resp.status_code in (200, 204)      # WeChat's success is 204
    run_jobs(live)
    assert len(refunds(live)) == 1


def test_cash_paid_to_the_agent_is_paid_back_in_cash(live: Live, people: dict[str, str],
                                                     tmp_path: Path) -> None:
    agent = staff_headers(live)
    items = [{"resident_ref": ref(live, agent, "张三", people["张三"]), "insurance": "medical"}]
    collected = live.http.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "items": items, "method": "cash", "receipt_no": "R-1"})
    assert collected.status_code == 201, collected.text
    report = import_deaths(live, deaths_file(tmp_path / "d.csv", [
        (people["张三"], "张三", date(2020, 10, 20))]))
    assert report.deaths is not None and report.deaths.refunds_queued == 1
    [refund] = refunds(live)
    assert (refund.reason, refund.method, refund.status, refund.amount_fen) == (
        "deceased", "cash", "awaiting_cash", MEDICAL)
    run_jobs(live)                               # nothing for a channel to do
    assert refunds(live)[0].status == "awaiting_cash"
    paid = live.http.post(f"/api/v1/agent/refunds/{refund.id}/paid", headers=agent,
                          json={"receipt_no": "TK-1"})
    assert paid.status_code == 200 and paid.json()["status"] == "succeeded", paid.text
    assert bill_lines(live) == {"medical": "unpaid"}
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(func.count()).select_from(Order)
                        .where(Order.status == "refunded")) == 1


def test_only_the_deceased_residents_items_of_a_household_order_are_refunded(
        live: Live, people: dict[str, str], tmp_path: Path) -> None:
    from backend.residents.idnumber import make_id_number

    h = resident_headers(live)
    body = order(live, h, "alipay_qr", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"},
        {"resident_ref": ref(live, h, "李梅", people["李梅"]), "insurance": "medical"}]).json()
    pay(live, body["payment"]["out_trade_no"])
    stranger = make_id_number("370406", date(1950, 1, 1), 77)   # died, never registered
    report = import_deaths(live, deaths_file(tmp_path / "d.csv", [
        (people["张三"], "张三", date(2020, 10, 20)), (stranger, "陈某", date(2020, 9, 1))]))
    assert report.deaths is not None
    assert (report.deaths.named, report.deaths.registered, report.deaths.marked,
            report.deaths.refunds_queued, report.deaths.refund_fen) == (2, 1, 1, 1, MEDICAL)
    assert [(d.died_on, d.years) for d in report.deaths.deceased] == [(date(2020, 10, 20),
                                                                       (2021,))]
    run_jobs(live)
    assert refunds(live)[0].status == "succeeded"
    with unit_of_work(live.rt.sessions) as s:
        ids = {r.name: r.id for r in s.scalars(select(Resident))}
        lines = {b.resident_id: b.status for b in s.scalars(select(BillLine))}
    assert lines == {ids["张三"]: "unpaid", ids["李梅"]: "paid"}
    assert get_order(live, h, body["order_no"])["status"] == "partially_refunded"


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_money_confirmed_for_a_closed_order_while_the_list_is_imported_is_refunded(
        live: Live, people: dict[str, str]) -> None:
    """张三's Alipay order was closed on our side; his relative pays the code still open
    while the death list naming him is being imported. The import reads his payments
    before it commits; the confirmation reads the deaths before the import commits. Unless
    one waits for the other (the import locks his orders first), neither refunds: money
    kept for a dead person."""
    import threading
    import time

    from sqlalchemy import text

    from backend.deaths.service import apply_deaths

    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    body = order(live, h, "alipay_qr", [{"resident_ref": zhang, "insurance": "medical"}]).json()
    with unit_of_work(live.rt.sessions) as s:
        s.execute(text("UPDATE orders SET status = 'closed' WHERE order_no = :n"),
                  {"n": body["order_no"]})
    paying: dict[str, Any] = {}

    def relative_pays() -> None:
        paying["answer"] = pay(live, body["payment"]["out_trade_no"])

    id_hash = live.rt.pii.hash(people["张三"])
    payer = threading.Thread(target=relative_pays)
    with unit_of_work(live.rt.sessions) as s:
        s.add(Death(id_hash=id_hash, id_masked="x", name="张三", died_on=date(2020, 10, 20)))
        s.flush()
        applied = apply_deaths(live.rt, s, [id_hash], changed=[id_hash])
        assert applied.refunds_queued == 0          # nothing received yet
        payer.start()
        time.sleep(1.0)                             # the confirmation comes meanwhile
    payer.join(20)
    assert "answer" in paying
    for _ in range(200):
        if refunds(live):
            break
        time.sleep(0.05)
    [refund] = refunds(live)
    assert (refund.reason, refund.amount_fen) == ("deceased", MEDICAL)
