"""Malformed and forged notifications to the three notify endpoints, in larger counts than
the suite sends: runs tests/abuse/test_notify_fuzz.py with NOTIFY_FUZZ_COUNT per channel and
prints its counts (answers by kind, the mutations left out because their signed content is
still a genuine notification's, inbox rows by outcome, what was only counted, seconds per
channel). The inputs are mutations of each channel's pending order's own notification, built
in chunks of 10,000 from bases signed just before.

    .venv/bin/python bench/notify_fuzz.py              # 50,000 per channel, SQLite
    .venv/bin/python bench/notify_fuzz.py --count 200000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000, help="notifications per channel")
    args = parser.parse_args()
    os.environ["NOTIFY_FUZZ_COUNT"] = str(args.count)
    sys.exit(pytest.main([str(ROOT / "tests/abuse/test_notify_fuzz.py"), "-o", "addopts=",
                          "-q", "-s", "-p", "no:cacheprovider"]))
