"""The public check page (``/r/<token>``): what a scan of a receipt's QR code opens.

No login, no script, nothing personal beyond the masks the receipt itself carries: the
page is opened on whatever phone scans the paper, and shared.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from backend import money
from backend.clock import SHANGHAI
from backend.receipts.view import CHANNEL_LABELS, INSURANCE_LABELS, ReceiptView

HERE = Path(__file__).parent
#: Where a resident reports a paper receipt the service does not know (a form page).
REPORT_URL = "/r/report"

env = Environment(loader=FileSystemLoader(HERE / "templates"),
                  autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True)
env.filters.update(
    yuan=lambda fen: money.yuan(fen, thousands=True),
    insurance=lambda i: INSURANCE_LABELS.get(i, i),
    channel=lambda c: CHANNEL_LABELS.get(c, c),
    local_time=lambda t: t.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"),
    cn_date=lambda d: f"{d.year}年{d.month}月{d.day}日")

# No script; the page's own style only; never framed; the token (in the URL) never sent on.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # the refunds beside a receipt are live
    "Cache-Control": "no-store"}


def render(view: ReceiptView | None) -> str:
    return env.get_template("check.html").render(view=view, report_url=REPORT_URL)
