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
    def __call__(self, fileobj: BinaryIO, *,
                 max_expanded_bytes: int = ...) -> ParsedStatement: ...


# The parsers, registered by source (imported here, after the types they use).
from payment_adapters.statements._common import (  # noqa: E402
    DEFAULT_MAX_EXPANDED_BYTES,
    Statement,
)
from payment_adapters.statements.alipay import parse_alipay  # noqa: E402
from payment_adapters.statements.ours import parse_pos, parse_unionpay  # noqa: E402
from payment_adapters.statements.wechat import parse_wechat  # noqa: E402

PARSERS: dict[str, StatementParser] = {
    "wechat": parse_wechat,
    "alipay": parse_alipay,
    "unionpay": parse_unionpay,
    "pos": parse_pos,
}


def parse_statement(source: str, fileobj: BinaryIO, *,
                    max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES) -> Statement:
    """Parse ``fileobj`` as the statement of ``source`` (wechat, alipay, unionpay, pos).

    Structural problems (not a zip, a wrong header, extra zip members) raise
    :class:`StatementError` here; a bad line raises while iterating, after the lines before
    it were yielded — stage them in one transaction and roll back on the error.
    """
    parser = PARSERS.get(source)
    if parser is None:
        raise StatementError(f"no statement format for {source!r}: one of "
                             + ", ".join(PARSERS))
    return parser(fileobj, max_expanded_bytes=max_expanded_bytes)  # type: ignore[return-value]


__all__ = [
    "DEFAULT_MAX_EXPANDED_BYTES", "PARSERS", "LineKind", "ParsedStatement", "Statement",
    "StatementError", "StatementLine", "StatementParser", "StatementTotals", "parse_alipay",
    "parse_pos", "parse_statement", "parse_unionpay", "parse_wechat",
]
