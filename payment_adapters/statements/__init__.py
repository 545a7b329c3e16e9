"""Channel settlement statements (对账单): what a channel says it took and gave back on a day.

Every statement format — the WeChat Pay trade bill, the Alipay trade-bill zip, the ChinaUMS
statement and a POS acquirer's settlement — is parsed into the same :class:`StatementLine`s,
streamed (a bill can hold a million rows) from a binary file object. Columns are found by
header name; amounts are parsed with ``Decimal`` into integer fen. Anything malformed raises
:class:`StatementError` naming the line and what was wrong; since lines are streamed, the
caller stages them inside one transaction and rolls back on the error, so nothing of a bad
file is imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Literal, Protocol

LineKind = Literal["payment", "refund"]


@dataclass(frozen=True, slots=True)
class StatementLine:
    line_no: int                 # 1-based line in the (decompressed) file, for messages
    kind: LineKind
    out_trade_no: str            # ours: the attempt's out_trade_no (ChinaUMS billNo; POS: the
                                 # agent's pos_reference)
    transaction_id: str          # the channel's (WeChat 微信订单号, Alipay 支付宝交易号, …)
    amount_fen: int              # > 0: what the payer paid (payment) or got back (refund)
    fee_fen: int                 # the channel's fee on this line, rounded half-up to the fen;
                                 # on a refund line the fee given back (≤ 0)
    status: str                  # the channel's own word (SUCCESS, REFUND, 交易, 退款, …)
    occurred_at: datetime        # aware; the channel's time (Beijing) of the payment/refund
    out_refund_no: str | None = None   # ours, on refund lines
    refund_id: str | None = None       # the channel's, on refund lines
    terminal: str | None = None        # POS terminal / ChinaUMS seqId, where the format has it


@dataclass(frozen=True, slots=True)
class StatementTotals:
    """What the statement's own summary says (checked against its lines by the parser)."""

    payments: int
    payment_fen: int
    refunds: int
    refund_fen: int
    fee_fen: int


class StatementError(ValueError):
    """A statement that cannot be imported: says which line and what was wrong."""

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        self.reason, self.line = reason, line
        super().__init__(f"line {line}: {reason}" if line else reason)


class ParsedStatement(Protocol):
    """Iterate for the lines (once); ``totals`` is set when iteration has finished, after
    the summary was checked against the lines."""

    totals: StatementTotals | None

    def __iter__(self) -> Iterator[StatementLine]: ...


class StatementParser(Protocol):
    def __call__(self, fileobj: BinaryIO) -> ParsedStatement: ...
