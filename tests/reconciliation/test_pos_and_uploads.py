"""A POS acquirer's settlement remits the agents' POS collections it pays; statement uploads
are refused whole when too large or a zip bomb."""

from __future__ import annotations

import io
import zipfile
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlmodel import col

from backend.app import create_app
from backend.db import unit_of_work
from backend.ledger.models import JournalEntry
from backend.ledger.pos import POS_REMITTANCE
from backend.runtime import Runtime
from payment_adapters.sandbox.statements import BillRow, write_pos_settlement
from tests.conftest import Live
from tests.orders.helpers import ref, seed, staff_headers
from tests.reconciliation.test_fetch import tokens
from tests.reconciliation.world import at

DAY = date(2020, 11, 2)
UPLOAD = "/api/v1/reconciliation/{}/statements"


def _pos_settlement(rows: list[tuple[str, int]], rate: Decimal) -> bytes:
    out = io.BytesIO()
    write_pos_settlement(out, [BillRow("payment", at(DAY, 9, 30 + n), reference,
                                       f"P{n:011d}", amount)
                               for n, (reference, amount) in enumerate(rows)],
                         day=DAY, fee_rate=rate)
    return out.getvalue()


def _daily_pos(live: Live, h: dict[str, str]) -> dict[str, Any]:
    r = live.http.get("/api/v1/ledger/daily", headers=h, params={"date": DAY.isoformat()})
    assert r.status_code == 200, r.text
    [row] = [row for row in r.json()["rows"] if row["channel"] == "pos"]
    return dict(row)


def _upload(http: httpx.Client | TestClient, h: dict[str, str], channel: str, body: bytes,
            name: str = "statement.csv") -> httpx.Response:
    return http.post(UPLOAD.format(channel), headers=h, data={"date": DAY.isoformat()},
                     files={"file": (name, body)})


def _stored(rt: Runtime) -> tuple[int, int, int]:
    with rt.sessions() as s:
        return tuple(int(s.scalar(text(f"SELECT COUNT(*) FROM {t}")) or 0)  # type: ignore[return-value]
                     for t in ("statements", "statement_lines", "reconciliation_runs"))


def test_a_pos_settlement_remits_the_collections_once(live: Live) -> None:
    people = seed(live.rt)
    agent = staff_headers(live)
    fin = tokens(live, ("fin", "finance"))["fin"]
    items = [{"resident_ref": ref(live, agent, "张三", people["张三"]), "insurance": "medical"}]
    r = live.http.post("/api/v1/agent/collections", headers=agent, json={
        "year": 2021, "items": items, "method": "pos", "receipt_no": "R-1",
        "pos_reference": "POS-0001"})
    assert r.status_code == 201, r.text
    amount = _daily_pos(live, fin)["amount_fen"]
    assert amount > 0 and _daily_pos(live, fin)["remitted_fen"] == 0

    rate = live.rt.settings.fee_rate("pos")
    # the acquirer also settled a slip we have no collection for
    bill = _pos_settlement([("POS-0001", amount), ("POS-9999", 5000)], rate)
    first = _upload(live.http, fin, "pos", bill)
    assert first.status_code == 201, first.text
    run = first.json()
    assert run["matched"] == 1
    assert [(d["kind"], d["out_trade_no"]) for d in run["discrepancies"]] == [
        ("missing_locally", "POS-9999")]
    pos = _daily_pos(live, fin)
    assert pos["remitted_fen"] == amount and pos["outstanding_fen"] == 0
    again = _upload(live.http, fin, "pos", bill, name="again.csv")
    assert again.status_code == 200 and again.json() == run
    assert _daily_pos(live, fin)["remitted_fen"] == amount
    with live.rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(JournalEntry).where(
            col(JournalEntry.kind) == POS_REMITTANCE)) == 1


@pytest.mark.parametrize("backend_name", ["sqlite"])      # nothing here is the database's
def test_statement_upload_limits(rt: Runtime, client: TestClient) -> None:
    fin = tokens_for(rt)
    # a declared 200 MB body is refused before it is read
    huge = client.post(UPLOAD.format("wechat"), headers=fin | {
        "Content-Type": "multipart/form-data; boundary=x",
        "Content-Length": str(200 * 1024 * 1024)}, content=b"--x--\r\n")
    assert huge.status_code == 413, huge.text
    assert huge.json()["error"]["code"] == "payload_too_large"
    # a zip bomb: 12 KB that would expand to 12 MB of one member
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("2088000000000000_20201102_业务明细.csv", b"0" * (12 << 20))
        z.writestr("2088000000000000_20201102_业务明细(汇总).csv", b"#")
    boom = _upload(client, fin, "alipay", bomb.getvalue(), name="bill.zip")
    assert boom.status_code == 422, boom.text
    assert boom.json()["error"]["code"] == "invalid_statement"
    assert "decompression bomb" in boom.json()["error"]["message"]
    assert _stored(rt) == (0, 0, 0)

    # STATEMENT_MAX_BYTES: a file over it is refused, saying the limit
    small = Runtime(rt.settings.model_copy(update={"statement_max_bytes": 4096}))
    try:
        with TestClient(create_app(runtime=small)) as limited:
            over = _upload(limited, fin, "wechat", b"x" * 10 * 1024)
            assert over.status_code == 413, over.text
            assert over.json()["error"]["code"] == "payload_too_large"
            assert "4096 bytes" in over.json()["error"]["message"]
    finally:
        small.close()
    assert _stored(rt) == (0, 0, 0)


def tokens_for(runtime: Runtime) -> dict[str, str]:
    from backend.auth.models import StaffUser
    from backend.security.tokens import Principal, issue_token

    with unit_of_work(runtime.sessions) as s:
        user = StaffUser(username="fin", password_hash="-", role="finance")
        s.add(user)
        s.flush()
        token = issue_token(runtime.app_secret, Principal(sub=f"staff:{user.id}",
                                                          role="finance"), 600)
    return {"Authorization": f"Bearer {token}"}
