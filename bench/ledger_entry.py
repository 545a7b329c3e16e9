"""Benchmark: one journal entry of 20,000 (and 60,000) postings, and what its commit costs.

    .venv/bin/python bench/ledger_entry.py [--postings 20000 60000] [--runs 3]
                                           [--revision head] [--database-url URL]

Creates the database (default ``bench_ledger_entry_<pid>``), migrates it to ``--revision``
(``0011``: the balance check of 0003, once per posting; ``head``: once per entry, 0012),
then per size and run posts one entry through ``post_entry`` — the legs alternate between
the village collections they credit and the channel's clearing account — and times the
INSERTs (``post_entry``: the postings in multi-row INSERTs of 500) and the COMMIT apart: the
database's balance check runs at commit. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
from sqlalchemy import text  # noqa: E402

from backend.db import make_engine, make_sessionmaker  # noqa: E402
from backend.ledger.service import (  # noqa: E402
    Leg,
    channel_clearing,
    contributions,
    post_entry,
)
from backend.migrate import upgrade  # noqa: E402

DAY = date(2020, 11, 2)
AT = datetime.fromisoformat("2020-11-02T10:00:00+08:00")
FEN = 28_000


def legs(n: int) -> list[Leg]:
    """n postings summing to zero: a channel's money in, item by item, for 100 villages."""
    clearing, fund = channel_clearing("wechat"), contributions("medical", 2021)
    out = []
    for k in range(n // 2):
        village = f"3704061002{k % 100:02d}"
        out.append(Leg(clearing, FEN, village_code=village, town_code=village[:9],
                       channel="wechat", measure="collected"))
        out.append(Leg(fund, -FEN, village_code=village, town_code=village[:9]))
    return out


def one_entry(sessions, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(seconds to insert, seconds to commit) of one entry of n postings."""
    session = sessions()
    try:
        start = time.perf_counter()
        post_entry(session, kind="channel_payment", reason=f"bench: {n} postings",
                   business_date=DAY, occurred_at=AT, legs=legs(n))
        inserted = time.perf_counter()
        session.commit()
        return inserted - start, time.perf_counter() - inserted
    finally:
        session.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postings", type=int, nargs="+", default=[20_000, 60_000])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--revision", default="head",
                   help="migrate to this revision: 0011 measures the per-posting check")
    p.add_argument("--database-url",
                   default=sup.database_url(sup.own_database_name("bench_ledger_entry")))
    args = p.parse_args(argv)
    sup.exit_on_sigterm()
    sup.recreate_database(args.database_url)
    engine = None
    try:
        upgrade(args.database_url, args.revision)
        engine = make_engine("postgresql+psycopg://" + args.database_url.split("://", 1)[1])
        sessions = make_sessionmaker(engine)
        with engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        print(f"PostgreSQL {sup.server_version(args.database_url)}, revision {revision}; "
              f"{sup.machine()}")
        one_entry(sessions, 2)          # the accounts, the prepared statements: warm
        for n in args.postings:
            runs = []
            for k in range(args.runs):
                runs.append(one_entry(sessions, n))
                print(f"  run {k + 1}: insert {runs[-1][0]:.3f} s, commit {runs[-1][1]:.3f} s",
                      flush=True)
            inserts, commits = [r[0] for r in runs], [r[1] for r in runs]
            print(f"{n:,} postings: commit {', '.join(f'{c:.3f}' for c in commits)} s, "
                  f"median {statistics.median(commits):.3f} s; insert median "
                  f"{statistics.median(inserts):.3f} s", flush=True)
        with engine.connect() as conn:
            entries, total = conn.execute(text(
                "SELECT COUNT(DISTINCT entry_id), SUM(amount_fen) FROM postings")).one()
        assert entries == 1 + args.runs * len(args.postings) and total == 0, (entries, total)
    finally:
        if engine is not None:
            engine.dispose()
        sup.drop_database(args.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
