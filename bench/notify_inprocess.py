"""The notification handler alone, in this process: CPU per notification, no HTTP.

    .venv/bin/python bench/notify_inprocess.py [--orders 3000] [--profile out.prof]

Seeds N pending orders in a fresh database (as notify_load.py does), builds real-format
signed notifications for them, and calls ``backend.notifications.service.handle`` for each
one after the other on one thread, as the endpoint's thread does. Prints wall and CPU time
per notification for the verification and for the whole handler. A quick loop for working
on the hot path; ``notify_load.py`` is the benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402

from backend.clock import real_now  # noqa: E402
from backend.migrate import upgrade  # noqa: E402
from backend.notifications.service import handle  # noqa: E402
from backend.runtime import Runtime  # noqa: E402
from payment_adapters.base import Channel  # noqa: E402

AMOUNT_FEN = 38_000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=3000)
    p.add_argument("--profile", metavar="FILE", help="cProfile the timed loop into FILE")
    args = p.parse_args()
    url = sup.database_url(sup.own_database_name("bench_inproc"))
    sup.recreate_database(url)
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory() as tmp:
            settings = sup.bench_settings(url, Path(tmp), sup.free_port(), log_level="INFO")
            numbers = sup.order_numbers(settings)
            ranges = sup.channel_ranges(args.orders, {Channel.WECHAT: 0.6, Channel.ALIPAY: 0.2,
                                                      Channel.UNIONPAY: 0.2})
            sup.seed_pending_orders(url, args.orders, ranges, numbers, AMOUNT_FEN)
            factory = sup.NotificationFactory(settings, numbers, AMOUNT_FEN)
            notes = [(ch, *factory.build(ch, i)) for ch, r in ranges.items() for i in r]
            rt = Runtime(settings)
            warm = 200
            for ch, _, headers, body in notes[:warm]:
                handle(rt, ch, headers, body)
            verifiers = rt.channels.verifiers
            c0, w0 = time.process_time(), time.perf_counter()
            for ch, _, headers, body in notes[warm:]:
                verifiers[ch].verify(headers, body, real_now())
            n = len(notes) - warm
            print(f"verify only: {(time.process_time() - c0) / n * 1e3:.3f} ms CPU, "
                  f"{(time.perf_counter() - w0) / n * 1e3:.3f} ms wall per notification")
            prof = cProfile.Profile(time.process_time) if args.profile else None
            c0, w0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            for ch, _, headers, body in notes[warm:]:
                answer = handle(rt, ch, headers, body)
                assert answer.status < 300, answer
            if prof:
                prof.disable()
                prof.dump_stats(args.profile)
            print(f"handle: {(time.process_time() - c0) / n * 1e3:.3f} ms CPU, "
                  f"{(time.perf_counter() - w0) / n * 1e3:.3f} ms wall per notification "
                  f"({n} notifications)")
            rt.close()
    finally:
        sup.drop_database(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
