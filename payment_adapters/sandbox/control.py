"""The simulator's control panel: pay a trade, flip fault switches, look at trades.

``POST /sandbox/pay`` is what a person (through ``python -m backend sandbox pay``) or a test
uses to make the channel report a payment: the trade is marked paid at the "channel" and
the real-format notification is sent to the notify URL the trade was created with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from payment_adapters.base import Channel
from payment_adapters.sandbox.core import (
    ChannelSimulator,
    PayOptions,
    SandboxState,
    deliver,
    deliver_later,
    sim_transaction_id,
)


class PayCommand(BaseModel):
    out_trade_no: str = Field(min_length=1, max_length=64)
    channel: Channel | None = None
    times: int = Field(default=1, ge=0, le=100, description="send the notification n times")
    delay_s: float = Field(default=0, ge=0, le=600, description="deliver in the background")
    amount_fen: int | None = Field(default=None, ge=1, description="pay a different amount")
    transaction_id: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="report the payment under this transaction id (a fault: e.g. one the "
                    "channel already gave another trade)")
    bad_signature: bool = False
    event: str | None = Field(default=None, max_length=32)
    deliver: bool = Field(default=True, description="false: only return the notifications")


class FaultCommand(BaseModel):
    channel: Channel
    timeout: bool | None = None
    query_not_found: bool | None = None
    garbage: bool | None = None
    hang_s: float | None = Field(default=None, ge=0, le=60)
    answer_error: str | None = Field(default=None, max_length=64,
                                     description="an error code to answer; empty: none")
    error_after_effect: bool | None = None
    other_refund_record: bool | None = None
    corrupt_statement: bool | None = None
    hold_refunds: Literal["before_effect", "after_effect", ""] | None = Field(
        default=None, description="refund calls wait before (then dropped undone) or after "
                                  "doing the refund, until this is cleared (empty)")
    hold_s: float | None = Field(default=None, ge=0, le=600,
                                 description="the longest a held refund call waits")


def _trade_json(trade: Any) -> dict[str, Any]:
    return {
        "channel": trade.channel, "out_trade_no": trade.out_trade_no, "state": trade.state,
        "amount_fen": trade.amount_fen, "paid_fen": trade.paid_fen,
        "transaction_id": trade.transaction_id,
        "paid_at": trade.paid_at.isoformat() if trade.paid_at else None,
        "refunded_fen": trade.refunded_fen,
    }


class ClockCommand(BaseModel):
    to: datetime = Field(description="the business instant to move to, with its offset "
                                     "(forward only), e.g. 2020-11-03T10:30:00+08:00")


def control_router(state: SandboxState, sims: Sequence[ChannelSimulator], *,
                   move_clock: Callable[[datetime], datetime] | None = None) -> APIRouter:
    by_channel = {s.channel: s for s in sims}
    router = APIRouter(prefix="/sandbox", tags=["sandbox"])

    @router.get("/clock")
    def clock() -> dict[str, Any]:
        return {"now": state.now().isoformat(), "movable": move_clock is not None}

    @router.post("/clock")
    def set_clock(cmd: ClockCommand) -> dict[str, Any]:
        """Move the business clock forward (a rehearsal's next morning: the day's statements
        are published after 10:00 the next day). Only with COLLECT_NOW; this process only."""
        if move_clock is None:
            raise HTTPException(409, "the business clock is real time (COLLECT_NOW is not "
                                     "set): it cannot be moved")
        try:
            now = move_clock(cmd.to)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"now": now.isoformat(), "movable": True}

    @router.post("/pay")
    def pay(cmd: PayCommand) -> dict[str, Any]:
        trade = (state.get(cmd.channel, cmd.out_trade_no) if cmd.channel
                 else state.find(cmd.out_trade_no))
        if trade is None:
            raise HTTPException(404, f"the simulator has no trade {cmd.out_trade_no}")
        sim = by_channel[trade.channel]
        # A channel's own rule against this payment (e.g. a code past its expiry time).
        refuses = getattr(sim, "refuses_payment", None)
        refusal = refuses(trade) if refuses is not None else None
        if refusal:
            raise HTTPException(409, refusal)
        opts = PayOptions(amount_fen=cmd.amount_fen, bad_signature=cmd.bad_signature,
                          event=cmd.event)
        txn = cmd.transaction_id or sim_transaction_id(trade.channel, state.next_seq(),
                                                       state.now())
        try:
            state.mark_paid(trade, opts, txn)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        notes = [sim.payment_notification(trade, opts) for _ in range(cmd.times)]
        deliveries: list[dict[str, Any]] = []
        for note in notes:
            if not cmd.deliver:
                continue
            if cmd.delay_s:
                deliver_later(note, cmd.delay_s)
            else:
                status, text = deliver(note)
                deliveries.append({"status": status, "body": text[:500]})
        return {
            "trade": _trade_json(trade), "deliveries": deliveries,
            "notifications": [{"url": n.url, "headers": dict(n.headers),
                               "body": n.body.decode()} for n in notes],
        }

    @router.post("/faults")
    def faults(cmd: FaultCommand) -> dict[str, Any]:
        f = state.faults[cmd.channel]
        for name in ("timeout", "query_not_found", "garbage", "hang_s", "error_after_effect",
                     "other_refund_record", "corrupt_statement", "hold_s"):
            value = getattr(cmd, name)
            if value is not None:
                setattr(f, name, value)
        if cmd.answer_error is not None:
            f.answer_error = cmd.answer_error or None
        if cmd.hold_refunds is not None:
            state.set_hold(cmd.channel, cmd.hold_refunds or None)
        return {"channel": cmd.channel, "timeout": f.timeout,
                "query_not_found": f.query_not_found, "garbage": f.garbage, "hang_s": f.hang_s,
                "answer_error": f.answer_error, "error_after_effect": f.error_after_effect,
                "other_refund_record": f.other_refund_record,
                "corrupt_statement": f.corrupt_statement, "hold_refunds": f.hold_refunds,
                "hold_s": f.hold_s}

    @router.get("/refunds/{out_refund_no}")
    def refund_calls(out_refund_no: str) -> dict[str, Any]:
        """What the channel saw of a refund number (the channel's own: WeChat out_refund_no,
        Alipay out_request_no, ChinaUMS refundOrderId): refund calls, refunds done (a repeat
        does none), queries, and calls held now by the hold_refunds switch."""
        seen = state.refund_calls(out_refund_no)
        if seen is None:
            raise HTTPException(404, f"the simulator saw no refund {out_refund_no}")
        return {"out_refund_no": out_refund_no, **vars(seen)}

    @router.get("/trades/{out_trade_no}")
    def trade(out_trade_no: str) -> dict[str, Any]:
        found = state.find(out_trade_no)
        if found is None:
            raise HTTPException(404, f"the simulator has no trade {out_trade_no}")
        return _trade_json(found)

    for sim in sims:
        router.include_router(sim.router())
    return router
