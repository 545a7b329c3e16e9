"""Benchmark: a 30,000-line department bill (代缴通知单) issued, then covered by three
partial transfers.

    .venv/bin/python bench/department_bill.py [--residents 30000] [--runs 3] [--database-url URL]

Each run makes its own PostgreSQL database, bulk-inserts one town of N residents in ten
villages (every one in the minimum-living-allowance group and on 民政's medical list), then
times through the HTTP API as town staff would use it: issuing the bill (claiming all N
items), two partial transfers, and the final transfer, which marks every line paid at once
(one order, one department payment, N payment lines, one aggregate ledger entry). Prints
each step's time per run and the medians; checks the ledger balances and every line is paid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlmodel import col  # noqa: E402

from backend.app import create_app  # noqa: E402
from backend.auth.service import create_staff_user  # noqa: E402
from backend.db import unit_of_work  # noqa: E402
from backend.departments.models import DepartmentListing  # noqa: E402
from backend.orders.models import BillLine  # noqa: E402
from backend.residents.idnumber import make_id_number  # noqa: E402
from backend.residents.models import Resident, Town, Village  # noqa: E402
from backend.runtime import Runtime  # noqa: E402
from backend.security.pii import mask_id_number  # noqa: E402

TOWN = "370406100"
NOW = datetime.fromisoformat("2020-11-02T09:00:00+08:00")
STEPS = ("issue", "transfer 1", "transfer 2", "final transfer")


def seed(rt: Runtime, n: int) -> None:
    with unit_of_work(rt.sessions) as s:
        s.add(Town(code=TOWN, name="店子镇"))
        s.flush()
        villages = [f"{TOWN}{v:03d}" for v in range(1, 11)]
        s.add_all([Village(code=v, name=f"{k + 1}村", town_code=TOWN)
                   for k, v in enumerate(villages)])
        s.flush()
        rows = []
        for i in range(n):
            born = date(1962, 1, 1) + timedelta(days=i % 7000)
            number = make_id_number("370406", born, i % 1000)
            rows.append({"id_hash": rt.pii.hash(number + str(i)), "id_enc": rt.pii.encrypt(number),
                         "id_masked": mask_id_number(number), "birth_date": born,
                         "name": f"张{i:05d}", "village_code": villages[i % 10],
                         "hukou_type": "local", "categories": "dibao"})
        s.execute(insert(Resident), rows)
        ids = [r for (r,) in s.execute(select(col(Resident.id)))]
        s.execute(insert(DepartmentListing), [
            {"department": "civil_affairs", "resident_id": rid, "insurance": "medical",
             "year": 2021} for rid in ids])
        create_staff_user(s, username="town1", password="town-pass", role="town_staff",
                          town_code=TOWN)


def one_run(url: str, n: int) -> dict[str, float]:
    with sup.migrated_runtime(url, NOW, "bill") as rt:
        seed(rt, n)
        times: dict[str, float] = {}
        with TestClient(create_app(runtime=rt)) as client:
            h = sup.staff_headers(client, "town1", "town-pass")
            start = time.perf_counter()
            r = client.post("/api/v1/departments/civil_affairs/bills", headers=h,
                            json={"year": 2021, "town_code": TOWN})
            times["issue"] = time.perf_counter() - start
            assert r.status_code == 201, r.text
            bill = r.json()
            assert len(bill["lines"]) == n, len(bill["lines"])
            total = bill["total_fen"]
            parts = [total // 3, total // 3, total - 2 * (total // 3)]
            for step, (k, amount) in zip(STEPS[1:], enumerate(parts), strict=True):
                start = time.perf_counter()
                r = client.post(f"/api/v1/departments/bills/{bill['bill_no']}/transfers",
                                headers=h, json={"amount_fen": amount,
                                                 "bank_reference": f"BANK-{k}",
                                                 "value_date": "2020-11-02"})
                times[step] = time.perf_counter() - start
                assert r.status_code == 201, r.text
            assert r.json()["status"] == "paid"
        with unit_of_work(rt.sessions) as s:
            assert s.scalar(select(func.count()).select_from(BillLine).where(
                col(BillLine.status) == "paid")) == n
            assert s.scalar(text("SELECT COALESCE(SUM(amount_fen), 0) FROM postings")) == 0
            postings = s.scalar(text("SELECT COUNT(*) FROM postings"))
        print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
              + f"; {postings} postings in all")
        return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--residents", type=int, default=30000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--database-url", default=sup.database_url(sup.own_database_name("bench_bill")))
    args = p.parse_args(argv)
    sup.exit_on_sigterm()
    print(f"{args.residents:,}-line department bill, {args.runs} runs, PostgreSQL "
          f"{sup.server_version(sup.database_url('postgres'))}")
    runs = [one_run(args.database_url, args.residents) for _ in range(args.runs)]
    for step in STEPS:
        values = [r[step] for r in runs]
        print(f"{step:>15}: median {statistics.median(values):.2f} s "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
