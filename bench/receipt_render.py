"""Benchmark: rendering a receipt (缴费凭证) as PNG and PDF (backend/receipts/render.py).

    .venv/bin/python bench/receipt_render.py [--receipts 400] [--warmup 8] [--json out.json]

Renders N distinct receipts in this process, one after the other, of four kinds in turn
(tests/receipts/samples.py): an online household payment of 4 items, an agent's cash
collection (agent and paper receipt number), a department's bill (items with counts), and a
refunded one. Each receipt has its own number and verify URL, as long as a real token's, so
no QR code comes from the cache: the figures are a first download's. The font is loaded and
cut down once, before timing (a process does that on its first receipt: about 1-2 s).

Prints per format the median, p95 and max wall time, and the median CPU time of the
rendering thread (steadier than wall time on a shared machine), per kind and overall; the
PNGs are checked to be 384 dots wide and their QR decoded (zxing-cpp) for every tenth
receipt. Exits 1 when the PNG median is 20 ms or more (issue 13's limit).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402

from backend.receipts.render import WIDTH, render_pdf, render_png  # noqa: E402
from backend.receipts.view import ReceiptView  # noqa: E402
from tests.receipts.samples import KINDS, view  # noqa: E402

PNG_LIMIT_MS = 20.0


def _time(fn: Callable[[ReceiptView], bytes], views: list[ReceiptView]
          ) -> tuple[list[float], list[float], list[bytes]]:
    wall, cpu, out = [], [], []
    for v in views:
        w0, c0 = time.perf_counter(), time.thread_time()
        content = fn(v)
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
        out.append(content)
    return wall, cpu, out


def _line(label: str, wall: list[float], cpu: list[float]) -> str:
    return (f"  {label:<11} n={len(wall):<4} median {statistics.median(wall):6.2f} ms  "
            f"p95 {sup.percentile(wall, 95):6.2f} ms  max {max(wall):6.2f} ms  "
            f"(CPU median {statistics.median(cpu):6.2f} ms)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--receipts", type=int, default=400, help="receipts per format")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = p.parse_args(argv)
    print(sup.machine())
    print(sup.describe_code(sup.ROOT))
    # numbers 1..: distinct receipts; the warm-up's (900000+) never come back
    warm = [view(KINDS[i % len(KINDS)], 900_000 + i) for i in range(args.warmup)]
    for v in warm:
        render_png(v)
        render_pdf(v)
    views = [view(KINDS[i % len(KINDS)], 1 + i) for i in range(args.receipts)]
    figures: dict[str, dict[str, float]] = {}
    for fmt, fn in (("png", render_png), ("pdf", render_pdf)):
        wall, cpu, out = _time(fn, views)
        print(f"{fmt.upper()} ({sum(map(len, out)) / len(out) / 1024:.1f} KiB on average)")
        for kind in KINDS:
            idx = [i for i, v in enumerate(views) if KINDS[i % len(KINDS)] == kind]
            print(_line(kind, [wall[i] for i in idx], [cpu[i] for i in idx]))
        print(_line("all", wall, cpu))
        figures[fmt] = {"median_ms": statistics.median(wall),
                        "p95_ms": sup.percentile(wall, 95), "max_ms": max(wall),
                        "cpu_median_ms": statistics.median(cpu)}
        if fmt == "png":
            _check_png(views, out)
    ok = figures["png"]["median_ms"] < PNG_LIMIT_MS
    print(f"PNG median {figures['png']['median_ms']:.2f} ms: "
          f"{'under' if ok else 'NOT under'} the {PNG_LIMIT_MS:.0f} ms limit")
    if args.json:
        Path(args.json).write_text(json.dumps({"receipts": args.receipts, **figures},
                                              indent=2))
    return 0 if ok else 1


def _check_png(views: list[ReceiptView], pngs: list[bytes]) -> None:
    import zxingcpp
    from PIL import Image

    for v, content in list(zip(views, pngs, strict=True))[::10]:
        image = Image.open(io.BytesIO(content))
        assert image.width == WIDTH and image.mode == "1", (image.size, image.mode)
        decoded = [r.text for r in zxingcpp.read_barcodes(image)]
        assert decoded == [v.verify_url], (v.receipt_no, decoded)


if __name__ == "__main__":
    sys.exit(main())
