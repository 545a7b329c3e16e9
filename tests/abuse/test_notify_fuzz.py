"""At least 10,000 malformed or forged notifications to each of the three notify endpoints.

Built from real signed notifications (tests/abuse/notify_fuzz.py: bit flips, truncation,
wrong content types, bodies over the 1 MB limit and between 64 KB and it, wrong encodings,
duplicate fields, replayed and stale timestamps, nested junk JSON, random bytes, NUL bytes),
sent in-process to the app (httpx's ASGI transport) while a real order is pending. Each gets
only its channel's failure answer — WeChat a 400 {"code": "FAIL", …}, Alipay ``fail``,
ChinaUMS ``FAILED``; over 1 MB the body limit's 413 — never a 500 and never an internal
error of ours; no order, payment, bill line, journal entry or posting changes; and the
audit copies stay bounded (NOTIFY_REJECTED_KEPT_PER_MINUTE full rows per channel and
minute, the rest counted), their counts adding up to what was sent.

``NOTIFY_FUZZ_COUNT`` changes the count per channel (bench/notify_fuzz.py runs larger ones).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from backend.db import unit_of_work
from backend.ledger.models import JournalEntry, Posting
from backend.notifications.models import InboxNotification, NotificationRejection
from backend.notifications.service import flush_rejections
from backend.orders.models import Attempt, BillLine, Order, Payment
from backend.outbox.models import OutboxJob
from payment_adapters.base import Channel
from tests.abuse.notify_fuzz import ONE_MB, Fuzzed, build, genuine_bases, stale_bases
from tests.conftest import Live
from tests.orders.helpers import order, ref, resident_headers, seed

COUNT = int(os.environ.get("NOTIFY_FUZZ_COUNT", "10000"))
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


def audit_counts(rt: Any, channel: Channel) -> tuple[Counter[str], int]:
    """(inbox rows by outcome, notifications counted in notification_rejections)."""
    flush_rejections(rt)   # what the process still holds (at most a second's)
    with unit_of_work(rt.sessions) as s:
        rows = Counter(s.scalars(select(InboxNotification.outcome).where(
            InboxNotification.channel == channel.value)))
        counted = s.scalar(select(func.coalesce(func.sum(NotificationRejection.count), 0))
                           .where(NotificationRejection.channel == channel.value))
    return rows, int(counted or 0)


async def _send(app: Any, path: str, inputs: list[Fuzzed]) -> list[tuple[int, bytes]]:
    transport = httpx.ASGITransport(app=app)
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        async def one(item: Fuzzed) -> tuple[int, bytes]:
            async with limit:
                # bytes: a header may carry any latin-1 (httpx would want ASCII text)
                headers = [(k.encode("latin-1"), v.encode("latin-1"))
                           for k, v in item.headers.items()]
                resp = await client.post(path, content=item.body, headers=headers)
                return resp.status_code, resp.content

        return list(await asyncio.gather(*(one(i) for i in inputs)))


def run_channel(app: Any, rt: Any, channel: Channel, inputs: list[Fuzzed]) -> dict[str, Any]:
    """Send them all; check every answer; return the counts."""
    rows_before, counted_before = audit_counts(rt, channel)
    started = time.monotonic()
    answers = asyncio.run(_send(app, f"/api/v1/notify/{channel.value}", inputs))
    took = time.monotonic() - started
    kinds: Counter[str] = Counter()
    wrong = []
    too_large = 0
    for item, (status, body) in zip(inputs, answers, strict=True):
        kinds[item.kind] += 1
        if len(item.body) > ONE_MB:
            too_large += 1
            ok = status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
        else:
            ok = failure_answer(channel, status, body)
        if not ok:
            wrong.append((item.kind, status, body[:200], item.body[:120]))
    assert not wrong, f"{len(wrong)} answers that are not {channel}'s failure answer: {wrong[:5]}"
    rows, counted = audit_counts(rt, channel)
    new_rows = rows - rows_before
    assert "error" not in new_rows, f"our own failures: {new_rows}"
    # everything that reached the service is in the inbox or counted; the 413s never did
    handled = len(inputs) - too_large
    assert sum(new_rows.values()) + counted - counted_before == handled, (new_rows, counted)
    return {"channel": channel.value, "sent": len(inputs), "seconds": round(took, 1),
            "413": too_large, "inbox_rows": dict(new_rows),
            "counted_only": counted - counted_before, "kinds": dict(kinds)}


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
    # the same runtime (database, simulator, keys) as the served app, in-process
    app = create_app(runtime=live.rt)
    report = []
    for seed_no, channel in enumerate(Channel):
        bases = genuine_bases(live.rt, channel)
        stale = stale_bases(live.rt, pending[channel]) if channel is Channel.WECHAT else []
        inputs = build(bases, stale, COUNT, seed=seed_no)
        report.append(run_channel(app, live.rt, channel, inputs))
        assert money_state(live.rt) == before, f"{channel}: something changed"
    print("\nnotification fuzz:", json.dumps(report, ensure_ascii=False))
    for r in report:
        assert r["sent"] >= 10_000 or COUNT < 10_000
        cap = live.rt.settings.notify_rejected_kept_per_minute
        rejected_rows = sum(n for o, n in r["inbox_rows"].items()
                            if o in ("rejected", "malformed"))
        minutes = int(r["seconds"] // 60) + 2
        assert rejected_rows <= cap * minutes, r
