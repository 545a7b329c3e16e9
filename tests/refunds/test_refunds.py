"""Refunds finance asks for and another finance user approves, through the whole service:
by line and in full, through WeChat (its REFUND.SUCCESS applied once however delivered),
Alipay and ChinaUMS, and in cash paid back by the agent; never more than was paid."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select

from backend.db import unit_of_work
from backend.ledger.models import JournalEntry, Posting
from backend.ledger.service import balance, contributions
from backend.orders.models import BillLine
from backend.outbox.service import run_due
from payment_adapters.base import Channel
from payment_adapters.sandbox.core import deliver
from payment_adapters.sandbox.wechat import WechatSimulator
from tests.conftest import Live
from tests.factories import OTHER_TOWN, OTHER_VILLAGE, TOWN
from tests.orders.helpers import get_order, order, pay, ref, resident_headers, seed, staff_headers

MEDICAL, PENSION_300 = 28000, 30000


def _staff(live: Live) -> dict[str, dict[str, str]]:
    """Staff accounts, with tokens as their login issues them (no password hashing: the
    logins have their own tests)."""
    from backend.auth.models import StaffUser
    from backend.auth.service import staff_principal
    from backend.security.tokens import issue_token

    with unit_of_work(live.rt.sessions) as s:
        users = [StaffUser(username=name, password_hash="-", role=role, **where)
                 for name, role, where in (
                     ("fin1", "finance", {}), ("fin2", "finance", {}),
                     ("town1", "town_staff", {"town_code": TOWN}),
                     ("town2", "town_staff", {"town_code": OTHER_TOWN}),
                     ("agent2", "agent", {"village_code": OTHER_VILLAGE}))]
        s.add_all(users)
        s.flush()
        return {u.username: {"Authorization": "Bearer " + issue_token(
            live.rt.app_secret, staff_principal(u), 600)} for u in users}


def _request(live: Live, h: dict[str, str], order_no: str, items: Any = None,
             key: str | None = None, reason: str = "误缴") -> Any:
    body: dict[str, Any] = {"order_no": order_no, "reason": reason}
    if items is not None:
        body["items"] = items
    return live.http.post("/api/v1/refunds", json=body,
                          headers=h | ({"Idempotency-Key": key} if key else {}))


def _act(live: Live, h: dict[str, str], refund_id: int, action: str, **body: Any) -> Any:
    return live.http.post(f"/api/v1/refunds/{refund_id}/{action}", headers=h,
                          json=body or None)


def _ledger_checks(live: Live, refund_ids: list[int]) -> None:
    """The ledger balances, and each refund is posted exactly once."""
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(func.sum(Posting.amount_fen))) == 0
        for rid in refund_ids:
            assert s.scalar(select(func.count()).select_from(JournalEntry)
                            .where(JournalEntry.refund_id == rid)) == 1


def _daily(live: Live, h: dict[str, str]) -> dict[str, dict[str, int]]:
    r = live.http.get("/api/v1/ledger/daily", headers=h,
                      params={"date": live.rt.clock.today().isoformat()})
    assert r.status_code == 200, r.text
    return {row["channel"]: row for row in r.json()["rows"]}


def test_wechat_refunds_by_line_then_in_full(live: Live) -> None:
    people = seed(live.rt)
    staff = _staff(live)
    fin1, fin2 = staff["fin1"], staff["fin2"]
    h = resident_headers(live)
    zhang = ref(live, h, "张三", people["张三"])
    body = order(live, h, "wechat_native", [
        {"resident_ref": zhang, "insurance": "medical"},
        {"resident_ref": zhang, "insurance": "pension", "tier_yuan": 300}]).json()
    order_no = body["order_no"]
    # not paid yet: nothing to refund
    r = _request(live, fin1, order_no)
    assert r.status_code == 409 and r.json()["error"]["code"] == "order_not_refundable"
    pay(live, body["payment"]["out_trade_no"])
    # finance names the items as the order answer it gets names them
    items = {i["insurance"]: i for i in get_order(live, fin1, order_no)["items"]}
    medical = [{"resident_ref": items["medical"]["resident_ref"], "insurance": "medical"}]

    # --- by line: the medical item, asked for once (a retry with the same key is the same)
    first = _request(live, fin1, order_no, medical, key="rf-1")
    assert first.status_code == 201, first.text
    assert _request(live, fin1, order_no, medical, key="rf-1").json() == first.json()
    refund = first.json()
    assert {k: refund[k] for k in ("order_no", "amount_fen", "status", "method", "channel",
                                   "reason", "requested_by")} == {
        "order_no": order_no, "amount_fen": MEDICAL, "status": "requested",
        "method": "channel", "channel": "wechat", "reason": "误缴", "requested_by": "fin1"}
    assert refund["items"] == [{**medical[0], "amount_fen": MEDICAL}]
    rid = refund["refund_id"]
    # the same line again is more than remains of it
    again = _request(live, fin1, order_no, medical)
    assert again.status_code == 409
    assert {k: again.json()["error"].get(k) for k in ("code", "requested_fen",
                                                      "refundable_fen")} == {
        "code": "refund_exceeds_refundable", "requested_fen": MEDICAL, "refundable_fen": 0}
    # the one who asked cannot approve; nor can anyone but finance
    r = _act(live, fin1, rid, "approve")
    assert r.status_code == 403 and r.json()["error"]["code"] == "same_approver"
    assert _act(live, staff["town1"], rid, "approve").status_code == 403
    # the resident sees it asked for, the money not yet under way
    seen = get_order(live, h, order_no)
    assert [(x["refund_id"], x["status"]) for x in seen["refunds"]] == [(rid, "requested")]
    assert (seen["refund_queued_fen"], seen["refunded_fen"]) == (0, 0)

    approved = _act(live, fin2, rid, "approve")
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["approved_by"]) == ("approved", "fin2")
    assert _act(live, fin2, rid, "approve").json()["error"]["code"] == "refund_not_pending"
    assert get_order(live, h, order_no)["refund_queued_fen"] == MEDICAL
    # WeChat takes it and finishes later, saying so by REFUND.SUCCESS
    live.http.post("/sandbox/wechat/switches", json={"refunds_processing": True})
    assert run_due(live.rt) == 1
    out_refund_no = _out_refund_no(live, rid)
    sim = live.rt.channels.simulators[Channel.WECHAT]
    assert isinstance(sim, WechatSimulator)
    trade, record = sim.settle_refund(out_refund_no, "SUCCESS")
    note = sim.refund_notification(trade, record)
    assert note is not None
    # delivered twice at once, and once more after: applied once
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(deliver(note)[0]))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers.append(deliver(note)[0])
    assert answers == [204, 204, 204]
    _ledger_checks(live, [rid])
    seen = get_order(live, h, order_no)
    assert seen["status"] == "partially_refunded"
    assert (seen["refund_queued_fen"], seen["refunded_fen"]) == (0, MEDICAL)
    assert seen["refunds"][0]["status"] == "succeeded" and seen["refunds"][0]["refunded_at"]
    # the medical item is unpaid again, and payable: the resident orders it again
    with unit_of_work(live.rt.sessions) as s:
        line = s.scalar(select(BillLine).where(BillLine.insurance == "medical"))
        assert line is not None and (line.status, line.paid_payment_id) == ("unpaid", None)
        assert balance(s, contributions("medical", 2021)) == 0
        assert balance(s, contributions("pension", 2021)) == -PENSION_300
    reorder = order(live, h, "wechat_native", [{"resident_ref": zhang, "insurance": "medical"}])
    assert reorder.status_code == 201, reorder.text

    # --- in full: what remains (the pension), at once from WeChat's refund answer
    live.http.post("/sandbox/wechat/switches", json={"refunds_processing": False})
    full = _request(live, fin2, order_no)
    assert full.status_code == 201 and full.json()["amount_fen"] == PENSION_300
    rid2 = full.json()["refund_id"]
    assert _act(live, fin1, rid2, "approve").status_code == 200
    assert run_due(live.rt) == 1
    seen = get_order(live, h, order_no)
    assert seen["status"] == "refunded"
    assert (seen["refund_queued_fen"], seen["refunded_fen"]) == (0, MEDICAL + PENSION_300)
    assert [x["status"] for x in seen["refunds"]] == ["succeeded", "succeeded"]
    assert live.http.get(f"/sandbox/trades/{body['payment']['out_trade_no']}"
                         ).json()["refunded_fen"] == MEDICAL + PENSION_300
    nothing_left = _request(live, fin1, order_no)
    assert nothing_left.json()["error"]["refundable_fen"] == 0
    _ledger_checks(live, [rid, rid2])
    day = _daily(live, fin1)["wechat"]
    assert (day["amount_fen"], day["refunded_fen"]) == (MEDICAL + PENSION_300,
                                                        MEDICAL + PENSION_300)
    # who sees the refunds: finance all, town staff their town
    listed = live.http.get("/api/v1/refunds", headers=fin1,
                           params={"status": "succeeded"}).json()["refunds"]
    assert [x["refund_id"] for x in listed] == [rid2, rid]
    assert len(live.http.get("/api/v1/refunds", headers=staff["town1"]).json()["refunds"]) == 2
    assert live.http.get("/api/v1/refunds", headers=staff["town2"]).json()["refunds"] == []
    assert live.http.get(f"/api/v1/refunds/{rid}", headers=staff["town2"]).status_code == 404
    assert live.http.get(f"/api/v1/refunds/{rid}", headers=h).status_code == 403


def _out_refund_no(live: Live, refund_id: int) -> str:
    from backend.orders.models import Refund

    with unit_of_work(live.rt.sessions) as s:
        refund = s.get(Refund, refund_id)
        assert refund is not None and refund.status == "processing"
        return refund.out_refund_no


def test_alipay_and_chinaums_refunds_and_two_requests_at_once(live: Live) -> None:
    people = seed(live.rt)
    staff = _staff(live)
    fin1, fin2 = staff["fin1"], staff["fin2"]
    h = resident_headers(live)
    orders = {}
    for name, channel in (("张三", "alipay_qr"), ("李梅", "unionpay_qr")):
        o = order(live, h, channel, [{"resident_ref": ref(live, h, name, people[name]),
                                      "insurance": "medical"}]).json()
        pay(live, o["payment"]["out_trade_no"])
        orders[channel] = o
    # two full refunds of one order asked at the same moment: one is taken, one refused
    answers: list[Any] = []
    no = orders["alipay_qr"]["order_no"]
    threads = [threading.Thread(target=lambda hh=hh: answers.append(_request(live, hh, no)))
               for hh in (fin1, fin2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [201, 409]
    taken = next(a for a in answers if a.status_code == 201).json()
    refused = next(a for a in answers if a.status_code == 409).json()["error"]
    assert (refused["code"], refused["requested_fen"], refused["refundable_fen"]) == (
        "refund_exceeds_refundable", MEDICAL, 0)
    # a rejected refund gives the money back to what is refundable
    rejected = _act(live, fin2 if taken["requested_by"] == "fin1" else fin1,
                    taken["refund_id"], "reject", reason="不符合退费条件")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert rejected.json()["reject_reason"] == "不符合退费条件"
    ids = []
    for channel, o in orders.items():
        r = _request(live, fin1, o["order_no"])
        assert r.status_code == 201, r.text
        assert (r.json()["channel"], r.json()["amount_fen"]) == (channel.split("_")[0], MEDICAL)
        ids.append(r.json()["refund_id"])
        assert _act(live, fin2, ids[-1], "approve").json()["status"] == "approved"
    while run_due(live.rt):
        pass
    for o in orders.values():
        seen = get_order(live, h, o["order_no"])
        assert (seen["status"], seen["refunded_fen"]) == ("refunded", MEDICAL)
        assert live.http.get(f"/sandbox/trades/{o['payment']['out_trade_no']}"
                             ).json()["refunded_fen"] == MEDICAL
    _ledger_checks(live, ids)
    day = _daily(live, fin1)
    assert day["alipay"]["refunded_fen"] == day["unionpay"]["refunded_fen"] == MEDICAL


def test_a_cash_refund_is_paid_back_by_the_agent(live: Live) -> None:
    people = seed(live.rt)
    staff = _staff(live)
    fin1, fin2 = staff["fin1"], staff["fin2"]
    agent = staff_headers(live)
    items = [{"resident_ref": ref(live, agent, "张三", people["张三"]), "insurance": "medical"}]
    collected = live.http.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "items": items, "method": "cash", "receipt_no": "R-1"})
    assert collected.status_code == 201, collected.text
    order_no = collected.json()["order_no"]
    r = _request(live, fin1, order_no, reason="重复缴费")
    assert r.status_code == 201 and r.json()["method"] == "cash", r.text
    rid = r.json()["refund_id"]
    # not before it is approved
    paid = live.http.post(f"/api/v1/agent/refunds/{rid}/paid", headers=agent,
                          json={"receipt_no": "TK-1"})
    assert paid.status_code == 409 and paid.json()["error"]["code"] == "refund_not_pending"
    assert _act(live, fin2, rid, "approve").json()["status"] == "awaiting_cash"
    assert run_due(live.rt) == 0            # nothing for a channel to do
    # an agent of another village does not see it
    assert live.http.post(f"/api/v1/agent/refunds/{rid}/paid", headers=staff["agent2"],
                          json={"receipt_no": "TK-1"}).status_code == 404
    paid = live.http.post(f"/api/v1/agent/refunds/{rid}/paid", headers=agent,
                          json={"receipt_no": "TK-1"})
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["cash_receipt_no"]) == ("succeeded", "TK-1")
    again = live.http.post(f"/api/v1/agent/refunds/{rid}/paid", headers=agent,
                           json={"receipt_no": "TK-1"})
    assert again.status_code == 200 and again.json() == paid.json()
    _ledger_checks(live, [rid])
    day = _daily(live, fin1)["cash"]
    assert (day["amount_fen"], day["refunded_fen"], day["outstanding_fen"]) == (MEDICAL, MEDICAL,
                                                                                0)
    assert get_order(live, fin1, order_no)["status"] == "refunded"
    # the item is payable again: the agent collects it anew
    collected = live.http.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "items": items, "method": "cash", "receipt_no": "R-2"})
    assert collected.status_code == 201, collected.text
