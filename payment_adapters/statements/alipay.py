"""The Alipay trade bill (``alipay.data.dataservice.bill.downloadurl.query``, bill_type
trade): a zip of exactly two GBK CSVs, ``<PID>_<yyyyMMdd>_业务明细.csv`` (the detail) and
``<PID>_<yyyyMMdd>_业务明细(汇总).csv`` (the summary), member names in GBK without the zip's
UTF-8 flag.

Both files wrap their table in ``#`` comment lines; cells carry a trailing ``\\t`` (so Excel
keeps long numbers); headers use full-width brackets, ``订单金额（元）``. 业务类型 is 交易 or
退款; a refund row has negative amounts and its 退款批次号/请求号 is our out_refund_no.
The detail's footer (``#交易合计：N笔，商家实收共X元…``, ``#退款合计：…``) and the
summary's 合计 row are both checked against the detail lines.
"""

from __future__ import annotations

import csv
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from datetime import date, datetime
from typing import BinaryIO

from payment_adapters.statements import StatementError, StatementLine, StatementTotals
from payment_adapters.statements._common import (
    BEIJING,
    DEFAULT_MAX_EXPANDED_BYTES,
    MAX_RATIO,
    Amounts,
    Capped,
    Statement,
    beijing_time,
    check_unique,
    count,
    refuse_mismatch,
    text_lines,
    yuan_str,
)

_DETAIL_NAME = re.compile(r"(\d{1,32})_(\d{8})_业务明细\.csv")
_SUMMARY_NAME = re.compile(r"(\d{1,32})_(\d{8})_业务明细[(（]汇总[)）]\.csv")
_SUMMARY_MAX_BYTES = 16 * 1024 * 1024
_TRADE_FOOTER = re.compile(r"#交易合计[：:]\s*(\d+)笔[，,]\s*商家实收共\s*(-?[\d.]+)元")
_REFUND_FOOTER = re.compile(r"#退款合计[：:]\s*(\d+)笔[，,]\s*商家实收退款共\s*(-?[\d.]+)元")

# our name → the (normalized) header names Alipay has used
_DETAIL: dict[str, tuple[str, ...]] = {
    "trade_no": ("支付宝交易号",),
    "out_trade_no": ("商户订单号",),
    "kind": ("业务类型",),
    "finished": ("完成时间",),
    "amount": ("订单金额",),
    "received": ("商家实收",),
    "out_request_no": ("退款批次号/请求号", "退款批次号", "退款请求号"),
    "fee": ("服务费",),
}
_SUMMARY: dict[str, tuple[str, ...]] = {
    "store": ("门店编号",),
    "trades": ("交易订单总笔数",),
    "refunds": ("退款订单总笔数",),
    "amount": ("订单金额",),
    "received": ("商家实收",),
    "fee": ("服务费",),
}


def _normalize(name: str) -> str:
    """``订单金额（元）`` / ``订单金额(元)`` / `` 订单金额\\t`` → ``订单金额``."""
    name = name.replace("\t", "").strip().lstrip("\ufeff")
    for suffix in ("（元）", "(元)", "（元)", "(元）"):
        if name.endswith(suffix):
            return name[: -len(suffix)].strip()
    return name


def _cells(line: str) -> list[str]:
    row = next(csv.reader([line])) if '"' in line else line.split(",")
    return [cell.replace("\t", "").strip() for cell in row]


def _columns(header: list[str], wanted: dict[str, tuple[str, ...]], line: int,
             what: str) -> dict[str, int]:
    check_unique(header, line)
    found: dict[str, int] = {}
    missing = []
    for key, names in wanted.items():
        index = next((header.index(n) for n in names if n in header), None)
        if index is None:
            missing.append(names[0])
        else:
            found[key] = index
    if missing:
        raise StatementError(f"not an Alipay {what} header: no column " + ", ".join(missing),
                             line=line)
    return found


def parse_alipay(fileobj: BinaryIO, *,
                 max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES) -> Statement:
    """Parse an Alipay trade-bill zip: its members and summary now, the detail as read."""
    if not _seekable(fileobj):
        spool = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)
        shutil.copyfileobj(fileobj, spool)
        spool.seek(0)
        fileobj = spool  # type: ignore[assignment]
    if fileobj.read(4) != b"PK\x03\x04":
        raise StatementError("not a zip file: an Alipay trade bill is a zip of two CSV files")
    fileobj.seek(0)
    source = _Counting(fileobj)
    try:
        zf = zipfile.ZipFile(source, metadata_encoding="gb18030")  # type: ignore[arg-type]
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise StatementError(f"not a readable zip file ({exc})") from exc
    detail, summary, day = _members(zf, max_expanded_bytes)
    said = _read_summary(zf, summary, max_expanded_bytes)
    try:
        stream = zf.open(detail)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, zlib.error,
            ValueError) as exc:
        raise StatementError(f"zip member {detail.filename} is damaged ({exc})") from exc
    start = source.read_bytes
    raw = Capped(stream, max_expanded_bytes - summary.file_size,  # type: ignore[arg-type]
                 f"zip member {detail.filename}", consumed=lambda: source.read_bytes - start)
    lines = _guard(text_lines(raw, "gb18030"), detail.filename)
    return Statement(lambda stmt: _rows(stmt, lines, said, zf), day=day)


class _Counting:
    """The zip's file, counting the bytes read from it (what a member really took)."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self.read_bytes += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def seekable(self) -> bool:
        return True


def _seekable(f: BinaryIO) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError):
        return False


def _members(zf: zipfile.ZipFile, limit: int) -> tuple[zipfile.ZipInfo, zipfile.ZipInfo, date]:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    detail = [i for i in infos if _DETAIL_NAME.fullmatch(i.filename)]
    summary = [i for i in infos if _SUMMARY_NAME.fullmatch(i.filename)]
    if len(infos) != 2 or len(detail) != 1 or len(summary) != 1:
        raise StatementError(
            "an Alipay trade bill zip holds exactly <PID>_<yyyyMMdd>_业务明细.csv and "
            f"<PID>_<yyyyMMdd>_业务明细(汇总).csv; this one holds {names}")
    d, s = detail[0], summary[0]
    dm, sm = _DETAIL_NAME.fullmatch(d.filename), _SUMMARY_NAME.fullmatch(s.filename)
    assert dm is not None and sm is not None
    if dm.groups() != sm.groups():
        raise StatementError(f"the detail {d.filename} and summary {s.filename} are of "
                             "different accounts or days")
    for info in (d, s):
        if info.flag_bits & 0x1:
            raise StatementError(f"zip member {info.filename} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise StatementError(f"zip member {info.filename} uses compression method "
                                 f"{info.compress_type}, not deflate")
        if info.file_size > limit or info.file_size > MAX_RATIO * max(info.compress_size, 1) \
                and info.file_size > 8 * 1024 * 1024:
            raise StatementError(f"zip member {info.filename} declares {info.file_size} bytes "
                                 "expanded: refused as a decompression bomb")
        try:
            with zf.open(info) as member:
                magic = member.read(4)
        # zlib.error: a damaged deflate stream; ValueError: a header that points outside the
        # file, or a member name that is not GB18030
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, zlib.error,
                ValueError) as exc:
            raise StatementError(f"zip member {info.filename} is damaged ({exc})") from exc
        if magic == b"PK\x03\x04":
            raise StatementError(f"zip member {info.filename} is itself a zip: nested archives "
                                 "are refused")
    try:
        day = datetime.strptime(dm.group(2), "%Y%m%d").date()
    except ValueError:
        raise StatementError(f"{d.filename}: {dm.group(2)} is not a date") from None
    return d, s, day


def _guard(lines: Iterator[tuple[int, str]], name: str) -> Iterator[tuple[int, str]]:
    try:
        yield from lines
    except StatementError as exc:
        raise StatementError(f"{name}: {exc.reason}", line=exc.line) from exc
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, zlib.error,
            ValueError) as exc:
        raise StatementError(f"zip member {name} is damaged ({exc})") from exc


def _read_summary(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> dict[str, int]:
    name = info.filename
    try:
        with zf.open(info) as stream:
            capped = Capped(stream, min(limit, _SUMMARY_MAX_BYTES),  # type: ignore[arg-type]
                            f"zip member {name}")
            lines = list(_guard(text_lines(capped, "gb18030"), name))
    except StatementError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, zlib.error,
            ValueError) as exc:
        raise StatementError(f"zip member {name} is damaged ({exc})") from exc
    header: list[str] | None = None
    header_no = 0
    col: dict[str, int] = {}
    amounts = Amounts()
    for line_no, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            if header is not None and line.lstrip().startswith("#"):
                break
            continue
        cells = _cells(line)
        if header is None:
            header, header_no = [_normalize(c) for c in cells], line_no
            col = _columns(header, _SUMMARY, line_no, f"summary ({name})")
            continue
        if cells[col["store"]].startswith("合计"):
            if len(cells) != len(header):
                raise StatementError(f"{name}: {len(cells)} fields for {len(header)} columns",
                                     line=line_no)
            return {
                "line": line_no,
                "trades": count(cells[col["trades"]], line_no, "交易订单总笔数"),
                "refunds": count(cells[col["refunds"]], line_no, "退款订单总笔数"),
                "amount": amounts.yuan(cells[col["amount"]], line_no, "订单金额（元）"),
                "received": amounts.yuan(cells[col["received"]], line_no, "商家实收（元）"),
                "fee": amounts.yuan(cells[col["fee"]], line_no, "服务费（元）"),
            }
    raise StatementError(f"{name} has no 合计 row: the bill is truncated",
                         line=header_no or None)


def _rows(stmt: Statement, lines: Iterator[tuple[int, str]], said: dict[str, int],
          zf: zipfile.ZipFile) -> Iterator[StatementLine]:
    header: list[str] | None = None
    col: dict[str, int] = {}
    width = 0
    ended = False
    trade_footer: tuple[int, int, int] | None = None
    refund_footer: tuple[int, int, int] | None = None
    payments = refunds = payment_fen = refund_fen = 0
    received = {"交易": 0, "退款": 0}
    amount_net = fee_net = fee_lines = 0
    amounts = Amounts()
    yuan = amounts.yuan
    try:
        for line_no, line in lines:
            if line.startswith("#") or not line.strip():
                if header is not None and "业务明细列表结束" in line:
                    ended = True
                elif ended and (m := _TRADE_FOOTER.match(line)):
                    trade_footer = (line_no, int(m.group(1)),
                                    yuan(m.group(2), line_no, "交易合计 商家实收"))
                elif ended and (m := _REFUND_FOOTER.match(line)):
                    refund_footer = (line_no, int(m.group(1)),
                                     yuan(m.group(2), line_no, "退款合计 商家实收退款"))
                continue
            if ended:
                raise StatementError("a row after the end of the detail list", line=line_no)
            cells = _cells(line)
            if header is None:
                header = [_normalize(c) for c in cells]
                col = _columns(header, _DETAIL, line_no, "trade bill detail")
                width = len(header)
                continue
            if len(cells) != width:
                raise StatementError(f"{len(cells)} fields for the header's {width} columns",
                                     line=line_no)
            kind = cells[col["kind"]]
            amount = yuan(cells[col["amount"]], line_no, "订单金额（元）")
            got = yuan(cells[col["received"]], line_no, "商家实收（元）")
            fee = yuan(cells[col["fee"]], line_no, "服务费（元）") if cells[col["fee"]] else 0
            at = beijing_time(cells[col["finished"]], line_no, "完成时间")
            out_trade_no = cells[col["out_trade_no"]]
            trade_no = cells[col["trade_no"]]
            if not out_trade_no or not trade_no:
                raise StatementError("商户订单号 or 支付宝交易号 is empty", line=line_no)
            amount_net += amount
            fee_net += fee
            if kind == "交易":
                if amount <= 0 or got < 0:
                    raise StatementError(f"订单金额（元） {cells[col['amount']]!r} of a trade "
                                         "must be above zero", line=line_no)
                payments += 1
                payment_fen += amount
                fee_lines += abs(fee)
                received["交易"] += got
                # 服务费 is shown negative (taken from the merchant); the sign is not relied on
                yield StatementLine(line_no, "payment", out_trade_no, trade_no, amount,
                                    abs(fee), kind, at)
            elif kind == "退款":
                if amount >= 0 or got > 0:
                    raise StatementError(f"订单金额（元） {cells[col['amount']]!r} of a refund "
                                         "must be below zero", line=line_no)
                request_no = cells[col["out_request_no"]]
                if not request_no:
                    raise StatementError("退款批次号/请求号 of a refund is empty", line=line_no)
                refunds += 1
                refund_fen += -amount
                fee_lines -= abs(fee)
                received["退款"] += got
                yield StatementLine(line_no, "refund", out_trade_no, trade_no, -amount,
                                    -abs(fee), kind, at, out_refund_no=request_no)
            else:
                raise StatementError(f"业务类型 {kind!r} is neither 交易 nor 退款", line=line_no)
    finally:
        zf.close()
    if header is None or not ended:
        raise StatementError("the detail list has no end (#…业务明细列表结束…): the bill is "
                             "truncated")
    if trade_footer is None or refund_footer is None:
        raise StatementError("the detail has no #交易合计 and #退款合计 lines: the bill is "
                             "truncated")
    for footer, n, what in ((trade_footer, payments, "交易"), (refund_footer, refunds, "退款")):
        line_no, said_n, said_fen = footer
        if said_n != n:
            raise refuse_mismatch(f"#{what}合计 笔数", said_n, n, line_no)
        if said_fen != received[what]:
            raise refuse_mismatch(f"#{what}合计 商家实收", yuan_str(said_fen),
                                  yuan_str(received[what]), line_no)
    summary_line = said["line"]
    for key, found, what in (("trades", payments, "交易订单总笔数"),
                             ("refunds", refunds, "退款订单总笔数"),
                             ("amount", amount_net, "订单金额（元）"),
                             ("received", received["交易"] + received["退款"], "商家实收（元）"),
                             ("fee", fee_net, "服务费（元）")):
        if said[key] != found:
            money = key not in ("trades", "refunds")
            raise refuse_mismatch(f"the 汇总 合计 {what}",
                                  yuan_str(said[key]) if money else said[key],
                                  yuan_str(found) if money else found, summary_line)
    stmt.totals = StatementTotals(payments=payments, payment_fen=payment_fen, refunds=refunds,
                                  refund_fen=refund_fen, fee_fen=fee_lines)


__all__ = ["BEIJING", "parse_alipay"]
