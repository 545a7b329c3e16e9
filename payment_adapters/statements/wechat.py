"""The WeChat Pay trade bill (交易账单, ``GET /v3/bill/tradebill``), bill types ALL, SUCCESS
and REFUND, gzip or plain.

Line 1 is the detail header (plain names); every detail row's fields are prefixed with a
backtick and joined by commas (split on ",`" so a comma inside 商品名称 survives); the
second-to-last line is the summary header (总交易单数,…) and the last the summary row,
backtick-prefixed. Payment rows (交易状态 SUCCESS) carry 应结订单金额/订单金额; refund rows
(REFUND) carry 退款金额/申请退款金额 and a negative 手续费. 手续费 has 5 decimals.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from decimal import Decimal
from typing import BinaryIO

from payment_adapters.statements import StatementError, StatementLine, StatementTotals
from payment_adapters.statements._common import (
    DEFAULT_MAX_EXPANDED_BYTES,
    Amounts,
    Capped,
    Statement,
    Times,
    beijing_time,
    check_unique,
    column_index,
    count,
    refuse_mismatch,
    text_lines,
    yuan_str,
)

# our name → the header names WeChat has used for it (legacy bills first had 总金额 and
# 企业红包…; 子商户号 before 特约商户号)
_DETAIL: dict[str, tuple[str, ...]] = {
    "time": ("交易时间",),
    "transaction_id": ("微信订单号",),
    "out_trade_no": ("商户订单号",),
    "status": ("交易状态",),
    "settle": ("应结订单金额", "总金额"),
    "order": ("订单金额",),
    "fee": ("手续费",),
    "refund_id": ("微信退款单号",),
    "out_refund_no": ("商户退款单号",),
    "refund": ("退款金额",),
    "refund_asked": ("申请退款金额",),
    "coupon_refund": ("充值券退款金额", "企业红包退款金额"),
    "refund_status": ("退款状态",),
    "refund_time": ("退款申请时间",),
}
_REQUIRED = ("time", "transaction_id", "out_trade_no", "status", "fee")
_REFUND_REQUIRED = ("refund_id", "out_refund_no", "refund")
# summary column → the detail column it adds up
_SUMMARY: dict[str, tuple[str, ...]] = {
    "settle": ("应结订单总金额", "总交易额"),
    "refund": ("退款总金额", "总退款金额"),
    "coupon_refund": ("充值券退款总金额", "总企业红包退款金额"),
    "order": ("订单总金额",),
    "refund_asked": ("申请退款总金额",),
}
_SUMMARY_FIRST = "总交易单数"
_ZEROES = frozenset(("0.00", "0", "0.0", ""))


def parse_wechat(fileobj: BinaryIO, *,
                 max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES) -> Statement:
    """Parse a WeChat trade bill; the header is checked now, the lines as they are read."""
    head = fileobj.read(2)
    source = _Prefixed(head, fileobj)
    rest = io.BufferedReader(source)
    if head == b"\x1f\x8b":
        gz = gzip.GzipFile(fileobj=rest, mode="rb")
        raw = Capped(gz, max_expanded_bytes, "the gzip bill",  # type: ignore[arg-type]
                     consumed=lambda: source.read_bytes)
        lines = _guard_gzip(text_lines(raw, "utf-8-sig"))
    else:
        lines = text_lines(rest, "utf-8-sig")
    header_line = _first_line(lines)
    return Statement(lambda stmt: _rows(stmt, header_line, lines))


class _Prefixed(io.RawIOBase):
    """The stream again, with the bytes already read to sniff it put back in front."""

    def __init__(self, head: bytes, inner: BinaryIO) -> None:
        self._head, self._inner = head, inner
        self.read_bytes = len(head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._inner.read(len(buffer))
        buffer[:len(data)] = data
        self.read_bytes += len(data)
        return len(data)


def _guard_gzip(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    try:
        yield from lines
    except (gzip.BadGzipFile, EOFError, OSError, zlib.error) as exc:   # zlib: bad deflate data
        raise StatementError(f"the gzip bill is damaged or cut short ({exc})") from exc


def _first_line(lines: Iterator[tuple[int, str]]) -> tuple[int, str]:
    for line_no, line in lines:
        if line.strip():
            return line_no, line
    raise StatementError("the bill is empty")


def _rows(stmt: Statement, header_line: tuple[int, str],
          lines: Iterator[tuple[int, str]]) -> Iterator[StatementLine]:
    header_no, text = header_line
    header = [name.strip().lstrip("`") for name in text.split(",")]
    check_unique(header, header_no)
    col = {key: column_index(header, names) for key, names in _DETAIL.items()}
    missing = [_DETAIL[k][0] for k in _REQUIRED if col[k] is None]
    if col["settle"] is None and col["order"] is None:
        missing.append("应结订单金额")
    if missing:
        raise StatementError("not a WeChat Pay trade bill header: no column "
                             + ", ".join(missing), line=header_no)
    i_time, i_txn, i_out, i_status, i_fee = (col[k] for k in _REQUIRED)
    assert i_time is not None and i_txn is not None and i_out is not None
    assert i_status is not None and i_fee is not None
    i_amount = col["settle"] if col["settle"] is not None else col["order"]
    assert i_amount is not None
    amount_name = header[i_amount]
    has_refunds = all(col[k] is not None for k in _REFUND_REQUIRED)
    i_refund_id, i_out_refund, i_refund = col["refund_id"], col["out_refund_no"], col["refund"]
    i_refund_status, i_refund_time = col["refund_status"], col["refund_time"]
    width = len(header)
    # detail sums, per summary column, in fen
    summed = [(key, i) for key in _SUMMARY if (i := col[key]) is not None]
    sums = dict.fromkeys(_SUMMARY, 0)
    fee_units = 0
    payments = refunds = payment_fen = refund_fen = 0
    amounts = Amounts()
    yuan, fee = amounts.yuan, amounts.fee
    when = Times()

    for line_no, line in lines:
        if not line.startswith("`"):
            if line.split(",", 1)[0].strip() == _SUMMARY_FIRST:
                _summary(stmt, line_no, line, lines, sums, fee_units,
                         payments, payment_fen, refunds, refund_fen, amounts)
                return
            if not line.strip():
                continue
            raise StatementError("a detail row must start with a backtick (`) and the summary "
                                 f"with {_SUMMARY_FIRST}", line=line_no)
        cells = line[1:].split(",`")
        if len(cells) != width:
            raise StatementError(f"{len(cells)} fields for the header's {width} columns",
                                 line=line_no)
        for key, i in summed:
            cell = cells[i]
            if cell not in _ZEROES:
                sums[key] += yuan(cell, line_no, header[i])
        units, fee_fen = fee(cells[i_fee], line_no, "手续费")
        fee_units += units
        status = cells[i_status]
        at = when(cells[i_time], line_no, "交易时间")
        if status == "SUCCESS":
            amount = yuan(cells[i_amount], line_no, amount_name)
            if amount <= 0:
                raise StatementError(f"{amount_name} {cells[i_amount]!r} of a payment must be "
                                     "above zero", line=line_no)
            if fee_fen < 0:
                raise StatementError(f"手续费 {cells[i_fee]!r} of a payment is negative",
                                     line=line_no)
            payments += 1
            payment_fen += amount
            yield StatementLine(line_no, "payment", _id(cells[i_out], "商户订单号", line_no),
                                _id(cells[i_txn], "微信订单号", line_no), amount, fee_fen,
                                status, at)
        elif status == "REFUND":
            if not has_refunds:
                raise StatementError("a REFUND row in a bill without the refund columns "
                                     "(微信退款单号, 商户退款单号, 退款金额)", line=line_no)
            assert i_refund is not None and i_out_refund is not None and i_refund_id is not None
            amount = yuan(cells[i_refund], line_no, "退款金额")
            if amount <= 0:
                raise StatementError(f"退款金额 {cells[i_refund]!r} of a refund must be above "
                                     "zero", line=line_no)
            if fee_fen > 0:
                raise StatementError(f"手续费 {cells[i_fee]!r} of a refund is positive (a "
                                     "refund gives the fee back: ≤ 0)", line=line_no)
            refund_state = cells[i_refund_status] if i_refund_status is not None else ""
            if i_refund_time is not None and cells[i_refund_time]:
                at = beijing_time(cells[i_refund_time], line_no, "退款申请时间")
            refunds += 1
            refund_fen += amount
            yield StatementLine(
                line_no, "refund", _id(cells[i_out], "商户订单号", line_no),
                _id(cells[i_txn], "微信订单号", line_no), amount, fee_fen,
                "REFUND" if refund_state in ("SUCCESS", "") else f"REFUND_{refund_state}", at,
                out_refund_no=_id(cells[i_out_refund], "商户退款单号", line_no),
                refund_id=_id(cells[i_refund_id], "微信退款单号", line_no))
        elif status == "REVOKED":
            raise StatementError(
                "交易状态 REVOKED (a payment-code trade revoked): this service takes no "
                "payment-code payments, so the bill is not one it can account for; ask WeChat "
                "Pay about the trade before importing", line=line_no)
        else:
            raise StatementError(f"交易状态 {status!r} is none of SUCCESS, REFUND", line=line_no)
    raise StatementError(f"no summary ({_SUMMARY_FIRST}…) at the end: the bill is truncated")


def _id(text: str, column: str, line: int) -> str:
    if not text or text == "0":
        raise StatementError(f"{column} is empty", line=line)
    return text


def _summary(stmt: Statement, header_no: int, text: str, lines: Iterator[tuple[int, str]],
             sums: dict[str, int], fee_units: int, payments: int,
             payment_fen: int, refunds: int, refund_fen: int, amounts: Amounts) -> None:
    header = [name.strip() for name in text.split(",")]
    check_unique(header, header_no)
    row: list[str] | None = None
    row_no = header_no
    for line_no, line in lines:
        if not line.strip():
            continue
        if row is not None:
            raise StatementError("text after the summary row", line=line_no)
        if not line.startswith("`"):
            raise StatementError("the summary row must start with a backtick (`)", line=line_no)
        row, row_no = line[1:].split(",`"), line_no
    if row is None:
        raise StatementError("the summary header has no summary row: the bill is truncated",
                             line=header_no)
    if len(row) != len(header):
        raise StatementError(f"{len(row)} summary fields for {len(header)} summary columns",
                             line=row_no)
    said = dict(zip(header, (cell.strip() for cell in row), strict=True))
    if "手续费总金额" not in said:
        raise StatementError("the summary has no 手续费总金额", line=header_no)
    rows = count(said[_SUMMARY_FIRST], row_no, _SUMMARY_FIRST)
    if rows != payments + refunds:
        raise refuse_mismatch(_SUMMARY_FIRST, rows, payments + refunds, row_no)
    fee_said, fee_fen = amounts.fee(said["手续费总金额"], row_no, "手续费总金额")
    if fee_said != fee_units:
        raise refuse_mismatch("手续费总金额", said["手续费总金额"],
                              f"{Decimal(fee_units).scaleb(-5):.5f}", row_no)
    present = {k for k, names in _SUMMARY.items() if any(n in said for n in names)}
    if not present & {"settle", "order"}:
        raise StatementError("the summary has no 应结订单总金额 or 订单总金额", line=header_no)
    for key, names in _SUMMARY.items():
        name = next((n for n in names if n in said), None)
        if name is None:
            continue
        value = amounts.yuan(said[name], row_no, name)
        if value != sums[key]:
            raise refuse_mismatch(name, said[name], yuan_str(sums[key]), row_no)
    stmt.totals = StatementTotals(payments=payments, payment_fen=payment_fen, refunds=refunds,
                                  refund_fen=refund_fen, fee_fen=fee_fen)


__all__ = ["parse_wechat"]
