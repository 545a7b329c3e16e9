"""The two statement formats this service defines, where no public format exists: the
ChinaUMS (银联商务) statement and a POS acquirer's settlement. Both are UTF-8 CSV (a BOM is
allowed), columns found by header name (others ignored), one statement day per file, and
a last row ``TOTAL,<payments>,<payment amount>,<refunds>,<refund amount>,<net fee>``.
docs/statements.md describes them column by column.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from payment_adapters.statements import StatementError, StatementLine, StatementTotals
from payment_adapters.statements._common import (
    DEFAULT_MAX_EXPANDED_BYTES,
    Amounts,
    Statement,
    beijing_time,
    check_unique,
    count,
    iso_day,
    refuse_mismatch,
    text_lines,
)

UNIONPAY_COLUMNS = ("billDate", "billNo", "targetOrderId", "seqId", "type", "payTime",
                    "amount", "fee", "refundOrderId", "refundTargetOrderId", "mid", "tid")
UNIONPAY_REQUIRED = UNIONPAY_COLUMNS[:9]
POS_COLUMNS = ("settle_date", "merchant_id", "terminal_id", "pos_reference", "card_no",
               "trade_time", "type", "amount", "fee", "net_amount", "original_reference")
POS_REQUIRED = ("settle_date", "merchant_id", "terminal_id", "pos_reference", "card_no",
                "trade_time", "amount", "fee", "net_amount")
_MASKED_CARD = re.compile(r"\d{0,6}\*{3,}\d{0,4}")


@dataclass(frozen=True)
class _Format:
    name: str
    required: tuple[str, ...]
    day_column: str
    money: Callable[[Amounts, str, int, str], int]     # (amounts, cell, line, column) → fen
    row: Callable[[dict[str, int], list[str], int, Amounts], StatementLine]


def _fen(amounts: Amounts, text: str, line: int, column: str) -> int:
    return amounts.fen(text, line, column)


def _yuan(amounts: Amounts, text: str, line: int, column: str) -> int:
    return amounts.yuan(text, line, column)


def _need(text: str, column: str, line: int) -> str:
    if not text:
        raise StatementError(f"{column} is empty", line=line)
    return text


def _signs(kind: str, amount: int, fee: int, line: int) -> None:
    if amount <= 0:
        raise StatementError(f"amount {amount} must be above zero (a refund's amount is "
                             "positive too; its type says it is a refund)", line=line)
    if kind == "payment" and fee < 0:
        raise StatementError("fee of a payment is negative", line=line)
    if kind == "refund" and fee > 0:
        raise StatementError("fee of a refund is positive (a refund gives the fee back: ≤ 0)",
                             line=line)


def _unionpay_row(col: dict[str, int], cells: list[str], line: int,
                  amounts: Amounts) -> StatementLine:
    kind_word = cells[col["type"]]
    if kind_word not in ("PAY", "REFUND"):
        raise StatementError(f"type {kind_word!r} is neither PAY nor REFUND", line=line)
    kind = "payment" if kind_word == "PAY" else "refund"
    amount = amounts.fen(cells[col["amount"]], line, "amount")
    fee = amounts.fen(cells[col["fee"]], line, "fee")
    _signs(kind, amount, fee, line)
    at = beijing_time(cells[col["payTime"]], line, "payTime")
    bill_no = _need(cells[col["billNo"]], "billNo", line)
    target = _need(cells[col["targetOrderId"]], "targetOrderId", line)
    seq = _need(cells[col["seqId"]], "seqId", line)
    if kind == "payment":
        if cells[col["refundOrderId"]]:
            raise StatementError("refundOrderId on a PAY row", line=line)
        return StatementLine(line, "payment", bill_no, target, amount, fee, kind_word, at,
                             terminal=seq)
    refund_target = cells[col["refundTargetOrderId"]] if "refundTargetOrderId" in col else ""
    return StatementLine(line, "refund", bill_no, target, amount, fee, kind_word, at,
                         out_refund_no=_need(cells[col["refundOrderId"]], "refundOrderId", line),
                         refund_id=refund_target or None, terminal=seq)


def _pos_row(col: dict[str, int], cells: list[str], line: int,
             amounts: Amounts) -> StatementLine:
    kind_word = cells[col["type"]] if "type" in col and cells[col["type"]] else "SALE"
    if kind_word not in ("SALE", "REFUND"):
        raise StatementError(f"type {kind_word!r} is neither SALE nor REFUND", line=line)
    kind = "payment" if kind_word == "SALE" else "refund"
    amount = amounts.yuan(cells[col["amount"]], line, "amount")
    fee = amounts.yuan(cells[col["fee"]], line, "fee")
    net = amounts.yuan(cells[col["net_amount"]], line, "net_amount")
    _signs(kind, amount, fee, line)
    expected_net = amount - fee if kind == "payment" else -amount - fee
    if net != expected_net:
        raise StatementError(f"net_amount {cells[col['net_amount']]!r} is not "
                             + ("amount − fee" if kind == "payment" else "−amount − fee"),
                             line=line)
    card = cells[col["card_no"]]
    if not _MASKED_CARD.fullmatch(card):
        raise StatementError("card_no must be masked (e.g. 622848******1234); a full or "
                             "malformed card number is refused", line=line)
    at = beijing_time(cells[col["trade_time"]], line, "trade_time")
    reference = _need(cells[col["pos_reference"]], "pos_reference", line)
    terminal = _need(cells[col["terminal_id"]], "terminal_id", line)
    _need(cells[col["merchant_id"]], "merchant_id", line)
    if kind == "payment":
        return StatementLine(line, "payment", reference, reference, amount, fee, kind_word, at,
                             terminal=terminal)
    original = cells[col["original_reference"]] if "original_reference" in col else ""
    original = _need(original, "original_reference (the sale a REFUND gives back)", line)
    return StatementLine(line, "refund", original, original, amount, fee, kind_word, at,
                         out_refund_no=reference, refund_id=reference, terminal=terminal)


UNIONPAY = _Format("ChinaUMS statement", UNIONPAY_REQUIRED, "billDate", _fen, _unionpay_row)
POS = _Format("POS settlement", POS_REQUIRED, "settle_date", _yuan, _pos_row)


def parse_unionpay(fileobj: BinaryIO, *,
                   max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES) -> Statement:
    """Parse a ChinaUMS statement (this service's format: docs/statements.md)."""
    return _parse(UNIONPAY, fileobj)


def parse_pos(fileobj: BinaryIO, *,
              max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES) -> Statement:
    """Parse a POS acquirer settlement (this service's format: docs/statements.md)."""
    return _parse(POS, fileobj)


def _parse(fmt: _Format, fileobj: BinaryIO) -> Statement:
    reader = csv.reader(line for _, line in text_lines(fileobj, "utf-8-sig"))
    rows = _guard(reader)
    first = next(((n, c) for n, c in rows if any(x.strip() for x in c)), None)
    if first is None:
        raise StatementError(f"the {fmt.name} is empty")
    line_no, cells = first
    header = [c.strip() for c in cells]
    check_unique(header, line_no)
    missing = [name for name in fmt.required if name not in header]
    if missing:
        raise StatementError(f"not a {fmt.name} header: no column " + ", ".join(missing),
                             line=line_no)
    col = {name: header.index(name) for name in header}
    return Statement(lambda stmt: _rows(stmt, fmt, col, len(header), rows))


def _guard(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells); csv.reader's line_num counts every physical line read."""
    try:
        for cells in reader:
            yield reader.line_num, cells
    except csv.Error as exc:
        raise StatementError(f"not readable CSV ({exc})", line=reader.line_num) from exc


def _rows(stmt: Statement, fmt: _Format, col: dict[str, int], width: int,
          rows: Iterator[tuple[int, list[str]]]) -> Iterator[StatementLine]:
    amounts = Amounts()
    payments = refunds = payment_fen = refund_fen = fee_fen = 0
    for line_no, cells in rows:
        if not any(c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells]
        if cells[0] == "TOTAL":
            _total(stmt, fmt, line_no, cells, rows, amounts,
                   (payments, payment_fen, refunds, refund_fen, fee_fen))
            return
        if len(cells) != width:
            raise StatementError(f"{len(cells)} fields for the header's {width} columns",
                                 line=line_no)
        day = iso_day(cells[col[fmt.day_column]], line_no, fmt.day_column)
        if stmt.day is None:
            stmt.day = day
        elif day != stmt.day:
            raise StatementError(f"{fmt.day_column} {day} differs from the file's {stmt.day}: "
                                 "a statement covers one day", line=line_no)
        line = fmt.row(col, cells, line_no, amounts)
        if line.kind == "payment":
            payments += 1
            payment_fen += line.amount_fen
        else:
            refunds += 1
            refund_fen += line.amount_fen
        fee_fen += line.fee_fen
        yield line
    raise StatementError(f"no TOTAL row at the end: the {fmt.name} is truncated")


def _total(stmt: Statement, fmt: _Format, line_no: int, cells: list[str],
           rest: Iterator[tuple[int, list[str]]], amounts: Amounts,
           found: tuple[int, int, int, int, int]) -> None:
    if len(cells) < 6 or any(cells[6:]):
        raise StatementError("the TOTAL row is TOTAL,<payments>,<payment amount>,<refunds>,"
                             "<refund amount>,<net fee>", line=line_no)
    said = (count(cells[1], line_no, "TOTAL payments"),
            fmt.money(amounts, cells[2], line_no, "TOTAL payment amount"),
            count(cells[3], line_no, "TOTAL refunds"),
            fmt.money(amounts, cells[4], line_no, "TOTAL refund amount"),
            fmt.money(amounts, cells[5], line_no, "TOTAL net fee"))
    names = ("payments", "payment amount", "refunds", "refund amount", "net fee")
    for name, s, f in zip(names, said, found, strict=True):
        if s != f:
            raise refuse_mismatch(f"TOTAL {name}", s, f, line_no)
    for more_no, more in rest:
        if any(c.strip() for c in more):
            raise StatementError("text after the TOTAL row", line=more_no)
    stmt.totals = StatementTotals(payments=found[0], payment_fen=found[1], refunds=found[2],
                                  refund_fen=found[3], fee_fen=found[4])


__all__ = ["POS_COLUMNS", "UNIONPAY_COLUMNS", "parse_pos", "parse_unionpay"]
