"""Benchmark: import N generated residents into a fresh PostgreSQL database.

    .venv/bin/python bench/import_residents.py [--residents 100000] [--database-url URL]

Creates the database (default ``bench_import``), migrates it, imports the demo regions and N
generated residents through ``run_import``, then imports the same file again (every row
unchanged), prints both wall times and the peak RSS, and drops the database.
"""

from __future__ import annotations

import argparse
import base64
import resource
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.config import Settings  # noqa: E402
from backend.demo.generator import generate_people, write_regions, write_residents  # noqa: E402
from backend.imports.service import ImportReport, run_import  # noqa: E402
from backend.migrate import upgrade  # noqa: E402
from backend.policy import load_policy  # noqa: E402
from backend.runtime import Runtime  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench_import"


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def split_url(url: str) -> tuple[str, str]:
    """(URL of the maintenance database ``postgres``, name of the benchmark database)."""
    base, name = url.rsplit("/", 1)
    return f"{base}/postgres", name.split("?", 1)[0]


def timed_import(rt: Runtime, kind: str, path: Path, progress: bool) -> tuple[float,
                                                                                ImportReport]:
    start = time.perf_counter()
    report = run_import(rt, kind, path, progress=progress)
    elapsed = time.perf_counter() - start
    if not report.committed:
        raise SystemExit(f"{kind} import failed:\n{report.summary()}")
    return elapsed, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--residents", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--database-url", default=DEFAULT_URL)
    p.add_argument("--progress", action="store_true", help="show the import progress bars")
    p.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    args = p.parse_args(argv)

    admin_url, dbname = split_url(args.database_url)
    policy = load_policy("shanting-2021")
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        folder = Path(tmp)
        regions, residents = folder / "regions.csv", folder / "residents.csv"
        start = time.perf_counter()
        write_regions(regions)
        count = write_residents(residents, generate_people(policy, args.residents, args.seed))
        print(f"generated {count:,} residents ({residents.stat().st_size / 2**20:.1f} MB CSV) "
              f"in {time.perf_counter() - start:.1f} s")

        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(dbname)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        rt: Runtime | None = None
        try:
            upgrade(args.database_url)
            rt = Runtime(Settings(database_url=args.database_url, data_dir=folder,
                                  pii_key=base64.b64encode(b"bench-import-key".ljust(32, b"."))
                                  .decode(), app_secret="bench-" + "x" * 32))
            timed_import(rt, "regions", regions, args.progress)
            rss_before = peak_rss_mb()
            first, report = timed_import(rt, "residents", residents, args.progress)
            print(f"first import:  {first:6.2f} s  ({report.inserted:,} inserted)  "
                  f"{count / first:,.0f} rows/s")
            second, report = timed_import(rt, "residents", residents, args.progress)
            print(f"second import: {second:6.2f} s  ({report.unchanged:,} unchanged, "
                  f"{report.updated:,} updated)")
            print(f"peak RSS: {peak_rss_mb():.0f} MB (before the resident imports: "
                  f"{rss_before:.0f} MB)")
        finally:
            if rt is not None:
                rt.close()
            if not args.keep:
                with psycopg.connect(admin_url, autocommit=True) as admin:
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                                  .format(sql.Identifier(dbname)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
