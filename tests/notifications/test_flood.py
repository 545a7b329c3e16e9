"""A flood of forged notifications cannot fill the database: per channel and minute, the
first NOTIFY_REJECTED_KEPT_PER_MINUTE rejected ones are inbox rows (body cut to 4 KB), the
rest only counted in notification_rejections; verified ones are always kept in full."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

import backend.notifications.service as service
from backend.db import unit_of_work
from backend.notifications.models import InboxNotification, NotificationRejection
from backend.notifications.service import flush_rejections
from backend.runtime import Runtime
from payment_adapters.base import Channel

KEPT = 50
FLOOD = {"sqlite": 5000, "postgres": 2000}   # PostgreSQL: ~3 ms each here (Redis, a commit)
NOW = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)


@pytest.fixture
def capped(settings: Any, sandbox_keys: dict[str, object]) -> Any:
    rt = Runtime(settings.model_copy(update={
        "notify_rejected_kept_per_minute": KEPT, **sandbox_keys}))
    from tests.conftest import _wipe

    _wipe(rt)
    yield rt
    rt.close()


def _counts(rt: Runtime, channel: str) -> tuple[dict[str, int], int, list[NotificationRejection]]:
    flush_rejections(rt)   # what the process still holds (at most a second's)
    with unit_of_work(rt.sessions) as s:
        rows = dict(s.execute(select(InboxNotification.outcome, func.count())
                              .where(InboxNotification.channel == channel)
                              .group_by(InboxNotification.outcome)).all())
        summary = list(s.scalars(select(NotificationRejection)
                                 .where(NotificationRejection.channel == channel)))
        s.expunge_all()
    return rows, sum(r.count for r in summary), summary


def test_a_flood_of_forged_notifications_leaves_at_most_the_cap_in_full(
        capped: Runtime, monkeypatch: pytest.MonkeyPatch, backend_name: str) -> None:
    flood = FLOOD[backend_name]
    monkeypatch.setattr(service, "real_now", lambda: NOW)   # one minute of real time
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    big = b"sign=x&" + b"a" * 20_000
    for n in range(flood):
        body = big if n == 0 else f"sign=forged{n}&out_trade_no=X{n}".encode()
        answer = service.handle(capped, Channel.ALIPAY, headers, body)
        assert (answer.status, answer.body) == (200, b"fail")
    # another channel has its own allowance
    for n in range(KEPT + 10):
        service.handle(capped, Channel.UNIONPAY, headers, f"sign=bad{n}".encode())

    rows, counted, summary = _counts(capped, "alipay")
    assert rows == {"rejected": KEPT}
    assert rows["rejected"] + counted == flood
    assert len(summary) == 1
    only = summary[0]
    assert (only.outcome, only.minute) == ("rejected", NOW.replace(second=0))
    assert only.count == flood - KEPT and "forged" in only.first_body
    assert len(only.first_body) <= service.REJECTED_BODY_BYTES
    with unit_of_work(capped.sessions) as s:
        first = s.scalar(select(InboxNotification).order_by(InboxNotification.id))
        assert first is not None
        assert len(first.body) == service.REJECTED_BODY_BYTES
        assert "body of 20007 bytes, the first 4096 kept" in (first.detail or "")
    rows, counted, _ = _counts(capped, "unionpay")
    assert (rows, counted) == ({"rejected": KEPT}, 10)

    # the next minute starts a new allowance
    monkeypatch.setattr(service, "real_now", lambda: NOW.replace(minute=1))
    service.handle(capped, Channel.ALIPAY, headers, b"sign=later")
    rows, counted, _ = _counts(capped, "alipay")
    assert (rows, counted) == ({"rejected": KEPT + 1}, flood - KEPT)


def test_what_is_not_a_forgery_is_kept_in_full_whatever_the_flood(
        capped: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "real_now", lambda: NOW)
    for n in range(KEPT + 5):
        service.handle(capped, Channel.WECHAT, {}, f"junk{n}".encode())
    for outcome in ("unknown_order", "amount_mismatch", "transaction_conflict", "error"):
        assert service._audit(capped, Channel.WECHAT, {}, b"{}", outcome, "verified") is True
    assert service._audit(capped, Channel.WECHAT, {}, b"{}", "malformed", "x") is False
    rows, counted, _ = _counts(capped, "wechat")
    assert rows == {"rejected": KEPT, "unknown_order": 1, "amount_mismatch": 1,
                    "transaction_conflict": 1, "error": 1}
    assert counted == 5 + 1


def _counted(rt: Runtime) -> int:
    with unit_of_work(rt.sessions) as s:
        return int(s.scalar(select(func.coalesce(func.sum(NotificationRejection.count), 0)))
                   or 0)


def test_a_floods_last_counts_are_written_without_another_rejection(capped: Runtime) -> None:
    """serve writes what the process holds once a second: a flood that stopped leaves
    nothing in memory (a SIGKILL would have lost it)."""
    import time

    from fastapi.testclient import TestClient

    from backend.app import create_app

    with TestClient(create_app(runtime=capped)):
        capped.rejections.add(("alipay", NOW.replace(second=0), "rejected"),
                              ("forged", {}, "sign=x"), NOW)
        deadline = time.monotonic() + 5
        while _counted(capped) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _counted(capped) == 1
        assert not capped.rejections.pending()


def test_counts_whose_write_failed_are_kept_for_the_next(
        capped: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    key = ("unionpay", NOW.replace(second=0), "malformed")
    capped.rejections.add(key, ("first", {}, "a"), NOW)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("database gone")

    monkeypatch.setattr(service, "unit_of_work", broken)
    with pytest.raises(RuntimeError):
        flush_rejections(capped)
    capped.rejections.add(key, ("second", {}, "b"), NOW)
    monkeypatch.undo()
    flush_rejections(capped)
    with unit_of_work(capped.sessions) as s:
        row = s.scalars(select(NotificationRejection)).one()
        assert (row.count, row.first_detail) == (2, "first")
