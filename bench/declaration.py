"""Benchmark: a town's declaration CSV (GET /api/v1/declarations/{town}/{date}.csv) of a
closed day with 10,000 items paid.

    .venv/bin/python bench/declaration.py [--rows 10000] [--database-url URL] [--runs 5]

Seeds one day of WeChat payments in bulk (``tests/reconciliation/world.py``: residents,
orders, payments, applied payment lines), with real encrypted ID numbers and the ledger's
entries and postings as ``apply_payment`` writes them; closes the day; then times the
download as finance asks for it (HTTP through the app: two row queries, the ledger check,
decrypting every ID number, the CSV, the audit event), prints each run and the median, and
checks the file's row count and total.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import text  # noqa: E402

from backend.auth.service import create_staff_user  # noqa: E402
from backend.db import unit_of_work  # noqa: E402
from backend.ledger import service as ledger  # noqa: E402
from backend.ledger.models import COLLECTED, ClosedDay  # noqa: E402
from backend.residents.idnumber import make_id_number  # noqa: E402
from backend.runtime import Runtime  # noqa: E402
from tests.reconciliation.world import AMOUNT, TOWN, VILLAGE, at, build_world, bulk  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench_declaration"
DAY = date(2020, 11, 2)
NOW = datetime.fromisoformat("2020-11-03T10:00:00+08:00")


def seed(rt: Runtime, n: int) -> None:
    pii = rt.pii
    with unit_of_work(rt.sessions) as s:
        build_world(s, DAY, n)
        s.execute(text("UPDATE residents SET id_enc = :enc WHERE id = :id"), [
            {"id": i, "enc": pii.encrypt(make_id_number("370406", date(1960, 1, 1) if i % 2
                                                        else date(1970, 6, 1), i % 999 + 1))}
            for i in range(1, n + 1)])
        clearing, fund = ledger.channel_clearing("wechat"), ledger.contributions("medical", 2021)
        ids = ledger.account_ids(s, [clearing, fund])
        bulk(s, "journal_entries", ("id", "kind", "reason", "business_date", "occurred_at",
                                    "payment_id", "created_at"),
             [(i, "channel_payment", f"order O{i:09d}", DAY, at(DAY, 9), i, at(DAY, 9))
              for i in range(1, n + 1)])
        where = (DAY, TOWN, VILLAGE, "wechat")
        bulk(s, "postings", ("entry_id", "account_id", "amount_fen", "business_date",
                             "town_code", "village_code", "channel", "measure"),
             [row for i in range(1, n + 1) for row in (
                 (i, ids[clearing.code], AMOUNT, *where, COLLECTED),
                 (i, ids[fund.code], -AMOUNT, *where, None))])
        user = create_staff_user(s, username="fin1", password="fin-pass-1", role="finance")
        s.add(ClosedDay(business_date=DAY, closed_by=user.id, closed_at=NOW,  # type: ignore[arg-type]
                        totals={"totals": {}}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--database-url", default=DEFAULT_URL)
    args = p.parse_args(argv)
    with sup.migrated_runtime(args.database_url, NOW, "declaration") as rt:
        start = time.perf_counter()
        seed(rt, args.rows)
        print(f"seeded {args.rows:,} items paid in {time.perf_counter() - start:.1f} s")
        from backend.app import create_app

        with TestClient(create_app(runtime=rt)) as client:
            h = sup.staff_headers(client, "fin1", "fin-pass-1")
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                r = client.get(f"/api/v1/declarations/{TOWN}/{DAY}.csv", headers=h)
                times.append(time.perf_counter() - start)
                assert r.status_code == 200, r.text
            lines = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
            rows = lines[1:lines.index([])]
            assert len(rows) == args.rows, len(rows)
            assert sum(int(x[9]) for x in rows) == args.rows * AMOUNT
            print(f"declaration ({len(rows):,} rows, {len(r.content) / 2**10:.0f} KiB): "
                  f"{', '.join(f'{t:.2f}' for t in times)} s; "
                  f"median {statistics.median(times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
