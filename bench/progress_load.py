"""Time ``GET /api/v1/progress`` on PostgreSQL for a district of N residents (default 100,000).

Seeds a fresh database by COPY: 10 towns of 30 villages, residents with birth years 1930–2021,
a few employee-insured, students and dead, about 85 % of the medical and 60 % of the pension
items of 2021 paid. Then asks for the whole district and for one town, each ``--runs`` times
(in process, through the app and a finance token), and prints the median and the worst.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
import psycopg  # noqa: E402

from backend.migrate import upgrade  # noqa: E402

PAID_AT = datetime(2020, 11, 2, 2, tzinfo=UTC)


def seed(url: str, n: int, seed_value: int) -> None:
    rnd = random.Random(seed_value)
    towns = [f"3704061{t:02d}" for t in range(10)]
    villages = [f"{t}{v:03d}" for t in towns for v in range(201, 231)]
    residents, lines, deaths = [], [], []
    for i in range(1, n + 1):
        born = date(rnd.randint(1930, 2021), rnd.randint(1, 12), rnd.randint(1, 28))
        h = f"{i:064x}"
        residents.append({"id": i, "id_hash": h, "id_enc": "x", "id_masked": "370406********0000",
                          "birth_date": born, "name": "张三",
                          "village_code": villages[i % len(villages)], "hukou_type": "local",
                          "employee_pension": rnd.random() < .05,
                          "employee_medical": rnd.random() < .05, "student": rnd.random() < .03,
                          "categories": ""})
        if rnd.random() < .01:
            deaths.append({"id_hash": h, "id_masked": "370406********0000", "name": "张三",
                           "died_on": date(2020, rnd.randint(1, 12), 1)})
        for insurance, share in (("medical", .85), ("pension", .6)):
            paid = rnd.random() < share
            lines.append({"resident_id": i, "year": 2021, "insurance": insurance,
                          "status": "paid" if paid else "unpaid",
                          "paid_fen": 28000 if paid else None,
                          "paid_at": PAID_AT if paid else None})
    with psycopg.connect(url) as conn:
        sup.copy_rows(conn, "towns", ({"code": t, "name": f"镇{t}"} for t in towns),
                      ["code", "name"])
        sup.copy_rows(conn, "villages", ({"code": v, "name": f"村{v}", "town_code": v[:9]}
                                         for v in villages), ["code", "name", "town_code"])
        sup.copy_rows(conn, "residents", residents, list(residents[0]))
        sup.copy_rows(conn, "deaths", deaths, ["id_hash", "id_masked", "name", "died_on"])
        sup.copy_rows(conn, "bill_lines", lines, list(lines[0]))
        conn.execute("SELECT setval('residents_id_seq', %s)", (n,))
        conn.execute("ANALYZE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--residents", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--redis-url", default=sup.REDIS_URL)
    ap.add_argument("--database-url", default=sup.database_url(
        sup.own_database_name("bench_progress")))
    args = ap.parse_args(argv)
    sup.exit_on_sigterm()
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from backend.auth.service import create_staff_user, staff_principal
    from backend.db import unit_of_work
    from backend.runtime import Runtime
    from backend.security.tokens import issue_token

    sup.recreate_database(args.database_url)
    try:
        upgrade(args.database_url)
        t0 = time.perf_counter()
        seed(args.database_url, args.residents, args.seed)
        print(f"seeded {args.residents:,} residents in {time.perf_counter() - t0:.1f} s")
        with tempfile.TemporaryDirectory() as tmp:
            settings = sup.bench_settings(args.database_url, Path(tmp), 8000)
            rt = Runtime(settings.model_copy(update={"redis_url": args.redis_url}))
            with unit_of_work(rt.sessions) as s:
                user = create_staff_user(s, username="fin", password="finance-pass",
                                         role="finance")
                token = issue_token(rt.app_secret, staff_principal(user), 3600)
            headers = {"Authorization": f"Bearer {token}"}
            with TestClient(create_app(runtime=rt)) as client:
                for label, params in (("district", {"year": 2021}),
                                      ("one town", {"year": 2021, "town": "370406100"})):
                    times: list[float] = []
                    body: dict[str, Any] = {}
                    for _ in range(args.runs):
                        t = time.perf_counter()
                        r = client.get("/api/v1/progress", params=params, headers=headers)
                        times.append(time.perf_counter() - t)
                        assert r.status_code == 200, r.text
                        body = r.json()
                    totals = {m["key"]: (m["eligible"], m["paid"], m["rate_bp"])
                              for m in body["totals"]}
                    print(f"{label}: median {statistics.median(times) * 1000:.0f} ms, "
                          f"worst {max(times) * 1000:.0f} ms over {args.runs} runs; "
                          f"totals {totals}")
            rt.close()
        print(sup.machine(), "PostgreSQL", sup.server_version(args.database_url))
    finally:
        sup.drop_database(args.database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
