"""The outbox job handlers."""

from __future__ import annotations

from typing import Any

from backend.outbox.service import handler
from backend.refunds.service import execute_refund


@handler("refund")
def refund(rt: Any, payload: dict[str, Any]) -> None:
    execute_refund(rt, int(payload["refund_id"]))
