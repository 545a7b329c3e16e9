"""Benchmark: reconcile a 1,000,000-row WeChat trade bill against 1,000,000 orders (PostgreSQL).

    .venv/bin/python bench/reconcile_load.py                      # 1,000,000 orders, 3 runs
    .venv/bin/python bench/reconcile_load.py --orders 100000 --runs 1

1. A fresh database (``bench_reconcile``), migrated; N paid WeChat orders written by COPY
   (``_support.seed_pending_orders``, then one SQL pass that pays them: attempts paid,
   payments, payment lines, bill lines and orders), all paid on business day 2020-11-02
   between 08:00 and 22:00 Beijing time.
2. The day's trade bill as WeChat Pay delivers it (``payment_adapters.sandbox.statements.
   write_wechat_bill``: backtick-prefixed CSV, summary rows, fees at the configured rate),
   gzip-compressed as the tradebill API serves it, with a few planted differences (one
   amount, one fee, one payment missing from the bill, one the bill has that we don't).
3. Each run, in a child process of its own (so its peak RSS is the run's alone): the
   service's ``reconcile_statement`` — store the file, parse, stage the lines, match both
   ways, store the discrepancies — timed from the file on disk to the committed run; then the
   run and its statement are deleted so the next run starts from the same state.

Printed: wall time and peak RSS per run and the median; the discrepancies found must be
exactly the planted ones. The issue's bar: under 60 s and under 1 GB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
import psycopg  # noqa: E402

from backend.clock import SHANGHAI  # noqa: E402
from backend.migrate import upgrade  # noqa: E402
from payment_adapters.base import Channel  # noqa: E402

DAY = date(2020, 11, 2)
START = datetime(2020, 11, 2, 8, 0, tzinfo=SHANGHAI)
AMOUNT = 38_000


def txn(i: int) -> str:
    return f"42000{i:023d}"


def paid_at(i: int, n: int) -> datetime:
    # spread over 08:00–22:00, never near midnight
    return START + timedelta(microseconds=(i * 14 * 3600 * 1_000_000) // max(n, 1))


def pay_all(db_url: str, n: int) -> float:
    """One SQL pass: every seeded order paid, as the notification path leaves it."""
    t0 = time.perf_counter()
    start_utc = START.astimezone().isoformat()
    step = 14 * 3600 * 1_000_000 // max(n, 1)
    with psycopg.connect(db_url) as conn:
        conn.execute(f"""
            UPDATE attempts SET status = 'paid',
                   transaction_id = '42000' || lpad(id::text, 23, '0'),
                   paid_at = '{start_utc}'::timestamptz
                             + (id::bigint * {step}) * interval '1 microsecond'
        """)
        conn.execute("""
            INSERT INTO payments (id, attempt_id, order_id, channel, transaction_id, amount_fen,
                                  paid_at, business_date, source, shared_transaction, created_at)
            SELECT id, id, order_id, 'wechat', transaction_id, amount_fen, paid_at,
                   (paid_at AT TIME ZONE 'Asia/Shanghai')::date, 'notification', false, now()
            FROM attempts
        """)
        conn.execute("""
            INSERT INTO payment_lines (id, payment_id, bill_line_id, amount_fen, applied)
            SELECT id, id, id, amount_fen, true FROM payments
        """)
        conn.execute("""UPDATE bill_lines b SET status = 'paid', paid_payment_id = b.id,
                        paid_fen = 38000, paid_at = a.paid_at FROM attempts a WHERE a.id = b.id""")
        conn.execute("""UPDATE orders o SET status = 'paid', paid_at = a.paid_at,
                        channel_transaction_id = a.transaction_id
                        FROM attempts a WHERE a.order_id = o.id""")
        for table in ("payments", "payment_lines"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {n})")
        conn.commit()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - t0


def write_bill(path: Path, n: int, numbers: sup.OrderNumbers, fee_rate: Any) -> dict[str, Any]:
    """The day's bill with planted differences; returns what was planted."""
    from payment_adapters.sandbox.statements import BillRow, write_wechat_bill

    missing_at_channel = n // 2            # ours, not in the bill
    amount_off = n // 3                    # the bill says one fen more... a yuan more
    planted = {"missing_at_channel": numbers.out_trade_no(Channel.WECHAT, missing_at_channel),
               "amount_mismatch": numbers.out_trade_no(Channel.WECHAT, amount_off),
               "missing_locally": "NOTOURS" + "9" * 20}

    def rows() -> Iterator[BillRow]:
        for i in range(1, n + 1):
            if i == missing_at_channel:
                continue
            yield BillRow(kind="payment", at=paid_at(i, n),
                          out_trade_no=numbers.out_trade_no(Channel.WECHAT, i),
                          transaction_id=txn(i),
                          amount_fen=AMOUNT + (100 if i == amount_off else 0),
                          trade_type="NATIVE", description="城乡居民医疗保险")
        yield BillRow(kind="payment", at=START + timedelta(hours=1),
                      out_trade_no=planted["missing_locally"], transaction_id=txn(n + 1),
                      amount_fen=AMOUNT, trade_type="NATIVE", description="城乡居民医疗保险")

    with gzip.open(path, "wb", compresslevel=6) as out:
        write_wechat_bill(out, rows(), fee_rate=fee_rate)
    return planted


def one_run(db_url: str, data_dir: str, bill: str, queue: Any) -> None:
    from backend.reconciliation.service import reconcile_statement
    from backend.runtime import Runtime

    settings = sup.bench_settings(db_url, Path(data_dir), 8000,
                                  statement_max_bytes=1024 * 1024 * 1024)
    rt = Runtime(settings)
    t0 = time.perf_counter()
    with open(bill, "rb") as f:
        run = reconcile_statement(rt, channel="wechat", day=DAY, fileobj=f,
                                  filename=Path(bill).name, source="upload", user_id=None)
    took = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    found = sorted((d.kind, d.out_trade_no) for d in run.discrepancies
                   if getattr(d, "status", "open") != "auto_resolved")
    queue.put({"seconds": took, "peak_rss_mb": rss_mb, "matched": run.matched,
               "discrepancies": found, "run_id": run.run_id})
    rt.close()


def forget_run(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename IN "
            "('discrepancies', 'statement_lines', 'reconciliation_runs', 'statements')")]
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        conn.commit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--database-url", default=sup.database_url("bench_reconcile"))
    ap.add_argument("--keep", action="store_true", help="leave the database in place")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    n = args.orders
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        sup.recreate_database(args.database_url)
        upgrade(args.database_url)
        settings = sup.bench_settings(args.database_url, data_dir, 8000)
        numbers = sup.order_numbers(settings)
        t0 = time.perf_counter()
        sup.seed_pending_orders(args.database_url, n, {Channel.WECHAT: range(1, n + 1)},
                                numbers, amount_fen=AMOUNT)
        seeded = time.perf_counter() - t0
        paying = pay_all(args.database_url, n)
        bill = data_dir / f"wechat-{DAY}.csv.gz"
        t0 = time.perf_counter()
        planted = write_bill(bill, n, numbers, settings.fee_rate("wechat"))
        writing = time.perf_counter() - t0
        print(f"{n:,} orders seeded in {seeded:.1f} s, paid in {paying:.1f} s; bill "
              f"{bill.stat().st_size / 1e6:.1f} MB gzip written in {writing:.1f} s")
        results: list[dict[str, Any]] = []
        ctx = multiprocessing.get_context("spawn")
        for k in range(args.runs):
            queue = ctx.Queue()
            p = ctx.Process(target=one_run, args=(args.database_url, str(data_dir), str(bill),
                                                  queue))
            p.start()
            r = queue.get()
            p.join()
            results.append(r)
            print(f"run {k + 1}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"matched {r['matched']:,}, discrepancies {r['discrepancies']}")
            forget_run(args.database_url)
        expected = sorted((kind, no) for kind, no in planted.items())
        ok = all(sorted((kd, no) for kd, no in r["discrepancies"]
                        if kd != "fee_mismatch") == expected for r in results)
        med = statistics.median(r["seconds"] for r in results)
        rss = statistics.median(r["peak_rss_mb"] for r in results)
        print(f"median {med:.1f} s, peak RSS {rss:.0f} MB over {len(results)} runs; "
              f"planted differences found exactly: {ok}")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "orders": n, "runs": results, "median_s": med, "median_peak_rss_mb": rss,
                "planted": planted, "found_exactly": ok, "machine": sup.machine()}, indent=2))
        if not args.keep:
            sup.drop_database(args.database_url)
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
