"""The declaration (申报入库) of a town's closed day: finance only, its rows and totals as the
ledger has them, every download audited, no ID number anywhere else.

The business clock starts at 2020-11-02 09:00 (Beijing). On 11-02 a town's residents pay by
WeChat, Alipay and cash; one item is paid twice (the second payment is a duplicate, refunded
automatically) and finance refunds another item paid. The clock moves to 11-03 and finance
closes 11-02.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from datetime import date, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from backend.audit.models import AuditEvent
from backend.db import unit_of_work
from backend.declarations import repository, service
from backend.ledger.models import ClosedDay
from backend.orders.payment_flow import ChannelConfirmation, confirm_channel_payment
from backend.outbox.service import run_due
from backend.runtime import Runtime
from tests.conftest import Live
from tests.factories import OTHER_TOWN, OTHER_VILLAGE, TOWN, VILLAGE, add_resident
from tests.orders.helpers import (
    order,
    pay,
    ref,
    resident_headers,
    seed,
    staff_headers,
    two_orders_for_one_item,
)
from tests.refunds.test_refunds import _act, _request, _staff

D2, D3 = date(2020, 11, 2), date(2020, 11, 3)
MEDICAL, PENSION_300 = 28000, 30000
URL = "/api/v1/declarations/{}/{}.csv"


def _bodies(live: Live) -> list[str]:
    """Every answer the test client gets from now on, as text."""
    seen: list[str] = []

    def keep(r: httpx.Response) -> None:
        r.read()
        seen.append(r.text)

    live.http.event_hooks["response"].append(keep)
    return seen


def _parse(content: bytes) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """(header and rows, totals, footer) of a declaration file."""
    assert content.startswith(b"\xef\xbb\xbf")          # UTF-8 with a BOM
    lines = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    blank = [i for i, line in enumerate(lines) if not line]
    return lines[:blank[0]], lines[blank[0] + 1:blank[1]], lines[blank[1] + 1:]


def _close(live: Live, h: dict[str, str], day: date) -> None:
    r = live.http.post(f"/api/v1/ledger/days/{day}/close", headers=h, json={})
    assert r.status_code == 200, r.text
    # committed before the answer was sent (SessionDep)
    with unit_of_work(live.rt.sessions) as s:
        assert s.get(ClosedDay, day) is not None, f"{day} was not closed"


def _day(live: Live) -> dict[str, Any]:
    """11-02 paid and refunded as the module says; returns what the checks need."""
    people = seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        _, zhao = add_resident(s, live.rt.pii, "赵六", date(1975, 1, 9), seq=33)
        _, west = add_resident(s, live.rt.pii, "孙七", date(1970, 6, 1), seq=44,
                               village=OTHER_VILLAGE)
    people |= {"赵六": zhao, "孙七": west}
    staff = _staff(live)
    with unit_of_work(live.rt.sessions) as s:
        from backend.auth.service import create_staff_user
        for name, role in (("aud", "auditor"), ("root", "admin")):
            create_staff_user(s, username=name, password=f"{name}-pass-1", role=role)
    staff |= {"aud": staff_headers(live, "aud", "aud-pass-1"),
              "root": staff_headers(live, "root", "root-pass-1"),
              "agent1": staff_headers(live)}
    # 张三's medical: WeChat, then a second payer's Alipay for it too — a duplicate
    _, first, _, second = two_orders_for_one_item(live, people, "wechat_native", "alipay_qr")
    pay(live, first["payment"]["out_trade_no"])
    pay(live, second["payment"]["out_trade_no"])
    # 张三's pension by Alipay: refunded by finance the same day
    h = resident_headers(live)
    pension = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, "张三", people["张三"]),
                                            "insurance": "pension", "tier_yuan": 300}]).json()
    pay(live, pension["payment"]["out_trade_no"])
    # 李梅's medical in cash, to the village agent
    cash = live.http.post("/api/v1/agent/collections", headers=staff["agent1"], json={
        "year": 2021, "method": "cash", "receipt_no": "R-1", "items": [
            {"resident_ref": ref(live, staff["agent1"], "李梅", people["李梅"]),
             "insurance": "medical"}]})
    assert cash.status_code == 201, cash.text
    # 孙七 lives in the other town
    west_order = order(live, h, "wechat_native", [
        {"resident_ref": ref(live, h, "孙七", people["孙七"]), "insurance": "medical"}]).json()
    pay(live, west_order["payment"]["out_trade_no"])
    # 赵六 orders; the wallet's notification comes only after 11-02 is closed
    late = order(live, h, "alipay_qr", [{"resident_ref": ref(live, h, "赵六", people["赵六"]),
                                         "insurance": "medical"}]).json()
    r = _request(live, staff["fin1"], pension["order_no"], reason="误缴")
    assert r.status_code == 201, r.text
    assert _act(live, staff["fin2"], r.json()["refund_id"], "approve").status_code == 200
    while run_due(live.rt):        # the duplicate's automatic refund, and finance's
        pass
    return {"people": people, "staff": staff, "first": first, "second": second,
            "pension": pension, "refund": r.json(), "late": late}


def test_the_declaration_of_a_closed_day_agrees_with_the_ledger(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    seen = _bodies(live)
    world = _day(live)
    people, staff = world["people"], world["staff"]
    fin = staff["fin1"]
    url = URL.format(TOWN, D2)

    # not before the day is closed
    r = live.http.get(url, headers=fin)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "day_not_closed")
    live.rt.clock.advance_to(datetime.fromisoformat("2020-11-03T10:00:00+08:00"))
    _close(live, fin, D2)

    # finance only: auditors, admins, town staff and agents are refused, with a reason
    for who in ("aud", "root", "town1", "agent1"):
        r = live.http.get(url, headers=staff[who])
        assert r.status_code == 403, (who, r.text)
        assert "only finance" in r.json()["error"]["message"]
    assert live.http.get(url).status_code == 401
    r = live.http.get(URL.format("999999", D2), headers=fin)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = live.http.get(URL.format(TOWN, "2020-13-45"), headers=fin)
    assert r.status_code == 422 and r.json()["error"]["fields"] == ["date"]

    r = live.http.get(url, headers=fin)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="declaration-{TOWN}-2020-11-02.csv"')
    table, totals, footer = _parse(r.content)
    assert table[0] == service.COLUMNS
    rows = [dict(zip(table[0], row, strict=True)) for row in table[1:]]
    zhang, li = people["张三"], people["李梅"]
    assert [(x["类型"], x["身份证号码"], x["姓名"], x["险种"], x["养老档次(元)"],
             x["金额(分)"], x["金额(元)"], x["缴费渠道"]) for x in rows] == [
        ("缴费", zhang, "张三", "医疗保险", "", "28000", "280.00", "微信"),
        ("缴费", zhang, "张三", "养老保险", "300", "30000", "300.00", "支付宝"),
        ("缴费", li, "李梅", "医疗保险", "", "28000", "280.00", "现金"),
        ("退费", zhang, "张三", "养老保险", "300", "-30000", "-300.00", "支付宝")]
    assert [x["序号"] for x in rows] == ["1", "2", "3", "4"]
    assert {(x["村(居)代码"], x["村(居)名称"], x["缴费年度"]) for x in rows} == {
        (VILLAGE, "东村", "2021")}
    assert [x["交易/收据号"] for x in rows[:3]] == [
        world["first"]["payment"]["out_trade_no"], world["pension"]["payment"]["out_trade_no"],
        "R-1"]
    assert rows[3]["交易/收据号"].startswith("RF")
    assert all(x["时间(北京时间)"].startswith("2020-11-02 ") for x in rows)
    assert totals == [service.TOTAL_COLUMNS,
                      ["汇总", "养老保险", "1", "30000", "1", "30000", "0", "0.00"],
                      ["汇总", "医疗保险", "2", "56000", "0", "0", "56000", "560.00"],
                      ["汇总", "合计", "3", "86000", "1", "30000", "56000", "560.00"]]
    assert footer == [["镇(街道)", f"店子镇（{TOWN}）", "业务日期", "2020-11-02"]]

    # the ledger's day: the duplicate (in its money) and its refund (in its refunds) cancel
    ledger = live.http.get("/api/v1/ledger/daily", headers=fin,
                           params={"date": "2020-11-02", "town": TOWN}).json()["totals"]
    assert (ledger["count"], ledger["amount_fen"], ledger["refunded_fen"]) == (
        3, 86000 + MEDICAL, PENSION_300 + MEDICAL)
    assert ledger["amount_fen"] - ledger["refunded_fen"] == 56000

    # the other town's file has its own resident only
    west = live.http.get(URL.format(OTHER_TOWN, D2), headers=fin)
    west_rows = _parse(west.content)[0][1:]
    assert [(x[2], x[9]) for x in west_rows] == [(people["孙七"], "28000")]

    # every download is audited, with the file's SHA-256; the same day, the same bytes
    again = live.http.get(url, headers=fin)
    assert again.content == r.content
    with unit_of_work(live.rt.sessions) as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action ==
                                                    "declaration.downloaded")
                           .order_by(AuditEvent.id)).all()
        assert [(e.actor_username, e.subject_type, e.subject_id) for e in events] == [
            ("fin1", "declaration", f"{TOWN}/2020-11-02"),
            ("fin1", "declaration", f"{OTHER_TOWN}/2020-11-02"),
            ("fin1", "declaration", f"{TOWN}/2020-11-02")]
        assert events[0].details == {
            "town_code": TOWN, "business_date": "2020-11-02", "rows": 4, "paid_count": 3,
            "paid_fen": 86000, "refund_count": 1, "refunded_fen": 30000, "net_fen": 56000,
            "by_insurance": {"medical": 56000, "pension": 0},
            "sha256": hashlib.sha256(r.content).hexdigest()}
    lines = [rec.getMessage() for rec in caplog.records]
    assert any(f"declaration of town {TOWN} 2020-11-02 downloaded by staff:" in line
               and "4 rows, net 56000 fen" in line for line in lines)

    # money for 11-02 that comes after its close is declared with the day it is posted into
    with unit_of_work(live.rt.sessions) as s:
        confirm_channel_payment(s, ChannelConfirmation(
            channel="alipay", out_trade_no=world["late"]["payment"]["out_trade_no"],
            transaction_id="2020110222001000000000000099", amount_fen=MEDICAL,
            paid_at=datetime.fromisoformat("2020-11-02T23:50:00+08:00"),
            source="notification"))
    assert live.http.get(url, headers=fin).content == r.content
    live.rt.clock.advance_to(datetime.fromisoformat("2020-11-04T10:00:00+08:00"))
    _close(live, fin, D3)
    later = _parse(live.http.get(URL.format(TOWN, D3), headers=fin).content)
    assert [(x[2], x[9], x[13]) for x in later[0][1:]] == [
        (people["赵六"], "28000", "2020-11-02 23:50:00")]

    # no full ID number in any other answer, nor in any log line or audit event
    declarations = {r.text, again.text, west.text}
    numbers = list(people.values())
    others = [b for b in seen if b not in declarations and "身份证号码" not in b]
    assert others and not [b for b in others if any(n in b for n in numbers)]
    everything = "\n".join(lines + [rec.getMessage() for rec in caplog.records])
    assert not [n for n in numbers if n in everything]
    with unit_of_work(live.rt.sessions) as s:
        trail = str([(e.details, e.reason) for e in s.scalars(select(AuditEvent))])
    assert not [n for n in numbers if n in trail]


def test_a_declaration_that_disagrees_with_the_ledger_is_refused(
        live: Live, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    world = _day(live)
    fin = world["staff"]["fin1"]
    live.rt.clock.advance_to(datetime.fromisoformat("2020-11-03T10:00:00+08:00"))
    _close(live, fin, D2)
    # a refund the rows lost: the file would declare 300 yuan more than the book
    monkeypatch.setattr(repository, "refund_rows", lambda *_: [])
    r = live.http.get(URL.format(TOWN, D2), headers=fin)
    assert r.status_code == 500, r.text
    assert r.json()["error"]["code"] == "declaration_mismatch"
    refused = [rec for rec in caplog.records if rec.levelno == logging.ERROR
               and "DECLARATION REFUSED" in rec.getMessage()]
    assert len(refused) == 1
    assert "pension 2021 refunded 0 fen, the contributions account 30000" in \
        refused[0].getMessage()
    with unit_of_work(live.rt.sessions) as s:       # nothing served, nothing audited
        assert s.scalars(select(AuditEvent).where(
            AuditEvent.action == "declaration.downloaded")).all() == []


def test_yuan_never_goes_through_float() -> None:
    assert [service.yuan(f) for f in (0, 5, 28000, -30000, 123456789, -1)] == [
        "0.00", "0.05", "280.00", "-300.00", "1234567.89", "-0.01"]


def test_a_department_payment_is_declared_per_resident_though_posted_per_town(
        rt: Runtime) -> None:
    """A department's bulk payment (channel ``department``): payment lines per resident
    item, the ledger's postings per town without a village. The rows take the village
    from the resident registry; the totals still agree with the ledger."""
    from backend.auth.service import create_staff_user, staff_principal
    from backend.ledger import closing
    from backend.ledger.models import COLLECTED
    from backend.ledger.service import Leg, contributions, department_receivable, post_entry
    from backend.orders.models import BillLine, Order, Payment, PaymentLine
    from tests.factories import add_regions

    d1 = date(2020, 11, 1)
    paid_at = datetime.fromisoformat("2020-11-01T15:00:00+08:00")
    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        people = [add_resident(s, rt.pii, name, date(1960, 1, 1), seq=n)
                  for n, name in ((1, "周一"), (2, "吴二"))]
        lines = [BillLine(resident_id=r.id, year=2021, insurance="medical",  # type: ignore[arg-type]
                          status="paid", paid_fen=MEDICAL, paid_at=paid_at) for r, _ in people]
        s.add_all(lines)
        o = Order(order_no="DEPT0000001", payer_sub="department:civil",
                  payer_role="department", year=2021, channel="department", status="paid",
                  amount_fen=2 * MEDICAL, expires_at=paid_at, paid_at=paid_at)
        s.add(o)
        s.flush()
        p = Payment(order_id=o.id, channel="department",  # type: ignore[arg-type]
                    transaction_id="MZ-2020-118", amount_fen=2 * MEDICAL, paid_at=paid_at,
                    business_date=d1, source="department")
        s.add(p)
        s.flush()
        s.add_all([PaymentLine(payment_id=p.id, bill_line_id=b.id, amount_fen=MEDICAL,  # type: ignore[arg-type]
                               applied=True) for b in lines])
        where = {"town_code": TOWN, "channel": "department"}
        post_entry(s, kind="department_payment", reason="civil affairs paid 2 items",
                   business_date=d1, occurred_at=paid_at, payment_id=p.id, legs=[
                       Leg(department_receivable("civil"), 2 * MEDICAL, measure=COLLECTED,
                           **where),
                       Leg(contributions("medical", 2021), -2 * MEDICAL, **where)])
        fin = create_staff_user(s, username="fin", password="finance-pass", role="finance")
        closing.close_day(s, rt.clock, d1, fin.id, preconditions=[])  # type: ignore[arg-type]
        principal = staff_principal(fin)
    d = service.declaration(rt, principal, TOWN, d1)
    table, totals, _ = _parse(d.content)
    assert [(x[2], x[4], x[5], x[9], x[11], x[12]) for x in table[1:]] == [
        (number, VILLAGE, "东村", str(MEDICAL), "部门代缴", "MZ-2020-118")
        for _, number in people]
    assert totals[-1] == ["汇总", "合计", "2", "56000", "0", "0", "56000", "560.00"]
