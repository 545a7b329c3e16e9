"""Benchmark: a village's publication files (GET /api/v1/publications/{village}/{kind}.xlsx
and .pdf) and publishing a version (POST /api/v1/publications/{village}/roster) for a
5,000-resident village.

    .venv/bin/python bench/publication.py [--residents 5000] [--database-url URL] [--runs 5]

Seeds the same village as ``bench/roster.py`` (database ``bench_publication``), then times
the downloads as town staff ask for them (HTTP through the app, the file included) for both
kinds and formats — the draft, then the roster once published — prints each run and the
median, and reads the roster files back to check them. The PDF needs the CJK font
(PDF_FONT_PATH, Debian's fonts-wqy-microhei).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

from openpyxl import load_workbook
from pypdf import PdfReader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from backend.app import create_app  # noqa: E402
from backend.auth.service import create_staff_user  # noqa: E402
from backend.db import unit_of_work  # noqa: E402
from bench.roster import NOW, TOWN, VILLAGE, seed  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench_publication"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--residents", type=int, default=5000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--database-url", default=DEFAULT_URL)
    args = p.parse_args(argv)
    with sup.migrated_runtime(args.database_url, NOW, "publication") as rt:
        start = time.perf_counter()
        seed(rt, args.residents)
        with unit_of_work(rt.sessions) as s:
            create_staff_user(s, username="town1", password="town-pass1",
                              role="town_staff", town_code=TOWN)
        print(f"seeded {args.residents:,} residents in {time.perf_counter() - start:.1f} s")
        with TestClient(create_app(runtime=rt)) as client:
            h = sup.staff_headers(client, "town1", "town-pass1")
            for label, file in (("draft", "roster.xlsx"), ("draft", "paid.xlsx"),
                                ("draft", "roster.pdf"), ("draft", "paid.pdf"),
                                ("publish", "roster"), ("v1", "roster.xlsx"),
                                ("v1", "roster.pdf")):
                times = []
                for _ in range(1 if label == "publish" else args.runs):
                    start = time.perf_counter()
                    r = client.request("POST" if label == "publish" else "GET",
                                       f"/api/v1/publications/{VILLAGE}/{file}",
                                       headers=h, params={"year": 2021})
                    times.append(time.perf_counter() - start)
                    assert r.status_code in (200, 201), r.text
                print(f"{label} {file} ({_check(r.content, file, args.residents)}): "
                      f"{', '.join(f'{t:.2f}' for t in times)} s; "
                      f"median {statistics.median(times):.2f} s")
    return 0


def _check(content: bytes, file: str, residents: int) -> str:
    """What the answer holds (and, for the roster, that it holds every resident)."""
    size = f"{len(content) / 2**10:.0f} KiB"
    if file.endswith(".xlsx"):
        ws = load_workbook(io.BytesIO(content), read_only=True).active
        rows = sum(1 for _ in ws.iter_rows(values_only=True))
        if file.startswith("roster"):
            assert rows == residents + 13, rows
        return f"{rows:,} rows, {size}"
    if file.endswith(".pdf"):
        pages = PdfReader(io.BytesIO(content)).pages
        if file.startswith("roster"):
            assert f"{residents}人" in pages[-1].extract_text()
        return f"{len(pages)} pages, {size}"
    return "version 1"


if __name__ == "__main__":
    sys.exit(main())
