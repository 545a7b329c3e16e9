"""Benchmark: the agent's roster (GET /api/v1/agent/roster) of a 5,000-resident village.

    .venv/bin/python bench/roster.py [--residents 5000] [--database-url URL] [--runs 5]

Creates the database (default ``bench_roster``), migrates it, bulk-inserts one village of N
residents (some dead, some listed by a department, some over age, a third paid — by wallet
or by the agent in cash — and some in a pending order), then times the roster as the agent's
phone asks for it (HTTP through the app, JSON included) and prints each run and the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402
from sqlmodel import col  # noqa: E402

from backend.app import create_app  # noqa: E402
from backend.auth.service import create_staff_user  # noqa: E402
from backend.db import unit_of_work  # noqa: E402
from backend.departments.models import DepartmentListing  # noqa: E402
from backend.orders.models import BillLine, Order, OrderLine, Payment  # noqa: E402
from backend.residents.idnumber import make_id_number  # noqa: E402
from backend.residents.models import Death, Resident, Town, Village  # noqa: E402
from backend.runtime import Runtime  # noqa: E402
from backend.security.pii import mask_id_number  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench_roster"
VILLAGE, TOWN = "370406100201", "370406100"
NOW = datetime.fromisoformat("2020-11-02T09:00:00+08:00")


def seed(rt: Runtime, n: int) -> None:
    with unit_of_work(rt.sessions) as s:
        s.add(Town(code=TOWN, name="店子镇"))
        s.flush()
        s.add(Village(code=VILLAGE, name="东村", town_code=TOWN))
        s.flush()
        rows, deaths = [], []
        for i in range(n):
            born = (date(1935, 1, 1) if i % 50 == 0 else date(1962, 1, 1)) + timedelta(days=i)
            number = make_id_number("370406", born, i)
            rows.append({"id_hash": rt.pii.hash(number), "id_enc": rt.pii.encrypt(number),
                         "id_masked": mask_id_number(number), "birth_date": born,
                         "name": f"张{i:04d}", "village_code": VILLAGE, "hukou_type": "local",
                         "categories": "dibao" if i % 40 == 1 else ""})
            if i % 100 == 3:
                deaths.append({"id_hash": rows[-1]["id_hash"], "id_masked": "x", "name": "x",
                               "died_on": date(2020, 5, 1)})
        s.execute(insert(Resident), rows)
        s.execute(insert(Death), deaths)
        ids = [r for (r,) in s.execute(sql_ids())]
        s.execute(insert(DepartmentListing), [
            {"department": "civil_affairs", "resident_id": rid, "insurance": "medical",
             "year": 2021} for k, rid in enumerate(ids) if k % 40 == 1])
        now = NOW.astimezone(UTC)
        orders = {}
        for no, channel in (("O-WX", "wechat_native"), ("O-CASH", "cash"),
                            ("O-PEND", "wechat_native")):
            o = Order(order_no=no, payer_sub="bench", payer_role="resident", year=2021,
                      channel=channel, status="pending" if no == "O-PEND" else "paid",
                      amount_fen=0, expires_at=now + timedelta(hours=2))
            s.add(o)
            s.flush()
            orders[no] = o.id
        pays = {}
        for no, channel in (("O-WX", "wechat"), ("O-CASH", "cash")):
            p = Payment(order_id=orders[no], channel=channel, transaction_id=no, amount_fen=0,
                        paid_at=now, business_date=date(2020, 11, 2),
                        source="notification" if channel == "wechat" else "agent")
            s.add(p)
            s.flush()
            pays[no] = p.id
        s.execute(insert(BillLine), [
            {"resident_id": rid, "year": 2021, "insurance": "medical", "status": "paid",
             "paid_payment_id": pays["O-WX" if k % 2 else "O-CASH"], "paid_fen": 28000,
             "paid_at": now} for k, rid in enumerate(ids) if k % 3 == 0])
        pending = [rid for k, rid in enumerate(ids) if k % 10 == 5]
        s.execute(insert(BillLine), [{"resident_id": rid, "year": 2021, "insurance": "pension",
                                      "status": "unpaid"} for rid in pending])
        line_ids = dict(s.execute(sql_lines()).all())
        s.execute(insert(OrderLine), [
            {"order_id": orders["O-PEND"], "bill_line_id": line_ids[rid], "resident_id": rid,
             "insurance": "pension", "tier_yuan": 300, "amount_fen": 30000} for rid in pending])
        create_staff_user(s, username="agent1", password="agent-pass", role="agent",
                          village_code=VILLAGE)


def sql_ids():  # type: ignore[no-untyped-def]
    return select(col(Resident.id)).order_by(col(Resident.id))


def sql_lines():  # type: ignore[no-untyped-def]
    return select(col(BillLine.resident_id), col(BillLine.id)).where(
        col(BillLine.insurance) == "pension")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--residents", type=int, default=5000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--database-url", default=DEFAULT_URL)
    args = p.parse_args(argv)
    with sup.migrated_runtime(args.database_url, NOW, "roster") as rt:
        start = time.perf_counter()
        seed(rt, args.residents)
        print(f"seeded {args.residents:,} residents in {time.perf_counter() - start:.1f} s")
        with TestClient(create_app(runtime=rt)) as client:
            h = sup.staff_headers(client, "agent1", "agent-pass")
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                r = client.get("/api/v1/agent/roster", headers=h, params={"year": 2021})
                times.append(time.perf_counter() - start)
                assert r.status_code == 200, r.text
            rows = r.json()["rows"]
            assert len(rows) == args.residents
            print(f"roster of {len(rows):,} residents ({len(r.content) / 2**20:.1f} MB JSON):"
                  f" {', '.join(f'{t:.2f}' for t in times)} s; "
                  f"median {statistics.median(times):.2f} s")
            seen = Counter((i["status"], i["paid_by"]) for row in rows for i in row["items"])
            print("items:", ", ".join(f"{st}/{by}: {c}" for (st, by), c in sorted(
                seen.items(), key=str)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
