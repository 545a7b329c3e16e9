"""At least 10,000 malformed or forged notifications to each of the three notify endpoints.

Built from the real, correctly signed payment notification of each channel's pending order
(tests/abuse/notify_fuzz.py: bit flips, truncation, wrong content types, bodies over the 1 MB
limit and between 64 KB and it, wrong encodings, duplicate fields, replayed and stale
timestamps, nested junk JSON, random bytes, NUL bytes), none of them with the signed content
of a genuine one (those are genuine, not forged: left out and not counted), sent in-process
to the app (straight to its ASGI callable) while those orders are pending. Each gets only its
channel's failure answer — WeChat a 400 {"code": "FAIL", …}, Alipay ``fail``, ChinaUMS
``FAILED``; over 1 MB the body limit's 413 — never a 500; every one that reached the service
is ``rejected`` — not verified: neither applied, nor ``unknown_order``, nor ``malformed``
(which is a verified notification's), nor an internal error of ours; no order, payment, bill
line, journal entry or posting changes; and the audit copies stay bounded
(NOTIFY_REJECTED_KEPT_PER_MINUTE full rows per channel and minute, the rest counted), their
counts adding up to what was sent.

Then one of the very notifications the inputs were made from, sent unmodified, pays its
order: the bases could have paid, so a mutation that still verified would have shown in the
money state.

``NOTIFY_FUZZ_COUNT`` changes the count per channel (bench/notify_fuzz.py runs larger ones).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.db import unit_of_work
from backend.ledger.models import JournalEntry, Posting
from backend.notifications.models import InboxNotification, NotificationRejection
from backend.notifications.service import flush_rejections
from backend.orders.models import Attempt, BillLine, Order, Payment
from backend.outbox.models import OutboxJob
from payment_adapters.base import Channel
from tests.abuse.notify_fuzz import (
    ONE_MB,
    Base,
    Fuzzed,
    build,
    genuine_bases,
    stale_bases,
)
from tests.conftest import Live
from tests.orders.helpers import order, ref, resident_headers, seed

COUNT = int(os.environ.get("NOTIFY_FUZZ_COUNT", "10000"))
# Inputs are built and sent in chunks, each from bases signed just before it: WeChat's
# timestamps must stay within its 5 minutes for as long as the inputs made from them are sent.
CHUNK = 10_000
ORDER_CHANNELS = {Channel.WECHAT: "wechat_native", Channel.ALIPAY: "alipay_qr",
                  Channel.UNIONPAY: "unionpay_qr"}


def failure_answer(channel: Channel, status: int, body: bytes) -> bool:
    if channel is Channel.WECHAT:
        if status != 400:
            return False
        doc = json.loads(body)
        return doc.get("code") == "FAIL" and isinstance(doc.get("message"), str)
    return (status, body) == (200, b"fail" if channel is Channel.ALIPAY else b"FAILED")


def money_state(rt: Any) -> dict[str, Any]:
    """What a notification could change, counted and summed."""
    with unit_of_work(rt.sessions) as s:
        def n(model: Any) -> int:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

        return {
            "orders": n(Order), "attempts": n(Attempt), "payments": n(Payment),
            "journal_entries": n(JournalEntry), "postings": n(Posting), "outbox": n(OutboxJob),
            "paid_fen": s.scalar(select(func.coalesce(func.sum(Payment.amount_fen), 0))),
            "posted_fen": s.scalar(select(func.coalesce(func.sum(Posting.amount_fen), 0))),
            "order_status": sorted(s.scalars(select(Order.status))),
            "line_status": sorted(s.scalars(select(BillLine.status))),
            "attempt_status": sorted(s.scalars(select(Attempt.status))),
        }


def audit_counts(rt: Any, channel: Channel) -> tuple[Counter[tuple[str, bool]], Counter[str]]:
    """(inbox rows by outcome and verified, notifications counted in notification_rejections
    by outcome)."""
    flush_rejections(rt)   # what the process still holds (at most a second's)
    with unit_of_work(rt.sessions) as s:
        rows: Counter[tuple[str, bool]] = Counter(
            (o, bool(v)) for o, v in s.execute(
                select(InboxNotification.outcome, InboxNotification.verified)
                .where(InboxNotification.channel == channel.value)))
        counted: Counter[str] = Counter({o: int(c) for o, c in s.execute(
            select(NotificationRejection.outcome, func.sum(NotificationRejection.count))
            .where(NotificationRejection.channel == channel.value)
            .group_by(NotificationRejection.outcome))})
    return rows, counted


async def _post(app: Any, path: str, item: Fuzzed) -> tuple[int, bytes]:
    """One POST straight to the ASGI app, as httpx's ASGITransport makes it (lower-case
    header names, Host and Content-Length added; any latin-1 in a header value), without
    its per-request machinery."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
               for k, v in item.headers.items()]
    headers += [(b"host", b"fuzz"), (b"content-length", str(len(item.body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("fuzz", 80), "extensions": {}}
    status, chunks = 0, []
    delivered, done = False, asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": item.body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def _send(app: Any, path: str, inputs: list[Fuzzed]) -> list[tuple[int, bytes]]:
    limit = asyncio.Semaphore(8)

    async def one(item: Fuzzed) -> tuple[int, bytes]:
        async with limit:
            return await _post(app, path, item)

    return list(await asyncio.gather(*(one(i) for i in inputs)))


def run_channel(app: Any, rt: Any, channel: Channel, trade_no: str, count: int,
                seed_no: int) -> tuple[dict[str, Any], Base]:
    """Build and send ``count`` inputs from the pending order's notifications; check every
    answer and what was recorded; return the counts and a genuine base of the last chunk."""
    rows_before, counted_before = audit_counts(rt, channel)
    path = f"/api/v1/notify/{channel.value}"
    kinds: Counter[str] = Counter()
    left_out: Counter[str] = Counter()
    sent = too_large = 0
    sending = 0.0
    wrong = []
    started = time.monotonic()
    while sent < count:
        bases = genuine_bases(rt, channel, trade_no)
        stale = stale_bases(rt, trade_no) if channel is Channel.WECHAT else []
        built = build(channel, bases, stale, min(CHUNK, count - sent),
                      seed=seed_no * 1000 + sent // CHUNK, huge=0 if sent else 10)
        left_out += built.left_out
        t0 = time.monotonic()
        answers = asyncio.run(_send(app, path, built.inputs))
        sending += time.monotonic() - t0
        for item, (status, body) in zip(built.inputs, answers, strict=True):
            kinds[item.kind] += 1
            if len(item.body) > ONE_MB:
                too_large += 1
                ok = status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
            else:
                ok = failure_answer(channel, status, body)
            if not ok:
                wrong.append((item.kind, status, body[:200], item.headers, item.body[:300]))
        sent += len(built.inputs)
    took = time.monotonic() - started
    assert not wrong, f"{len(wrong)} answers that are not {channel}'s failure answer: {wrong[:5]}"
    rows, counted = audit_counts(rt, channel)
    new_rows, new_counted = rows - rows_before, counted - counted_before
    # nothing verified: a mutation that verified would be applied, or unknown_order, or
    # (fields refused after the signature) malformed — none may be
    assert set(new_rows) <= {("rejected", False)}, f"verified or failed: {new_rows}"
    assert set(new_counted) <= {"rejected"}, new_counted
    # everything that reached the service is in the inbox or counted; the 413s never did
    handled = sent - too_large
    assert sum(new_rows.values()) + sum(new_counted.values()) == handled, (new_rows, counted)
    report = {"channel": channel.value, "sent": sent, "seconds": round(took, 1),
              "sending_seconds": round(sending, 1), "413": too_large,
              "inbox_rows": {o: n for (o, _), n in new_rows.items()},
              "counted_only": sum(new_counted.values()), "kinds": dict(kinds.most_common()),
              "left_out_genuine": dict(left_out.most_common())}
    return report, bases[0]


def pays(app: Any, rt: Any, channel: Channel, base: Base) -> None:
    """One genuine base, sent unmodified: the channel's success answer, a payment."""
    before = money_state(rt)
    rows_before, _ = audit_counts(rt, channel)
    [(status, body)] = asyncio.run(_send(app, f"/api/v1/notify/{channel.value}",
                                         [Fuzzed("genuine", *base)]))
    ok = rt.channels.verifiers[channel].success_answer()
    assert (status, body) == (ok.status, ok.body), (channel, status, body)
    after = money_state(rt)
    assert after["payments"] == before["payments"] + 1, (before, after)
    assert after["paid_fen"] > before["paid_fen"]
    assert after["order_status"].count("paid") == before["order_status"].count("paid") + 1
    rows, _ = audit_counts(rt, channel)
    assert rows - rows_before == Counter({("applied", True): 1}), rows - rows_before


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_ten_thousand_forged_notifications_per_channel_change_nothing(live: Live) -> None:
    from backend.app import create_app

    people = seed(live.rt)
    h = resident_headers(live)
    items = {Channel.WECHAT: ("张三", {"insurance": "medical"}),
             Channel.ALIPAY: ("李梅", {"insurance": "medical"}),
             Channel.UNIONPAY: ("张三", {"insurance": "pension", "tier_yuan": 300})}
    pending = {}
    for channel, name in ORDER_CHANNELS.items():
        who, item = items[channel]
        made = order(live, h, name, [{"resident_ref": ref(live, h, who, people[who]), **item}])
        assert made.status_code == 201, made.text
        pending[channel] = made.json()["payment"]["out_trade_no"]
    before = money_state(live.rt)
    assert before["payments"] == 0 and before["orders"] == 3
    assert before["order_status"] == ["pending"] * 3
    # the same runtime (database, simulator, keys) as the served app, in-process
    app = create_app(runtime=live.rt)
    report = []
    for seed_no, channel in enumerate(Channel):
        result, base = run_channel(app, live.rt, channel, pending[channel], COUNT, seed_no)
        report.append(result)
        assert money_state(live.rt) == before, f"{channel}: something changed"
        # a true positive: the bases were the pending order's, and would have paid it
        pays(app, live.rt, channel, base)
        before = money_state(live.rt)
    print("\nnotification fuzz:", json.dumps(report, ensure_ascii=False))
    assert before["order_status"] == ["paid"] * 3, before
    cap = live.rt.settings.notify_rejected_kept_per_minute
    for r in report:
        assert r["sent"] >= 10_000 or COUNT < 10_000
        minutes = int(r["seconds"] // 60) + 2
        assert r["inbox_rows"].get("rejected", 0) <= cap * minutes, r
