"""Receipts (缴费凭证) through the whole service, on both databases: one for every kind of
payment, checkable by anyone at /r/<token> and offline; a changed token refused and
counted; refunds beside an unchanged receipt; who may read one; no full ID number."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col

from backend.__main__ import main
from backend.db import unit_of_work
from backend.outbox.service import run_due
from backend.receipts import service as receipts
from backend.receipts.models import Receipt
from tests.agents.test_agent_money import collect
from tests.conftest import Live
from tests.departments.test_bills import issue, listed, town_setup, transfer
from tests.factories import VILLAGE
from tests.orders.helpers import (
    get_order,
    order,
    pay,
    ref,
    resident_headers,
    seed,
    staff_headers,
    two_orders_for_one_item,
)
from tests.refunds.test_refunds import _act, _request, _staff

REPO = Path(__file__).resolve().parent.parent.parent
MEDICAL, PENSION_300 = 28000, 30000
RECEIPT_KEYS = {"receipt_no", "payer", "items", "amount_fen", "channel", "paid_at",
                "business_date", "agent", "paper_receipt_no", "refunded_fen", "verify_url"}
CHECK_KEYS = {"valid", "receipt_no", "amount_fen", "business_date", "refunded_fen", "payer"}
JSON = {"Accept": "application/json"}


def _receipt(live: Live, h: dict[str, str], receipt_no: str) -> dict[str, Any]:
    r = live.http.get(f"/api/v1/receipts/{receipt_no}", headers=h)
    assert r.status_code == 200, r.text
    assert set(r.json()) == RECEIPT_KEYS
    return dict(r.json())


def _check(live: Live, url: str) -> dict[str, Any]:
    """The public check as JSON, from the URL the QR code holds."""
    assert url.startswith(live.base_url + "/r/")
    r = live.http.get(url.removeprefix(live.base_url), headers=JSON)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert set(r.json()) == CHECK_KEYS
    return dict(r.json())


def _page(live: Live, url: str) -> str:
    r = live.http.get(url.removeprefix(live.base_url), headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script" not in r.text
    return r.text


def _invalid_count() -> float:
    return REGISTRY.get_sample_value("collect_receipt_verifications_total",
                                     {"outcome": "invalid"}) or 0.0


def _paid_order(live: Live, h: dict[str, str], channel: str,
                items: list[dict[str, Any]]) -> dict[str, Any]:
    made = order(live, h, channel, items)
    assert made.status_code == 201, made.text
    assert made.json()["receipt_no"] is None and made.json()["receipt_url"] is None
    pay(live, made.json()["payment"]["out_trade_no"])
    paid = get_order(live, h, made.json()["order_no"])
    assert paid["status"] == "paid"
    return paid


def _no_full_id(numbers: list[str], *texts: str) -> None:
    for number in numbers:
        for t in texts:
            assert number not in t and number[6:14] not in t


# --------------------------------------------------------------------------- every kind
@pytest.mark.parametrize("channel,paid_by", [("wechat_jsapi", "wechat"),
                                             ("alipay_qr", "alipay"),
                                             ("unionpay_qr", "unionpay")])
def test_an_online_payment_has_a_receipt_anyone_can_check(live: Live, channel: str,
                                                          paid_by: str) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    zhang, li = ref(live, h, "张三", people["张三"]), ref(live, h, "李梅", people["李梅"])
    paid = _paid_order(live, h, channel, [
        {"resident_ref": li, "insurance": "medical"},
        {"resident_ref": zhang, "insurance": "pension", "tier_yuan": 300}])
    no, url = paid["receipt_no"], paid["receipt_url"]
    assert re.fullmatch(r"R20201102\d{8}", no)
    receipt = _receipt(live, h, no)
    assert receipt["receipt_no"] == no and receipt["verify_url"] == url
    # a household: the payer is the order's first resident; each item says whose it is
    assert receipt["payer"] == {"name": "李*", "id_number_masked":
                                people["李梅"][:6] + "********" + people["李梅"][-4:]}
    assert [(i["insurance"], i["amount_fen"], i["name"], i["count"]) for i in receipt["items"]
            ] == [("medical", MEDICAL, "李*", 1), ("pension", PENSION_300, "张*", 1)]
    assert (receipt["amount_fen"], receipt["channel"], receipt["business_date"],
            receipt["agent"], receipt["paper_receipt_no"], receipt["refunded_fen"]) == (
        MEDICAL + PENSION_300, paid_by, "2020-11-02", None, None, 0)
    assert receipt["paid_at"].startswith("2020-11-02T") and receipt["paid_at"].endswith(
        "+08:00")
    # asked again: the same receipt, the same token
    assert get_order(live, h, paid["order_no"])["receipt_url"] == url
    assert _check(live, url) == {
        "valid": True, "receipt_no": no, "amount_fen": MEDICAL + PENSION_300,
        "business_date": "2020-11-02", "refunded_fen": 0, "payer": receipt["payer"]}
    page = _page(live, url)
    assert "有效凭证" in page and no in page and "李*" in page and "张*" in page
    assert "580.00" in page and "城乡居民基本医疗保险" in page
    _no_full_id(list(people.values()), json.dumps(paid), json.dumps(receipt), page)


def test_an_agents_cash_and_pos_collections_carry_their_receipts(live: Live) -> None:
    people = seed(live.rt)
    agent = staff_headers(live)
    zhang, li = ref(live, agent, "张三", people["张三"]), ref(live, agent, "李梅", people["李梅"])
    for who, method, paper in ((zhang, "cash", "SJ-0001"), (li, "pos", "SJ-0002")):
        r = collect(live, agent, [{"resident_ref": who, "insurance": "medical"}], paper,
                    method=method)
        assert r.status_code == 201, r.text  # type: ignore[attr-defined]
        out = r.json()  # type: ignore[attr-defined]
        assert out["receipt_no"] == paper            # the paper receipt, as before
        receipt = out["receipt"]
        assert set(receipt) == RECEIPT_KEYS
        # the agent by village and staff number: never the login name (half a credential)
        assert receipt["agent"].startswith("东村代办员 工号")
        assert (receipt["channel"], receipt["paper_receipt_no"],
                receipt["amount_fen"]) == (method, paper, MEDICAL)
        assert receipt["verify_url"] == out["receipt_url"]
        base = f"{live.base_url}/api/v1/receipts/{receipt['receipt_no']}"
        assert (out["receipt_png_url"], out["receipt_pdf_url"]) == (base + ".png",
                                                                    base + ".pdf")
        # the agent reads it again, the same; anyone checks it
        assert _receipt(live, agent, receipt["receipt_no"]) == receipt
        assert _check(live, out["receipt_url"])["valid"] is True
        page = _page(live, out["receipt_url"])
        assert "代收人" in page and paper in page and receipt["agent"] in page
        assert "agent1" not in page and "agent1" not in out["receipt_url"]
        # the order answer of a collection carries it too (the agent made the order)
        assert get_order(live, agent, out["order_no"])["receipt_url"] == out["receipt_url"]
        _no_full_id(list(people.values()), r.text, page)  # type: ignore[attr-defined]


def test_the_receipt_files_carry_its_qr_code_and_no_full_id_number(live: Live) -> None:
    """The .png and .pdf of a receipt (58 mm), for whoever may read it: the PNG's QR code
    opens the check page; the PDF's text is the masked receipt."""
    import io

    import zxingcpp
    from PIL import Image
    from pypdf import PdfReader

    people = seed(live.rt)
    agent = staff_headers(live)
    out = collect(live, agent, [{"resident_ref": ref(live, agent, "张三", people["张三"]),
                                 "insurance": "medical"}], "SJ-9").json()  # type: ignore[attr-defined]
    png = live.http.get(out["receipt_png_url"].removeprefix(live.base_url), headers=agent)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    (code,) = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)))
    assert code.text == out["receipt_url"]
    assert _check(live, code.text)["valid"] is True
    pdf = live.http.get(out["receipt_pdf_url"].removeprefix(live.base_url), headers=agent)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "张*" in text and out["receipt"]["receipt_no"] in text and "张三" not in text
    _no_full_id(list(people.values()), text)
    other = resident_headers(live, "someone")
    assert live.http.get(out["receipt_png_url"].removeprefix(live.base_url),
                         headers=other).status_code == 404


def test_a_department_bill_has_one_receipt_for_the_department(live: Live) -> None:
    people = town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("王芳", "李梅"):
        listed(live, name, "civil_affairs", "medical")
    bill = issue(live, town, "civil_affairs").json()
    assert transfer(live, town, bill["bill_no"], bill["total_fen"], "B-1").status_code == 201
    with unit_of_work(live.rt.sessions) as s:      # issued when the bill was covered
        (issued,) = s.scalars(select(Receipt)).all()
        no = issued.receipt_no
    receipt = _receipt(live, town, no)
    assert receipt["payer"] == {"name": "民政局", "id_number_masked": None}
    assert receipt["items"] == [{"insurance": "medical", "amount_fen": 2 * MEDICAL,
                                 "name": None, "id_number_masked": None, "count": 2}]
    assert (receipt["channel"], receipt["amount_fen"]) == ("department", 2 * MEDICAL)
    # the department reads its own; another town's staff and an agent do not see it
    assert _receipt(live, staff_headers(live, "dept1", "dept-pass1"), no) == receipt
    for h in (staff_headers(live, "town2", "town-pass2"), staff_headers(live)):
        assert live.http.get(f"/api/v1/receipts/{no}", headers=h).status_code == 404
    check = _check(live, receipt["verify_url"])
    assert check["valid"] is True and check["payer"]["name"] == "民政局"
    page = _page(live, receipt["verify_url"])
    assert "2 人" in page and "部门代缴" in page
    _no_full_id(list(people.values()), page, json.dumps(receipt))


def test_a_duplicate_payment_has_its_own_receipt_and_its_refund_beside_it(live: Live) -> None:
    people = seed(live.rt)
    h1, o1, h2, o2 = two_orders_for_one_item(live, people, "wechat_native", "alipay_qr")
    for o in (o1, o2):
        pay(live, o["payment"]["out_trade_no"])
    first, second = get_order(live, h1, o1["order_no"]), get_order(live, h2, o2["order_no"])
    assert first["receipt_no"] and second["receipt_no"] != first["receipt_no"]
    assert second["refund_queued_fen"] == MEDICAL
    assert _check(live, second["receipt_url"])["refunded_fen"] == 0     # not refunded yet
    run_due(live.rt)                                                    # the worker refunds
    again = get_order(live, h2, o2["order_no"])
    assert again["refunded_fen"] == MEDICAL and again["receipt_url"] == second["receipt_url"]
    check = _check(live, second["receipt_url"])
    assert (check["valid"], check["amount_fen"], check["refunded_fen"]) == (True, MEDICAL,
                                                                            MEDICAL)
    assert "重复缴费，原路退回" in _page(live, second["receipt_url"])
    assert _check(live, first["receipt_url"])["refunded_fen"] == 0


# --------------------------------------------------------------------------- changed tokens
def _changed(token: str, at: int) -> str:
    c = token[at]
    return token[:at] + ("B" if c == "A" else "A") + token[at + 1:]


def test_a_token_with_one_character_changed_is_not_valid_online_or_offline(
        live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    paid = _paid_order(live, h, "alipay_qr", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}])
    url = paid["receipt_url"]
    token = url.rsplit("/r/", 1)[1]
    dot = token.index(".")
    pem = live.http.get("/r/public-key")
    assert pem.status_code == 200 and pem.text.startswith("-----BEGIN PUBLIC KEY-----")
    assert "max-age" in pem.headers["cache-control"]
    key_file = tmp_path / "receipts.pub.pem"
    key_file.write_text(pem.text)

    assert main(["receipts", "verify", url, "--public-key", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"VALID: receipt {paid['receipt_no']}") and "张*" in out
    assert "280.00" in out and people["张三"] not in out

    before = _invalid_count()
    for bad in (_changed(token, 10), _changed(token, dot - 3), _changed(token, dot + 5),
                _changed(token, len(token) - 2), token + "x", "R20201102000000001",
                "x" * 5000, token.replace(".", "")):
        check = live.http.get(f"/r/{bad}", headers=JSON)
        assert check.status_code == 200 and check.json() == {
            "valid": False, "receipt_no": None, "amount_fen": None, "business_date": None,
            "refunded_fen": None, "payer": None}, bad
        page = _page(live, f"{live.base_url}/r/{bad}")
        assert "不是有效凭证" in page and 'href="/r/report"' in page and "举报纸质收据" in page
        assert main(["receipts", "verify", f"{live.base_url}/r/{bad}",
                     "--public-key", str(key_file)]) == 1
        assert capsys.readouterr().out.startswith("NOT VALID")
    assert _invalid_count() - before == 16        # every one counted, page and JSON alike

    # offline without --public-key: the installation's own key (the sandbox generated it
    # into DATA_DIR); a usage error is 2
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
           "DATA_DIR": str(live.rt.settings.data_dir), "PAYMENT_SANDBOX": "1"}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "backend", "receipts", "verify", *argv],
                              env=env, capture_output=True, text=True, timeout=60)

    ok = cli(url)
    assert ok.returncode == 0 and ok.stdout.startswith("VALID"), ok.stdout + ok.stderr
    bad = cli(_changed(token, 10))
    assert bad.returncode == 1 and bad.stdout.startswith("NOT VALID"), bad.stdout + bad.stderr
    assert cli().returncode == 2
    no_key = subprocess.run([sys.executable, "-m", "backend", "receipts", "verify", url],
                            env=env | {"DATA_DIR": str(tmp_path / "empty")},
                            capture_output=True, text=True, timeout=60)
    assert no_key.returncode == 2 and "--public-key" in no_key.stderr
    assert cli(url, "--public-key", str(tmp_path / "missing.pem")).returncode == 2


def test_reserved_paths_are_not_tokens(live: Live) -> None:
    before = _invalid_count()
    # another page's (the form for reporting a paper receipt), never taken for a token
    form = httpx.get(f"{live.base_url}/r/report")
    assert form.status_code == 200 and "核对纸质收据" in form.text
    assert _invalid_count() == before
    key = live.http.get("/r/public-key").text
    assert receipts.load_public_key(key.encode()).public_bytes_raw() == (
        live.rt.receipt_key.public_key().public_bytes_raw())


# --------------------------------------------------------------------------- immutability
def test_a_refund_shows_beside_the_receipt_which_stays_as_issued(live: Live) -> None:
    people = seed(live.rt)
    staff = _staff(live)
    agent = staff_headers(live)
    r = collect(live, agent, [{"resident_ref": ref(live, agent, "张三", people["张三"]),
                               "insurance": "medical"}], "SJ-7")
    out = r.json()  # type: ignore[attr-defined]
    no, url = out["receipt"]["receipt_no"], out["receipt_url"]
    with unit_of_work(live.rt.sessions) as s:
        issued = s.get(Receipt, no)
        assert issued is not None
        canonical, signature = issued.canonical, issued.signature
    rid = _request(live, staff["fin1"], out["order_no"], reason="张三 重复缴费").json()[
        "refund_id"]
    assert _act(live, staff["fin2"], rid, "approve").json()["status"] == "awaiting_cash"
    assert live.http.post(f"/api/v1/agent/refunds/{rid}/paid", headers=agent,
                          json={"receipt_no": "TK-7"}).status_code == 200
    check = _check(live, url)
    assert (check["valid"], check["amount_fen"], check["refunded_fen"]) == (True, MEDICAL,
                                                                            MEDICAL)
    page = _page(live, url)
    assert "已退款 ¥280.00" in page and "退款列在凭证旁" in page
    assert "张三 重复缴费" not in page          # finance's own words are not published
    again = _receipt(live, staff["fin1"], no)
    assert again["verify_url"] == url and again["refunded_fen"] == MEDICAL
    assert get_order(live, staff["fin1"], out["order_no"])["receipt_url"] == url
    with unit_of_work(live.rt.sessions) as s:
        issued = s.get(Receipt, no)
        assert issued is not None
        assert (issued.canonical, issued.signature) == (canonical, signature)


def test_a_name_corrected_after_issue_leaves_the_receipt_as_issued(live: Live) -> None:
    people = seed(live.rt)
    h = resident_headers(live)
    paid = _paid_order(live, h, "wechat_jsapi", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}])
    with unit_of_work(live.rt.sessions) as s:
        s.execute(text("UPDATE residents SET name = '王三' WHERE name = '张三'"))
    receipt = _receipt(live, h, paid["receipt_no"])
    assert receipt["payer"]["name"] == "张*" and receipt["verify_url"] == paid["receipt_url"]
    assert _check(live, paid["receipt_url"])["payer"]["name"] == "张*"
    # and the database itself refuses to change or remove an issued receipt
    for sql in ("UPDATE receipts SET canonical = 'x'", "DELETE FROM receipts"):
        with pytest.raises(DBAPIError, match="immutable"):
            with unit_of_work(live.rt.sessions) as s:
                s.execute(text(sql))


# --------------------------------------------------------------------------- who may read
def test_the_payer_and_staff_in_scope_read_a_receipt_others_get_404(live: Live) -> None:
    people = seed(live.rt)
    staff = _staff(live)          # fin1, town1 (TOWN), town2 (OTHER_TOWN), agent2 (other village)
    from backend.auth.service import create_staff_user
    with unit_of_work(live.rt.sessions) as s:
        create_staff_user(s, username="audit1", password="audit-pass1", role="auditor")
        create_staff_user(s, username="dept1", password="dept-pass1", role="department",
                          department="civil_affairs")
    payer = resident_headers(live, "payer")
    paid = _paid_order(live, payer, "alipay_qr", [
        {"resident_ref": ref(live, payer, "王芳", people["王芳"]), "insurance": "pension",
         "tier_yuan": 100}])
    no = paid["receipt_no"]
    readers = [payer, staff["fin1"], staff["town1"], staff_headers(live),        # VILLAGE's
               staff_headers(live, "audit1", "audit-pass1")]
    answers = [_receipt(live, h, no) for h in readers]
    assert all(a == answers[0] for a in answers)
    for h in (resident_headers(live, "someone-else"), staff["town2"], staff["agent2"],
              staff_headers(live, "dept1", "dept-pass1")):
        r = live.http.get(f"/api/v1/receipts/{no}", headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert no in r.json()["error"]["message"]
    # numbers that name nothing answer the same: malformed, wrong date part, no payment
    day, pid = receipts.parse_receipt_no(no)  # type: ignore[misc]
    for other in ("R2020110200000000x", receipts.receipt_no_for(pid, day.replace(day=3)),
                  receipts.receipt_no_for(pid + 1000, day), "R20201102" + "0" * 9 + str(pid),
                  "anything"):
        assert live.http.get(f"/api/v1/receipts/{other}",
                             headers=staff["fin1"]).status_code == 404
    long = live.http.get("/api/v1/receipts/" + "R" * 5000, headers=staff["fin1"])
    assert long.status_code == 404 and len(long.json()["error"]["message"]) < 100
    assert live.http.get(f"/api/v1/receipts/{no}").status_code == 401
    assert live.http.get(f"/api/v1/receipts/{no}.pdf",
                         headers=resident_headers(live, "someone-else")).status_code == 404


# --------------------------------------------------------------------------- the pieces
def test_receipt_numbers_are_derived_from_the_payment_and_parse_back() -> None:
    from datetime import date

    day = date(2021, 10, 15)
    assert receipts.receipt_no_for(123, day) == "R2021101500000123"
    assert receipts.parse_receipt_no("R2021101500000123") == (day, 123)
    assert receipts.receipt_no_for(123456789, day) == "R20211015123456789"
    assert receipts.parse_receipt_no("R20211015123456789") == (day, 123456789)
    for bad in ("R202110150000012", "R2021101500000123 ", "r2021101500000123",
                "R2021133200000123", "R20211015000000123", "R2021101500000123.pdf"):
        assert receipts.parse_receipt_no(bad) is None, bad


def test_issuing_at_once_from_many_threads_gives_one_receipt(rt: Any) -> None:
    """Insert-if-absent, then read back: whoever inserts first, everyone gets that row."""
    import concurrent.futures as cf
    from datetime import date

    from backend.auth.service import create_staff_user
    from backend.orders.models import BillLine, Order, OrderLine, Payment, PaymentLine
    from tests.factories import add_regions, add_resident

    with unit_of_work(rt.sessions) as s:
        add_regions(s)
        create_staff_user(s, username="a1", password="agent-pass", role="agent",
                          village_code=VILLAGE)
        resident, _ = add_resident(s, rt.pii, "张三", date(1969, 3, 15), seq=11)
        now = rt.clock.now()
        o = Order(order_no="O-1", payer_sub="wx:x", payer_role="resident", year=2021,
                  channel="alipay_qr", status="paid", amount_fen=MEDICAL, expires_at=now)
        bill_line = BillLine(resident_id=resident.id, year=2021,  # type: ignore[arg-type]
                             insurance="medical", status="paid")
        s.add_all([o, bill_line])
        s.flush()
        s.add(OrderLine(order_id=o.id, bill_line_id=bill_line.id,  # type: ignore[arg-type]
                        resident_id=resident.id, insurance="medical", amount_fen=MEDICAL))
        p = Payment(order_id=o.id, channel="alipay", transaction_id="T1",  # type: ignore[arg-type]
                    amount_fen=MEDICAL, paid_at=now, business_date=rt.clock.today(),
                    source="notification")
        s.add(p)
        s.flush()
        s.add(PaymentLine(payment_id=p.id, bill_line_id=bill_line.id,  # type: ignore[arg-type]
                          amount_fen=MEDICAL, applied=True))
        pid = p.id

    def one(_: int) -> tuple[str, str, str]:
        with unit_of_work(rt.sessions) as s:
            r = receipts.issue(s, rt.receipt_key, pid, rt.clock.now())
            assert r is not None
            return r.receipt_no, r.canonical, r.signature

    with cf.ThreadPoolExecutor(6) as pool:
        got = set(pool.map(one, range(12)))
    assert len(got) == 1
    ((no, canonical, signature),) = got
    with unit_of_work(rt.sessions) as s:
        assert s.scalars(select(col(Receipt.receipt_no))).all() == [no]
    content = receipts.Content.parse(canonical.encode())
    assert json.loads(canonical) == [
        1, no, "alipay", "2020-11-02", content.paid_at.isoformat(), MEDICAL, "张*",
        content.payer_id_masked, [["medical", MEDICAL, "张*", content.payer_id_masked, 1]],
        None, None, "O-1", 2021]
    assert content.paid_at.isoformat().endswith("+08:00") and "." not in content.paid_at.isoformat()
    token = receipts.b64url(canonical.encode()) + "." + signature
    checked = receipts.check_token(rt.receipt_key.public_key(), token)
    assert checked is not None and checked.content == content
    # canonical means canonical: the same content written another way is not a receipt
    spaced = json.dumps(json.loads(canonical), ensure_ascii=False).encode()
    with pytest.raises(ValueError):
        receipts.Content.parse(spaced)
    forged = receipts.b64url(spaced) + "." + receipts.sign(rt.receipt_key, spaced)
    assert receipts.check_token(rt.receipt_key.public_key(), forged) is None


def test_no_other_character_anywhere_in_a_token_verifies() -> None:
    """Every position, every other character of the alphabet: the signature or the encoding
    refuses it. (Base64's last character can carry unused bits: a decoder that ignores them
    would take several texts for one token.)"""
    import string

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from backend.receipts.service import b64url, explain_token, sign

    key = Ed25519PrivateKey.generate()
    signed = ("valid", "signed, but not a receipt's content")   # the content is made up here
    alphabet = string.ascii_letters + string.digits + "-_."
    for size in (40, 41, 42):       # payloads of each length mod 3: 0, 4 or 2 unused bits
        canonical = ('[1,"R2020110200000001","' + "x" * size + '"]').encode()
        token = b64url(canonical) + "." + sign(key, canonical)
        assert explain_token(key.public_key(), token)[1] in signed
        # the last characters of each part (where unused bits hide): every other character;
        # everywhere else: four others (a change there changes the bytes; the signature
        # refuses it)
        dot = token.index(".")
        ends = {dot - 2, dot - 1, len(token) - 2, len(token) - 1}
        for at in range(len(token)):
            others = [c for c in alphabet if c != token[at]]
            for c in (others if at in ends else others[at % 16::16]):
                changed = token[:at] + c + token[at + 1:]
                why = explain_token(key.public_key(), changed)[1]
                assert why not in signed, (at, c)


def test_content_signed_with_our_key_but_never_issued_is_not_valid_online(
        live: Live) -> None:
    """The online check asks the database: a token with the service's own signature (a
    leaked key, say) over content it never issued under that number is not valid."""
    from backend.receipts.service import b64url, sign, unb64url

    people = seed(live.rt)
    h = resident_headers(live)
    paid = _paid_order(live, h, "alipay_qr", [
        {"resident_ref": ref(live, h, "张三", people["张三"]), "insurance": "medical"}])
    token = paid["receipt_url"].rsplit("/r/", 1)[1]
    content = json.loads(unb64url(token.split(".")[0]))
    content[5] = 1                                       # the amount: 1 fen
    forged = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    made = b64url(forged) + "." + sign(live.rt.receipt_key, forged)
    url = paid["receipt_url"].replace(token, made)
    assert _check(live, url)["valid"] is False
    assert "不是有效凭证" in _page(live, url)
    assert _check(live, paid["receipt_url"])["valid"] is True


def test_a_signing_key_that_cannot_be_read_stops_the_start(settings: Any,
                                                            tmp_path: Path) -> None:
    """Found at the start, not at the first agent's collection (whose receipt is issued in
    its transaction) as a 500."""
    from backend.app import create_app
    from backend.config import ConfigError
    from backend.runtime import Runtime

    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("not a key")
    for path, said in ((tmp_path / "missing.pem", "cannot be read"),
                       (not_a_key, "not a PEM private key")):
        rt = Runtime(settings.model_copy(update={"receipt_signing_key": str(path)}))
        try:
            with pytest.raises(ConfigError, match=said):
                create_app(runtime=rt)
        finally:
            rt.close()


def test_a_generated_signing_key_is_never_readable_by_others(settings: Any,
                                                              tmp_path: Path) -> None:
    """Written with mode 0600 from the start, whatever the umask (no moment open to all)."""
    import stat

    from backend.config import write_once

    old = os.umask(0)
    try:
        path = tmp_path / "secret.pem"
        assert write_once(path, lambda: "key") == "key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert write_once(path, lambda: "another") == "key"      # made once, read after
        fresh = settings.model_copy(update={"data_dir": tmp_path / "data",
                                            "receipt_signing_key": ""})
        assert fresh.receipt_signing_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        made = tmp_path / "data" / "receipt_signing_key.pem"
        assert stat.S_IMODE(made.stat().st_mode) == 0o600
        assert not [p for p in made.parent.iterdir() if p.name.startswith(".")]
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- an agent's QR
def test_a_resident_who_paid_an_agents_qr_reaches_the_receipt_from_the_paid_page(
        live: Live) -> None:
    """The agent's dynamic QR (the order is the agent's): the resident scans it and pays in
    their wallet; scanning it again, the paid page links the receipt's public check page,
    and the agent's status answer carries the same receipt."""
    people = seed(live.rt)
    agent = staff_headers(live)
    made = live.http.post("/api/v1/agent/qr-codes", headers=agent, json={
        "year": 2021, "items": [{"resident_ref": ref(live, agent, "张三", people["张三"]),
                                 "insurance": "medical"}]})
    assert made.status_code == 201, made.text
    no = made.json()["order_no"]
    status = live.http.get(f"/api/v1/agent/qr-codes/{no}", headers=agent).json()
    assert (status["status"], status["receipt_no"], status["receipt_url"]) == (
        "pending", None, None)
    landing = status["qr_content"].removeprefix(live.base_url)
    wallet = {"User-Agent": "Mozilla/5.0 (iPhone) MicroMessenger/8.0.50"}
    assert live.http.get(landing, headers=wallet, follow_redirects=False).status_code == 302
    pay(live, get_order(live, agent, no)["payment"]["out_trade_no"])

    # the resident scans again (or the wallet comes back to it): paid, with the receipt
    page = live.http.get(landing, headers=wallet, follow_redirects=False)
    assert page.status_code == 200 and "已缴费" in page.text
    (url,) = re.findall(r"href='([^']+)'", page.text)
    assert url.startswith(live.base_url + "/r/") and "script" not in page.text
    check = _check(live, url)
    assert check["valid"] is True and check["amount_fen"] == MEDICAL
    assert check["payer"]["name"] == "张*"
    # the agent's screen shows the same receipt once paid
    done = live.http.get(f"/api/v1/agent/qr-codes/{no}", headers=agent).json()
    assert done["status"] == "paid" and done["receipt_url"] == url
    assert re.fullmatch(r"R20201102\d{8}", done["receipt_no"])
    assert get_order(live, agent, no)["receipt_no"] == done["receipt_no"]
    with unit_of_work(live.rt.sessions) as s:
        assert len(s.scalars(select(Receipt)).all()) == 1
    _no_full_id(list(people.values()), page.text, json.dumps(done), _page(live, url))


def test_the_paid_page_links_the_receipt_the_worker_issued(live: Live) -> None:
    """The worker's sweep issued the receipt at payment time; the paid page links that one."""
    from backend.receipts.sweep import Sweep, issue_receipts

    people = seed(live.rt)
    h = resident_headers(live)
    made = order(live, h, "aggregate_qr", [
        {"resident_ref": ref(live, h, "李梅", people["李梅"]), "insurance": "medical"}])
    landing = made.json()["payment"]["qr_content"].removeprefix(live.base_url)
    alipay = {"User-Agent": "Mozilla/5.0 (Linux; Android 14) AlipayClient/10.6"}
    assert live.http.get(landing, headers=alipay, follow_redirects=False).status_code == 302
    pay(live, get_order(live, h, made.json()["order_no"])["payment"]["out_trade_no"])
    assert issue_receipts(live.rt, sweep=Sweep()) == 1
    with unit_of_work(live.rt.sessions) as s:
        (issued,) = s.scalars(select(Receipt)).all()
        token = receipts.token_of(issued)
    page = live.http.get(landing, headers=alipay, follow_redirects=False)
    assert page.status_code == 200
    assert f"href='{live.base_url}/r/{token}'" in page.text
