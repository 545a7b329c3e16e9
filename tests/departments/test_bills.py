"""Department bills (代缴通知单): claims, exclusions, supplements, transfers, the ledger —
through HTTP on both databases."""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import openpyxl
from sqlalchemy import func, select, text
from sqlmodel import col

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.departments.models import DepartmentListing
from backend.ledger import service as ledger
from backend.orders.models import BillLine, Payment, PaymentLine
from backend.residents.models import Death, Resident
from tests.agents.test_agent_money import collect
from tests.conftest import Live
from tests.factories import OTHER_TOWN, OTHER_VILLAGE, TOWN, VILLAGE, add_resident
from tests.orders.helpers import ref, seed, staff_headers

BILLS = "/api/v1/departments"


def listed(live: Live, name: str, department: str, insurance: str) -> None:
    with unit_of_work(live.rt.sessions) as s:
        rid = s.scalar(select(col(Resident.id)).where(col(Resident.name) == name))
        s.add(DepartmentListing(department=department, resident_id=rid, insurance=insurance,
                                year=2021))


def town_setup(live: Live) -> dict[str, str]:
    """seed()'s village, plus: 赵六 (severely disabled: 残联 pays pension tier 100), 钱七
    (建档立卡: 扶贫办 and 民政 both list him), 孙八 (died 2020), 周九 (employee medical),
    吴十 (another town); town staff of TOWN and finance."""
    people = seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        for name, born, seq, kw in [
                ("赵六", date(1975, 4, 1), 31, {"categories": "disabled_severe"}),
                ("钱七", date(1966, 2, 2), 32, {"categories": "dibao;jianli_poverty"}),
                ("孙八", date(1950, 1, 1), 33, {"categories": "dibao"}),
                ("周九", date(1970, 6, 6), 34, {"employee_medical": True}),
                ("吴十", date(1971, 7, 7), 35, {"categories": "dibao",
                                                "village": OTHER_VILLAGE})]:
            _, people[name] = add_resident(s, live.rt.pii, name, born, seq=seq, **kw)  # type: ignore[arg-type]
        s.add(Death(id_hash=live.rt.pii.hash(people["孙八"]), id_masked="x", name="孙八",
                    died_on=date(2020, 6, 1)))
        create_staff_user(s, username="town1", password="town-pass1", role="town_staff",
                          town_code=TOWN)
        create_staff_user(s, username="town2", password="town-pass2", role="town_staff",
                          town_code=OTHER_TOWN)
        create_staff_user(s, username="fin1", password="fin-pass1", role="finance")
        create_staff_user(s, username="dept1", password="dept-pass1", role="department",
                          department="civil_affairs")
    return people


def issue(live: Live, h: dict[str, str], department: str, town: str = TOWN) -> Any:
    return live.http.post(f"{BILLS}/{department}/bills", headers=h,
                          json={"year": 2021, "town_code": town})


def transfer(live: Live, h: dict[str, str], bill_no: str, amount: int, reference: str,
             key: str | None = None) -> Any:
    headers = dict(h) | ({"Idempotency-Key": key} if key else {})
    return live.http.post(f"{BILLS}/bills/{bill_no}/transfers", headers=headers, json={
        "amount_fen": amount, "bank_reference": reference, "value_date": "2020-11-02"})


def lookup_item(live: Live, h: dict[str, str], name: str, number: str,
                insurance: str) -> dict[str, Any]:
    r = live.http.post("/api/v1/residents/lookup", headers=h,
                       json={"name": name, "id_number": number, "year": 2021})
    assert r.status_code == 200, r.text
    return next(i for i in r.json()["items"] if i["insurance"] == insurance)


def test_a_bill_claims_its_lines_and_says_who_it_left_out(live: Live) -> None:
    people = town_setup(live)
    agent, town = staff_headers(live), staff_headers(live, "town1", "town-pass1")
    # 李梅 paid her medical in cash before 民政 listed her: left out, already paid
    li = ref(live, agent, "李梅", people["李梅"])
    assert collect(live, agent, [{"resident_ref": li, "insurance": "medical"}],
                   "R-1").status_code == 201  # type: ignore[attr-defined]
    for name in ("王芳", "钱七", "孙八", "周九", "李梅", "吴十"):
        listed(live, name, "civil_affairs", "medical")
    listed(live, "钱七", "poverty_office", "medical")
    listed(live, "赵六", "disabled_federation", "pension")

    r = issue(live, town, "civil_affairs")
    assert r.status_code == 201, r.text
    bill = r.json()
    assert bill["kind"] == "bill" and bill["status"] == "issued"
    assert bill["department"] == "civil_affairs" and bill["town_code"] == TOWN
    assert [(line["name"], line["insurance"], line["amount_fen"]) for line in bill["lines"]] \
        == [("王*", "medical", 28000)]
    assert bill["total_fen"] == 28000 and bill["outstanding_fen"] == 28000
    assert sorted((e["name"], e["reason"]) for e in bill["excluded"]) == [
        ("周*", "not_eligible"), ("孙*", "deceased"), ("李*", "already_paid"),
        ("钱*", "claimed_by_other_department")]     # 吴十 lives in another town
    assert bill["lines"][0]["id_number_masked"].count("*") == 8
    for number in people.values():
        assert number not in r.text
    assert "王芳" not in r.text

    # the lookup shows the claim; the resident and the agent cannot order it
    item = lookup_item(live, agent, "王芳", people["王芳"], "medical")
    assert item["status"] == "government_paid" and item["paying_department"] == "civil_affairs"
    assert item["department_bill"] == {"bill_no": bill["bill_no"], "status": "issued"}
    assert item["payable"] is False

    # 残联's bill claims 赵六's pension at tier 100; he can no longer top it up himself
    zhao = ref(live, agent, "赵六", people["赵六"])
    cl = issue(live, town, "disabled_federation").json()
    assert [(x["insurance"], x["tier_yuan"], x["amount_fen"]) for x in cl["lines"]] == [
        ("pension", 100, 10000)]
    refused = collect(live, agent, [{"resident_ref": zhao, "insurance": "pension",
                                     "tier_yuan": 300}], "R-2")
    assert refused.status_code == 409  # type: ignore[attr-defined]
    assert refused.json()["error"]["reason"] == "government_paid"  # type: ignore[attr-defined]

    # again with nobody new: 409; a new person on the list: a supplement of only them
    again = issue(live, town, "civil_affairs")
    assert again.status_code == 409 and again.json()["error"]["code"] == "nothing_to_bill"
    listed(live, "张三", "civil_affairs", "medical")     # not in a hardship group: listed all
    supplement = issue(live, town, "civil_affairs").json()
    assert supplement["kind"] == "supplement"
    assert [x["name"] for x in supplement["lines"]] == ["张*"]

    # scope: another town's staff, an agent, a department user issuing: 403; unknown: 404/422
    assert issue(live, staff_headers(live, "town2", "town-pass2"), "civil_affairs").status_code \
        == 403
    assert issue(live, agent, "civil_affairs").status_code == 403
    dept = staff_headers(live, "dept1", "dept-pass1")
    assert issue(live, dept, "civil_affairs").status_code == 403
    fin = staff_headers(live, "fin1", "fin-pass1")
    assert issue(live, fin, "civil_affairs", town="999").status_code == 404
    assert issue(live, fin, "police").status_code == 422
    # reading: the department its own bill, another department's not at all
    assert live.http.get(f"{BILLS}/bills/{bill['bill_no']}", headers=dept).status_code == 200
    assert live.http.get(f"{BILLS}/bills/{cl['bill_no']}", headers=dept).status_code == 404


def test_partial_transfers_then_the_whole_bill_is_paid_at_once(live: Live) -> None:
    people = town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("王芳", "钱七", "孙八"):
        listed(live, name, "civil_affairs", "medical")
    listed(live, "钱七", "poverty_office", "medical")
    listed(live, "李梅", "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    no, total = bill["bill_no"], bill["total_fen"]
    assert total == 56000        # 王芳 and 李梅; 钱七 is 扶贫办's, 孙八 died

    too_much = transfer(live, town, no, total + 1, "B-0")
    assert too_much.status_code == 409
    assert too_much.json()["error"] == {
        "code": "transfer_exceeds_outstanding", "outstanding_fen": total,
        "message": too_much.json()["error"]["message"]}
    first = transfer(live, town, no, 20000, "B-1", key="t-1")
    assert first.status_code == 201, first.text
    assert (first.json()["status"], first.json()["received_fen"],
            first.json()["outstanding_fen"]) == ("partially_paid", 20000, 36000)
    # the same request again (same key): the same answer, recorded once
    replay = transfer(live, town, no, 20000, "B-1", key="t-1")
    assert replay.status_code == 201 and replay.json()["received_fen"] == 20000
    dup = transfer(live, town, no, 1000, "B-1")
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_bank_reference"
    # partly paid: the lines are not paid yet; the money sits in the receivable
    item = lookup_item(live, town, "王芳", people["王芳"], "medical")
    assert item["department_bill"]["status"] == "partially_paid"
    with unit_of_work(live.rt.sessions) as s:
        assert ledger.balance(s, ledger.department_receivable("civil_affairs")) == -20000
        assert s.scalar(select(func.count()).select_from(BillLine)
                        .where(col(BillLine.status) == "paid")) == 0
    future = live.http.post(f"{BILLS}/bills/{no}/transfers", headers=town, json={
        "amount_fen": 100, "bank_reference": "B-9", "value_date": "2020-11-03"})
    assert future.status_code == 422 and "value_date" in future.json()["error"]["message"]

    last = transfer(live, town, no, 36000, "B-2")
    assert last.status_code == 201, last.text
    done = last.json()
    assert (done["status"], done["outstanding_fen"], done["received_fen"]) == ("paid", 0, total)
    assert [t["bank_reference"] for t in done["transfers"]] == ["B-1", "B-2"]
    assert transfer(live, town, no, 1, "B-3").json()["error"]["outstanding_fen"] == 0
    item = lookup_item(live, town, "王芳", people["王芳"], "medical")
    assert item["status"] == "government_paid"
    assert item["department_bill"] == {"bill_no": no, "status": "paid"}

    with unit_of_work(live.rt.sessions) as s:
        paid = s.execute(select(col(BillLine.status), col(BillLine.paid_fen))
                         .where(col(BillLine.claim_bill_id).isnot(None))).all()
        assert sorted(paid) == [("paid", 28000), ("paid", 28000)]
        payments = s.scalars(select(Payment).where(col(Payment.channel) == "department")).all()
        assert [(p.amount_fen, p.transaction_id) for p in payments] == [(total, no)]
        assert s.scalar(select(func.count()).select_from(PaymentLine)
                        .where(col(PaymentLine.applied))) == 2
        assert ledger.balance(s, ledger.department_receivable("civil_affairs")) == 0
        assert ledger.balance(s, ledger.town_collection(TOWN)) == total
        assert ledger.balance(s, ledger.contributions("medical", 2021)) == -total
        # one entry per transfer, one for the cover; postings per town, not per resident
        kinds = s.execute(text(
            "SELECT e.kind, COUNT(p.id), MIN(p.village_code) FROM journal_entries e "
            "JOIN postings p ON p.entry_id = e.id GROUP BY e.id, e.kind ORDER BY e.id")).all()
        assert [tuple(k) for k in kinds] == [("department_transfer", 2, None),
                                             ("department_transfer", 2, None),
                                             ("department_payment", 2, None)]
    # the daily ledger: one department row for the town, counting both items
    daily = live.http.get("/api/v1/ledger/daily", headers=town,
                          params={"date": "2020-11-02"}).json()
    rows = [r for r in daily["rows"] if r["channel"] == "department"]
    assert [(r["town_code"], r["village_code"], r["count"], r["amount_fen"]) for r in rows] == [
        (TOWN, None, 2, total)]
    # the village's paid list (已缴费名单) shows the department's items as paid by it
    paid = live.http.get(f"/api/v1/publications/{VILLAGE}/paid.xlsx", headers=town,
                         params={"year": 2021})
    assert paid.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(paid.content)).worksheets[0]
    cells = [" ".join(str(c) for c in row if c is not None) for row in sheet.iter_rows(
        values_only=True)]
    assert any("王*" in line and "部门代缴" in line for line in cells), cells


def test_a_person_on_two_departments_lists_is_paid_once(live: Live) -> None:
    town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    listed(live, "钱七", "civil_affairs", "medical")
    listed(live, "钱七", "poverty_office", "medical")
    civil = issue(live, town, "civil_affairs")
    assert civil.status_code == 409     # 钱七 is 扶贫办's: nothing for 民政
    poverty = issue(live, town, "poverty_office").json()
    assert [x["name"] for x in poverty["lines"]] == ["钱*"]
    assert transfer(live, town, poverty["bill_no"], 28000, "P-1").json()["status"] == "paid"
    assert issue(live, town, "civil_affairs").status_code == 409
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(func.count()).select_from(PaymentLine)
                        .where(col(PaymentLine.applied))) == 1
        assert ledger.balance(s, ledger.contributions("medical", 2021)) == -28000


def test_a_claim_racing_an_agents_collection_for_the_same_item_one_wins(live: Live) -> None:
    """Round after round, 残联's bill and the village agent take 赵's pension at the same
    moment (the agent his tier-300 top-up in cash): exactly one of them applies, the other
    is refused, and the bill line is either claimed or paid once — never both."""
    import threading

    seed(live.rt)
    people: dict[str, str] = {}
    with unit_of_work(live.rt.sessions) as s:
        for n in range(6):
            name = f"赵{'一二三四五六'[n]}"
            _, people[name] = add_resident(s, live.rt.pii, name, date(1975, 1, 1 + n),
                                           seq=60 + n, categories="disabled_severe")
        create_staff_user(s, username="town1", password="town-pass1", role="town_staff",
                          town_code=TOWN)
    agent, town = staff_headers(live), staff_headers(live, "town1", "town-pass1")
    refs = {name: ref(live, agent, name, number) for name, number in people.items()}
    outcomes = []
    for n, name in enumerate(people):
        listed(live, name, "disabled_federation", "pension")
        go = threading.Barrier(2)
        answers: dict[str, Any] = {}

        def bill(go: threading.Barrier = go, answers: dict[str, Any] = answers) -> None:
            go.wait()
            answers["bill"] = issue(live, town, "disabled_federation")

        def cash(name: str = name, n: int = n, go: threading.Barrier = go,
                 answers: dict[str, Any] = answers) -> None:
            go.wait()
            answers["cash"] = collect(live, agent, [{"resident_ref": refs[name],
                                                     "insurance": "pension",
                                                     "tier_yuan": 300}], f"RACE-{n}")

        threads = [threading.Thread(target=bill), threading.Thread(target=cash)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        b, c = answers["bill"], answers["cash"]
        billed = b.status_code == 201 and [x["name"] for x in b.json()["lines"]] == [name[0] + "*"]
        collected = c.status_code == 201
        assert billed != collected, (b.text, c.text)
        if billed:
            assert c.json()["error"]["reason"] == "government_paid"
        else:
            assert b.status_code == 409 or [e["reason"] for e in b.json()["excluded"]] == [
                "already_paid"]
        outcomes.append("bill" if billed else "cash")
    with unit_of_work(live.rt.sessions) as s:
        lines = s.execute(select(col(BillLine.status), col(BillLine.claim_bill_id))
                          .where(col(BillLine.insurance) == "pension")).all()
        assert sorted(st for st, _ in lines) == sorted(
            "claimed" if o == "bill" else "paid" for o in outcomes)
        assert all((st == "claimed") == (claim is not None) for st, claim in lines)
        assert s.scalar(select(func.count()).select_from(PaymentLine)
                        .where(col(PaymentLine.applied))) == outcomes.count("cash")


def test_a_late_payment_for_a_claimed_item_is_refunded_not_applied(live: Live) -> None:
    """The resident's QR order expired on our side but stayed open in the wallet; the bill
    claimed the item; then the wallet paid. The money is kept and refunded; the claim holds."""
    from tests.orders.helpers import order, pay, resident_headers

    people = town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    me = resident_headers(live)
    zhao = ref(live, me, "赵六", people["赵六"])
    made = order(live, me, "wechat_native", [{"resident_ref": zhao, "insurance": "pension",
                                              "tier_yuan": 300}])
    assert made.status_code == 201, made.text
    o = made.json()
    with unit_of_work(live.rt.sessions) as s:
        s.execute(text("UPDATE orders SET expires_at = :t WHERE order_no = :n"),
                  {"t": live.rt.clock.now(), "n": o["order_no"]})
    listed(live, "赵六", "disabled_federation", "pension")
    bill = issue(live, town, "disabled_federation").json()
    assert [x["name"] for x in bill["lines"]] == ["赵*"]
    pay(live, o["payment"]["out_trade_no"])
    with unit_of_work(live.rt.sessions) as s:
        status = s.scalar(select(col(BillLine.status)).where(
            col(BillLine.insurance) == "pension"))
        assert status == "claimed"
        assert s.scalar(select(func.count()).select_from(PaymentLine)
                        .where(col(PaymentLine.applied))) == 0
        refunds = s.execute(text("SELECT amount_fen, reason FROM refunds")).all()
        assert [tuple(r) for r in refunds] == [(20000, "duplicate")]


def test_a_credit_note_takes_a_line_off_and_releases_or_owes_it_back(live: Live) -> None:
    people = town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("王芳", "李梅", "张三"):
        listed(live, name, "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    no = bill["bill_no"]
    assert bill["total_fen"] == 84000
    wang = next(x for x in bill["lines"] if x["name"] == "王*")
    zhang = next(x for x in bill["lines"] if x["name"] == "张*")
    assert transfer(live, town, no, 30000, "C-1").status_code == 201
    # 张三 turns out to be in the employees' scheme: credited, released, owed 28000 less
    r = live.http.post(f"{BILLS}/bills/{no}/credit-notes", headers=town, json={
        "items": [{"resident_ref": zhang["resident_ref"], "insurance": "medical"}],
        "reason": "not_eligible: employee medical"})
    assert r.status_code == 201, r.text
    after = r.json()
    assert (after["total_fen"], after["credited_fen"], after["outstanding_fen"]) == (
        84000, 28000, 26000)
    assert [n["amount_fen"] for n in after["credit_notes"]] == [28000]
    assert next(x for x in after["lines"] if x["name"] == "张*")["credit_note"] \
        == after["credit_notes"][0]["credit_no"]
    again = live.http.post(f"{BILLS}/bills/{no}/credit-notes", headers=town, json={
        "items": [{"resident_ref": zhang["resident_ref"], "insurance": "medical"}],
        "reason": "twice"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "line_already_credited"
    item = lookup_item(live, town, "张三", people["张三"], "medical")
    assert item["department_bill"] is None       # released: no longer claimed
    # the rest is covered: the bill is paid with the two lines left on it
    assert transfer(live, town, no, 26000, "C-2").json()["status"] == "paid"
    # after it is paid, 王芳's line credited: the money is owed back to the department
    r = live.http.post(f"{BILLS}/bills/{no}/credit-notes", headers=town, json={
        "items": [{"resident_ref": wang["resident_ref"], "insurance": "medical"}],
        "reason": "not_eligible"})
    assert r.json()["credit_notes"][-1]["refund_fen"] == 28000
    with unit_of_work(live.rt.sessions) as s:
        assert ledger.balance(s, ledger.REFUNDS) == -28000
        assert ledger.balance(s, ledger.contributions("medical", 2021)) == -28000
        assert s.scalar(select(func.count()).select_from(PaymentLine)
                        .where(col(PaymentLine.applied))) == 1     # 李梅's only
    item = lookup_item(live, town, "王芳", people["王芳"], "medical")
    assert item["department_bill"] is None and item["status"] == "government_paid"


def test_a_death_list_credits_the_dead_residents_lines_once(live: Live, tmp_path: Any) -> None:
    """王芳 is on 民政's bill, still unpaid; 张三 on a bill 民政 has paid. Both die in October
    2020, before the 2021 year starts: the death list credits both lines — 王芳's released,
    张三's owed back to the department — and importing it again changes nothing."""
    from backend.imports.service import run_import

    people = town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    listed(live, "张三", "civil_affairs", "medical")
    first = issue(live, town, "civil_affairs").json()           # 张三 (and no one else)
    assert transfer(live, town, first["bill_no"], 28000, "D-1").json()["status"] == "paid"
    listed(live, "王芳", "civil_affairs", "medical")
    second = issue(live, town, "civil_affairs").json()          # the supplement: 王芳
    assert [x["name"] for x in second["lines"]] == ["王*"]
    deaths = tmp_path / "deaths.csv"
    deaths.write_text("id_number,name,died_on\n"
                      f"{people['张三']},张三,2020-10-20\n{people['王芳']},王芳,2020-10-21\n",
                      encoding="utf-8")
    for _ in range(2):
        report = run_import(live.rt, "deaths", deaths, progress=False)
        assert report.committed
    fin = staff_headers(live, "fin1", "fin-pass1")
    paid = live.http.get(f"{BILLS}/bills/{first['bill_no']}", headers=fin).json()
    unpaid = live.http.get(f"{BILLS}/bills/{second['bill_no']}", headers=fin).json()
    assert [(n["reason"], n["amount_fen"], n["refund_fen"]) for n in paid["credit_notes"]] == [
        ("deceased", 28000, 28000)]
    assert [(n["reason"], n["amount_fen"], n["refund_fen"]) for n in unpaid["credit_notes"]] \
        == [("deceased", 28000, 0)]
    assert (unpaid["outstanding_fen"], unpaid["credited_fen"]) == (0, 28000)
    assert paid["overpaid_fen"] == 28000        # what the department is owed back
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(func.count()).select_from(BillLine)
                        .where(col(BillLine.claim_bill_id).isnot(None))) == 0
        assert ledger.balance(s, ledger.REFUNDS) == -28000
        # no channel refund for the department's money: its credit note owes it back
        assert s.scalar(text("SELECT COUNT(*) FROM refunds")) == 0


def test_the_declaration_lists_a_covered_bills_residents_and_agrees_with_the_ledger(
        live: Live) -> None:
    """A bill covered on 11-02: the day's declaration (申报入库) lists each of its residents
    with the registry's village, and its total is the ledger's."""
    from datetime import datetime

    from tests.declarations.test_declarations import _close

    people = town_setup(live)
    town, fin = staff_headers(live, "town1", "town-pass1"), staff_headers(live, "fin1",
                                                                          "fin-pass1")
    for name in ("王芳", "李梅"):
        listed(live, name, "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    transfer(live, town, bill["bill_no"], 30000, "E-1")
    assert transfer(live, town, bill["bill_no"], 26000, "E-2").json()["status"] == "paid"
    live.rt.clock.advance_to(datetime.fromisoformat("2020-11-03T10:00:00+08:00"))
    _close(live, fin, date(2020, 11, 2))
    r = live.http.get(f"/api/v1/declarations/{TOWN}/2020-11-02.csv", headers=fin)
    assert r.status_code == 200, r.text
    text_ = r.content.decode("utf-8-sig")
    for name in ("王芳", "李梅"):
        line = next(x for x in text_.splitlines() if people[name] in x)
        assert name in line and "28000" in line and VILLAGE in line
    daily = live.http.get("/api/v1/ledger/daily", headers=fin,
                          params={"date": "2020-11-02", "town": TOWN}).json()
    assert daily["totals"]["amount_fen"] == 56000
    assert "56000" in next(x for x in text_.splitlines() if x.startswith("汇总,合计"))


def test_a_credit_note_on_a_covered_bill_is_declared_as_a_refund(live: Live) -> None:
    """A bill covered on 11-02, 王芳's line credited on 11-03 (paid: owed back to the
    department). The credit unapplies her payment line without a refund row: 11-02's
    declaration still lists her item paid, and 11-03's lists it given back — both agree
    with the ledger (they were refused with declaration_mismatch)."""
    from datetime import datetime

    from tests.declarations.test_declarations import _close

    people = town_setup(live)
    town, fin = staff_headers(live, "town1", "town-pass1"), staff_headers(live, "fin1",
                                                                          "fin-pass1")
    for name in ("王芳", "李梅"):
        listed(live, name, "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    assert transfer(live, town, bill["bill_no"], 56000, "F-1").json()["status"] == "paid"
    wang = next(x for x in bill["lines"] if x["name"] == "王*")
    live.rt.clock.advance_to(datetime.fromisoformat("2020-11-03T10:00:00+08:00"))
    _close(live, fin, date(2020, 11, 2))
    r = live.http.post(f"{BILLS}/bills/{bill['bill_no']}/credit-notes", headers=town, json={
        "items": [{"resident_ref": wang["resident_ref"], "insurance": "medical"}],
        "reason": "not_eligible"})
    assert r.json()["credit_notes"][-1]["refund_fen"] == 28000
    note = r.json()["credit_notes"][-1]["credit_no"]
    live.rt.clock.advance_to(datetime.fromisoformat("2020-11-04T10:00:00+08:00"))
    _close(live, fin, date(2020, 11, 3))
    paid = live.http.get(f"/api/v1/declarations/{TOWN}/2020-11-02.csv", headers=fin)
    assert paid.status_code == 200, paid.text
    assert "56000" in next(x for x in paid.content.decode("utf-8-sig").splitlines()
                           if x.startswith("汇总,合计"))
    back = live.http.get(f"/api/v1/declarations/{TOWN}/2020-11-03.csv", headers=fin)
    assert back.status_code == 200, back.text
    lines = back.content.decode("utf-8-sig").splitlines()
    row = next(x for x in lines if people["王芳"] in x)
    assert "退费" in row and "-28000" in row and note in row and VILLAGE in row
    assert not any(people["李梅"] in x for x in lines)
    assert next(x for x in lines if x.startswith("汇总,合计")).split(",")[2:7] == [
        "0", "0", "1", "28000", "-28000"]


def test_a_list_that_came_after_the_due_date_is_billed_with_a_warning(
        live: Live, tmp_path: Any) -> None:
    """The plan wants the lists by 10-31. The business clock dates the import: 民政's list
    imported on 10-20 gives a plain bill; 残联's, imported on 11-02 (today), a warning."""
    from datetime import datetime

    from backend.imports.service import run_import

    people = town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    with unit_of_work(live.rt.sessions) as s:
        rid = s.scalar(select(col(Resident.id)).where(col(Resident.name) == "王芳"))
        s.add(DepartmentListing(department="civil_affairs", resident_id=rid, insurance="medical",
                                year=2021, imported_at=datetime.fromisoformat(
                                    "2020-10-20T10:00:00+08:00")))
    late = tmp_path / "cl.csv"
    late.write_text("department,id_number,name,insurance,year\n"
                    f"disabled_federation,{people['赵六']},赵六,pension,2021\n", encoding="utf-8")
    assert run_import(live.rt, "departments", late, progress=False).committed
    on_time = issue(live, town, "civil_affairs").json()
    assert on_time["warnings"] == []
    warned = issue(live, town, "disabled_federation").json()
    assert len(warned["warnings"]) == 1 and "due date" in warned["warnings"][0]


def test_a_bill_credited_whole_after_a_partial_transfer_owes_the_transfer_back(
        live: Live) -> None:
    town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    listed(live, "王芳", "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    assert transfer(live, town, bill["bill_no"], 10000, "F-1").status_code == 201
    r = live.http.post(f"{BILLS}/bills/{bill['bill_no']}/credit-notes", headers=town, json={
        "items": [{"resident_ref": bill["lines"][0]["resident_ref"], "insurance": "medical"}],
        "reason": "not_eligible"})
    assert r.status_code == 201, r.text
    after = r.json()
    assert (after["outstanding_fen"], after["overpaid_fen"], after["paid_at"]) == (0, 10000, None)
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(func.count()).select_from(Payment)) == 0    # no empty payment
        # the 10000 received is owed back: out of the receivable into the refunds payable
        assert ledger.balance(s, ledger.department_receivable("civil_affairs")) == 0
        assert ledger.balance(s, ledger.REFUNDS) == -10000
    assert [n["refund_fen"] for n in after["credit_notes"]] == [10000]


def test_staff_and_departments_list_the_bills_they_may_read(live: Live) -> None:
    town_setup(live)
    town, fin = staff_headers(live, "town1", "town-pass1"), staff_headers(live, "fin1",
                                                                          "fin-pass1")
    dept = staff_headers(live, "dept1", "dept-pass1")              # 民政
    listed(live, "王芳", "civil_affairs", "medical")
    listed(live, "赵六", "disabled_federation", "pension")
    civil = issue(live, town, "civil_affairs").json()
    cl = issue(live, town, "disabled_federation").json()
    transfer(live, town, civil["bill_no"], 10000, "L-1")

    def listed_bills(h: dict[str, str], **params: Any) -> list[tuple[str, str, int]]:
        r = live.http.get(f"{BILLS}/bills", headers=h, params=params)
        assert r.status_code == 200, r.text
        return [(b["bill_no"], b["status"], b["outstanding_fen"]) for b in r.json()["bills"]]

    assert listed_bills(fin) == [(cl["bill_no"], "issued", 10000),
                                 (civil["bill_no"], "partially_paid", 18000)]
    assert listed_bills(town, year=2021, department="civil_affairs") == [
        (civil["bill_no"], "partially_paid", 18000)]
    assert listed_bills(dept) == [(civil["bill_no"], "partially_paid", 18000)]
    assert live.http.get(f"{BILLS}/bills", headers=dept,
                         params={"department": "health"}).status_code == 403
    assert live.http.get(f"{BILLS}/bills", headers=town,
                         params={"town": OTHER_TOWN}).status_code == 403
    assert live.http.get(f"{BILLS}/bills", headers=staff_headers(live)).status_code == 403
