"""The fixed yardstick for notification throughput: how fast can this machine apply payment
notifications at all?

``bench/yardstick/schema.sql`` and ``bench/yardstick/tx.sql`` are the least a notification
must do in PostgreSQL — record the event once, mark the order and its item paid, write the
ledger row — as one transaction, with nothing else in the way. pgbench runs it:

    .venv/bin/python bench/yardstick.py [--clients 8] [--seconds 10]

prints its TPS, the ceiling on this machine. ``bench/notify_load.py`` runs it in
the same invocation as the service's load and reports **ratio = service notifications/s ÷
yardstick TPS**. The yardstick is fixed: it does not change when the service's own SQL
changes, so a design that needs more statements or more locks per payment shows up as a
lower ratio. (Its files are the project's copy of the fixed yardstick; never edit them.)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402

HERE = Path(__file__).resolve().parent / "yardstick"
SCHEMA, TX = HERE / "schema.sql", HERE / "tx.sql"


@dataclass(frozen=True)
class YardstickResult:
    tps: float
    latency_ms: float       # pgbench's average latency
    transactions: int


def run_yardstick(clients: int = 8, seconds: int = 10,
                  database: str | None = None) -> YardstickResult:
    """A fresh yardstick database, its schema loaded, pgbench run, the database dropped."""
    name = database or sup.own_database_name("yardstick")
    url = sup.database_url(name)
    sup.recreate_database(url)
    try:
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", name,
                        "-v", "ON_ERROR_STOP=1", "-f", str(SCHEMA)],
                       check=True, capture_output=True, text=True)
        res = subprocess.run(["pgbench", "-n", "-h", "127.0.0.1", "-U", "postgres",
                              "-c", str(clients), "-j", "2", "-T", str(seconds),
                              "-f", str(TX), name], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"pgbench failed ({res.returncode}):\n{res.stderr[-2000:]}")
        out = res.stdout
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        lat = re.search(r"latency average = ([\d.]+) ms", out)
        txs = int(re.search(r"number of transactions actually processed: (\d+)",
                            out).group(1))  # type: ignore[union-attr]
        return YardstickResult(tps, float(lat.group(1)) if lat else 0.0, txs)
    finally:
        sup.drop_database(url)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args(argv)
    for n in range(args.runs):
        r = run_yardstick(args.clients, args.seconds)
        print(f"yardstick run {n + 1}: {r.tps:,.0f} tps, latency average {r.latency_ms:.2f} ms, "
              f"{r.transactions:,} transactions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
