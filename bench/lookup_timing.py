"""Benchmark: can a lookup's time tell "nobody has this ID number" from "somebody has it,
under another name"? (An enumerator would use the difference to learn who is registered.)

    .venv/bin/python bench/lookup_timing.py                  # 2,000 of each, PostgreSQL
    .venv/bin/python bench/lookup_timing.py --pairs 5000

A fresh database with the demo district (3,000 residents), the app in-process (no HTTP, so
the network's jitter hides nothing), a fresh caller per request (no limit is reached).
Misses (a valid ID number nobody has) and wrong names (a registered ID number, another name)
are sent alternately, in random order within each pair. Printed: each one's p10, median and
p90 in microseconds, and the difference of the medians with a 95 % bootstrap interval.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--residents", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    from fastapi.testclient import TestClient
    from order_create import demo_people

    from backend.app import create_app
    from backend.demo.generator import load_demo
    from backend.residents.idnumber import make_id_number
    from backend.security.tokens import Principal, issue_token

    url = sup.database_url(sup.own_database_name("bench_lookup_timing"))
    rnd = random.Random(args.seed)
    times: dict[str, list[float]] = {"miss": [], "wrong name": []}
    with sup.migrated_runtime(url, datetime.fromisoformat(sup.COLLECT_NOW), "timing") as rt:
        rt.settings.lookup_ip_miss_limit = 10**9
        load_demo(rt, residents=args.residents, seed=args.seed, progress=False)
        people = demo_people(rt, args.residents, args.seed)
        with TestClient(create_app(runtime=rt)) as client:
            def once(case: str, n: int) -> None:
                if case == "miss":
                    number = make_id_number("370406", date(1960 + n % 40, 1 + n % 12,
                                                           1 + n % 28), 900 + n % 99)
                else:
                    number = rnd.choice(people).id_number
                token = issue_token(rt.app_secret, Principal(sub=f"wx:t{case[0]}{n}",
                                                             role="resident"), 600)
                start = time.perf_counter()
                r = client.post("/api/v1/residents/lookup",
                                headers={"Authorization": f"Bearer {token}"},
                                json={"name": "某某某", "id_number": number, "year": sup.YEAR})
                elapsed = (time.perf_counter() - start) * 1e6
                assert r.status_code == 404, r.text
                if n >= 0:
                    times[case].append(elapsed)

            for n in range(-200, 0):          # warm up
                once("miss" if n % 2 else "wrong name", n)
            for n in range(args.pairs):
                order = ["miss", "wrong name"]
                rnd.shuffle(order)
                for case in order:
                    once(case, n)

    def q(values: list[float], f: float) -> float:
        return sorted(values)[int(f * (len(values) - 1))]

    print(f"machine: {sup.machine()}\n{args.pairs:,} of each, in-process (µs):")
    for case, values in times.items():
        print(f"  {case:11} p10 {q(values, .1):8.0f}  median {statistics.median(values):8.0f}"
              f"  p90 {q(values, .9):8.0f}")
    diffs = []
    a, b = times["miss"], times["wrong name"]
    for _ in range(1000):
        diffs.append(statistics.median(rnd.choices(b, k=len(b)))
                     - statistics.median(rnd.choices(a, k=len(a))))
    diffs.sort()
    print(f"  wrong name − miss, medians: {statistics.median(b) - statistics.median(a):+.0f} µs "
          f"(95 % interval {diffs[25]:+.0f} … {diffs[974]:+.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
