"""The simulator's daily statements, in each channel's real format (the side that writes what
``payment_adapters.statements`` reads).

:func:`render_statement` writes a channel's statement of one Beijing day from the simulator's
trades: the payments made that day and the refunds done that day, each with the channel's
fee (amount × rate, half-up; WeChat shows it with 5 decimals and gives it back, negative, on
a refund row). The ``write_*`` functions write the same formats from plain :class:`BillRow`
values, streaming, so a test or a benchmark can write a million-row bill quickly.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, BinaryIO, Literal

from payment_adapters.sandbox.core import BEIJING, SimTrade
from payment_adapters.statements._common import yuan_str
from payment_adapters.statements.ours import POS_COLUMNS, UNIONPAY_COLUMNS

WECHAT_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
    "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,"
    "退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注")
WECHAT_SUMMARY_HEADER = ("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,"
                         "订单总金额,申请退款总金额")
ALIPAY_DETAIL_HEADER = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,"
    "对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,"
    "券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注")
ALIPAY_SUMMARY_HEADER = (
    "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,"
    "商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）")
_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, slots=True)
class BillRow:
    """One statement line as plain values (the renderers' input)."""

    kind: Literal["payment", "refund"]
    at: datetime                  # aware: when the payment was made / the refund accepted
    out_trade_no: str
    transaction_id: str
    amount_fen: int               # > 0, a refund's too
    out_refund_no: str = ""
    refund_id: str = ""
    refund_status: str = "SUCCESS"
    trade_type: str = "JSAPI"
    description: str = ""
    payer: str = ""
    terminal: str = ""            # ChinaUMS seqId; POS terminal_id
    card_no: str = "622848******0000"


class _Fees:
    """amount × rate, half-up: in fen, and in 1/100000 yuan (WeChat's 5 decimals)."""

    def __init__(self, rate: Decimal) -> None:
        self.rate = Decimal(rate)
        self._fen: dict[int, int] = {}
        self._units: dict[int, int] = {}

    def fen(self, amount_fen: int) -> int:
        got = self._fen.get(amount_fen)
        if got is None:
            got = int((amount_fen * self.rate).quantize(Decimal(1), ROUND_HALF_UP))
            self._fen[amount_fen] = got
        return got

    def units(self, amount_fen: int) -> int:
        got = self._units.get(amount_fen)
        if got is None:
            got = int((amount_fen * 1000 * self.rate).quantize(Decimal(1), ROUND_HALF_UP))
            self._units[amount_fen] = got
        return got

    def percent(self) -> str:
        return f"{(self.rate * 100).quantize(Decimal('0.01'), ROUND_HALF_UP)}%"


def _fee5(units: int) -> str:
    sign = "-" if units < 0 else ""
    return f"{sign}{abs(units) // 100000}.{abs(units) % 100000:05d}"


def _bj(at: datetime) -> str:
    return at.astimezone(BEIJING).strftime(_TIME)


def _free_text(text: str) -> str:
    """WeChat's 商品名称: commas stay (fields are split on ",`"), backticks and breaks go."""
    return text.replace("`", "'").replace("\r", " ").replace("\n", " ")


def _clean(text: str) -> str:
    """A free-text cell: nothing that could end a cell or a line."""
    return (text.replace("`", "'").replace(",", "，").replace("\r", " ").replace("\n", " ")
            .replace('"', "'"))


# --------------------------------------------------------------------------------- WeChat
def write_wechat_bill(out: BinaryIO, rows: Iterable[BillRow], *, fee_rate: Decimal,
                      mchid: str = "1900000001", appid: str = "wx0000000000000000",
                      eol: str = "\n") -> None:
    """The WeChat Pay trade bill (type ALL), plain UTF-8 CSV, streamed to ``out``."""
    fees = _Fees(fee_rate)
    percent = fees.percent()
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    text.write(WECHAT_HEADER + eol)
    n = settle = refunded = fee_units = 0
    batch: list[str] = []
    last_at: datetime | None = None
    at_text = ""
    yuan: dict[int, str] = {}
    for r in rows:
        amount = yuan.get(r.amount_fen) or yuan.setdefault(r.amount_fen, yuan_str(r.amount_fen))
        if r.at != last_at:
            last_at, at_text = r.at, _bj(r.at)
        common = [at_text, appid, mchid, "0", "", r.transaction_id, r.out_trade_no,
                  r.payer, r.trade_type, "SUCCESS" if r.kind == "payment" else "REFUND",
                  "OTHERS", "CNY"]
        if r.kind == "payment":
            units = fees.units(r.amount_fen)
            settle += r.amount_fen
            cells = common + [amount, "0.00", "0", "0", "0.00", "0.00", "", "",
                              _free_text(r.description), "", _fee5(units), percent, amount,
                              "0.00", ""]
        else:
            units = -fees.units(r.amount_fen)
            refunded += r.amount_fen
            cells = common + ["0.00", "0.00", r.refund_id, r.out_refund_no, amount, "0.00",
                              "ORIGINAL", r.refund_status, _free_text(r.description), "",
                              _fee5(units), percent, "0.00", amount, ""]
        fee_units += units
        n += 1
        batch.append("`" + ",`".join(cells) + eol)
        if len(batch) >= 4096:
            text.write("".join(batch))
            batch.clear()
    text.write("".join(batch))
    text.write(WECHAT_SUMMARY_HEADER + eol)
    summary = [str(n), yuan_str(settle), yuan_str(refunded), "0.00", _fee5(fee_units),
               yuan_str(settle), yuan_str(refunded)]
    text.write("`" + ",`".join(summary) + eol)
    text.flush()
    text.detach()


# --------------------------------------------------------------------------------- Alipay
class _GbkName(zipfile.ZipInfo):
    """A member whose name is stored as GBK bytes without the UTF-8 flag, as Alipay's are."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # noqa: N802 (zipfile's name)
        return self.filename.encode("gbk"), self.flag_bits & ~0x800


def write_alipay_bill(out: BinaryIO, rows: Iterable[BillRow], *, day: date,
                      fee_rate: Decimal, pid: str = "2088000000000000") -> None:
    """The Alipay trade-bill zip: 业务明细 and 业务明细(汇总), GBK, to ``out`` (seekable
    or not)."""
    fees = _Fees(fee_rate)
    ymd = day.strftime("%Y%m%d")
    start = f"{day:%Y年%m月%d日} 00:00:00"
    end_day = date.fromordinal(day.toordinal() + 1)
    end = f"{end_day:%Y年%m月%d日} 00:00:00"
    exported = f"{end_day:%Y年%m月%d日} 09:00:00"
    trades = refunds = trade_fen = refund_fen = amount_net = fee_net = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = _GbkName(f"{pid}_{ymd}_业务明细.csv", date_time=(day.year, day.month, day.day,
                                                           9, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as member:
            text = io.TextIOWrapper(member, encoding="gb18030", newline="")
            text.write("#支付宝业务明细查询\n"
                       f"#账号：[{pid}]\n"
                       f"#起始日期：[{start}]   终止日期：[{end}]\n"
                       "#-----------------------------------------业务明细列表"
                       "----------------------------------------\n"
                       + ALIPAY_DETAIL_HEADER + "\n")
            for r in rows:
                fee = fees.fen(r.amount_fen)
                if r.kind == "payment":
                    trades += 1
                    trade_fen += r.amount_fen
                    signed, fee_cell, request_no, kind = r.amount_fen, -fee, "", "交易"
                else:
                    refunds += 1
                    refund_fen += r.amount_fen
                    signed, fee_cell, request_no, kind = (-r.amount_fen, fee, r.out_refund_no,
                                                          "退款")
                amount_net += signed
                fee_net += fee_cell
                amount = yuan_str(signed)
                cells = [r.transaction_id + "\t", r.out_trade_no + "\t", kind + "\t",
                         _clean(r.description), _bj(r.at), _bj(r.at), "\t", "\t", "\t", "\t",
                         (r.payer or "").replace(",", "") + "\t", amount, amount, "0.00",
                         "0.00", "0.00", "0.00", "0.00", "", "0.00\t", "0.00",
                         request_no + "\t", yuan_str(fee_cell), "0.00", ""]
                text.write(",".join(cells) + "\n")
            text.write("#-----------------------------------------业务明细列表结束"
                       "------------------------------------\n"
                       f"#交易合计：{trades}笔，商家实收共{yuan_str(trade_fen)}元，商家优惠共0.00元\n"
                       f"#退款合计：{refunds}笔，商家实收退款共{yuan_str(-refund_fen)}元，"
                       "商家优惠退款共0.00元\n"
                       f"#导出时间：[{exported}]\n")
            text.flush()
            text.detach()
        summary = ("#支付宝业务汇总查询\n"
                   f"#账号：[{pid}]\n"
                   f"#起始日期：[{start}]   终止日期：[{end}]\n"
                   "#-----------------------------------------业务汇总列表"
                   "----------------------------------------\n"
                   + ALIPAY_SUMMARY_HEADER + "\n"
                   + ",".join(["合计", "", str(trades), str(refunds), yuan_str(amount_net),
                               yuan_str(amount_net), "0.00", "0.00", "0.00", yuan_str(fee_net),
                               "0.00", yuan_str(amount_net + fee_net)]) + "\n"
                   "#----------------------------------------业务汇总列表结束"
                   "-------------------------------------\n"
                   f"#导出时间：[{exported}]\n")
        sinfo = _GbkName(f"{pid}_{ymd}_业务明细(汇总).csv",
                         date_time=(day.year, day.month, day.day, 9, 0, 0))
        sinfo.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(sinfo, summary.encode("gb18030"))


# ----------------------------------------------------------------------- ChinaUMS and POS
def write_unionpay_statement(out: BinaryIO, rows: Iterable[BillRow], *, day: date,
                             fee_rate: Decimal, mid: str = "898000000000000",
                             tid: str = "00000001") -> None:
    """This service's ChinaUMS statement format (docs/statements.md), amounts in fen."""
    fees = _Fees(fee_rate)

    def cells(r: BillRow) -> list[str]:
        fee = fees.fen(r.amount_fen)
        values = {
            "billDate": day.isoformat(), "billNo": r.out_trade_no,
            "targetOrderId": r.transaction_id, "seqId": r.terminal,
            "type": "PAY" if r.kind == "payment" else "REFUND", "payTime": _bj(r.at),
            "amount": str(r.amount_fen), "fee": str(fee if r.kind == "payment" else -fee),
            "refundOrderId": r.out_refund_no if r.kind == "refund" else "",
            "refundTargetOrderId": r.refund_id if r.kind == "refund" else "",
            "mid": mid, "tid": tid}
        return [values[c] for c in UNIONPAY_COLUMNS]

    _write_ours(out, UNIONPAY_COLUMNS, rows, cells, fees, str)


def write_pos_settlement(out: BinaryIO, rows: Iterable[BillRow], *, day: date,
                         fee_rate: Decimal, merchant_id: str = "102100000000001") -> None:
    """This service's POS acquirer settlement format (docs/statements.md), amounts in yuan.
    A refund row's ``original_reference`` is its ``out_trade_no``; its own reference its
    ``out_refund_no``."""
    fees = _Fees(fee_rate)

    def cells(r: BillRow) -> list[str]:
        fee = fees.fen(r.amount_fen)
        sale = r.kind == "payment"
        values = {
            "settle_date": day.isoformat(), "merchant_id": merchant_id,
            "terminal_id": r.terminal or "00000001",
            "pos_reference": r.out_trade_no if sale else r.out_refund_no,
            "card_no": r.card_no, "trade_time": _bj(r.at), "type": "SALE" if sale else "REFUND",
            "amount": yuan_str(r.amount_fen), "fee": yuan_str(fee if sale else -fee),
            "net_amount": yuan_str(r.amount_fen - fee if sale else -r.amount_fen + fee),
            "original_reference": "" if sale else r.out_trade_no}
        return [values[c] for c in POS_COLUMNS]

    _write_ours(out, POS_COLUMNS, rows, cells, fees, yuan_str)


def _write_ours(out: BinaryIO, columns: tuple[str, ...], rows: Iterable[BillRow],
                cells: Any, fees: _Fees, money: Any) -> None:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    text.write(",".join(columns) + "\n")
    n_pay = n_ref = pay = ref = fee_net = 0
    for r in rows:
        fee = fees.fen(r.amount_fen)
        if r.kind == "payment":
            n_pay, pay, fee_net = n_pay + 1, pay + r.amount_fen, fee_net + fee
        else:
            n_ref, ref, fee_net = n_ref + 1, ref + r.amount_fen, fee_net - fee
        text.write(",".join(_clean(c) for c in cells(r)) + "\n")
    text.write(f"TOTAL,{n_pay},{money(pay)},{n_ref},{money(ref)},{money(fee_net)}\n")
    text.flush()
    text.detach()


# ------------------------------------------------------------------ from simulator trades
def statement_rows(channel: str, trades: Iterable[SimTrade], day: date) -> list[BillRow]:
    """The payments made and refunds done on Beijing ``day`` among ``trades``, by time."""
    rows: list[BillRow] = []
    for t in trades:
        if str(t.channel) != channel:
            continue
        paid_fen = t.paid_fen if t.paid_fen is not None else t.amount_fen
        txn = t.transaction_id or ""
        seq = txn[-11:] + "N" if channel == "unionpay" else ""
        base: dict[str, Any] = {"out_trade_no": t.out_trade_no, "transaction_id": txn,
                                "description": t.description, "payer": t.payer or "",
                                "trade_type": t.kind.upper(), "terminal": seq}
        if t.paid_at is not None and t.transaction_id and _on(t.paid_at, day):
            rows.append(BillRow("payment", t.paid_at, amount_fen=paid_fen, **base))
        for r in t.refunds:
            refund = _refund_row(channel, r, base, day)
            if refund is not None:
                rows.append(refund)
    rows.sort(key=lambda r: (r.at, r.kind, r.out_trade_no))
    return rows


def _on(at: datetime, day: date) -> bool:
    return at.astimezone(BEIJING).date() == day


def _refund_row(channel: str, r: dict[str, Any], base: dict[str, Any],
                day: date) -> BillRow | None:
    if channel == "wechat":           # the day WeChat accepted it; status a snapshot
        at = r["create_time"]
        if not _on(at, day):
            return None
        return BillRow("refund", at, amount_fen=r["refund_fen"],
                       out_refund_no=r["out_refund_no"], refund_id=r["refund_id"],
                       refund_status=r["status"], **base)
    if channel == "alipay":           # done refunds, on the day they were done
        if not r.get("done") or not _on(r["at"], day):
            return None
        return BillRow("refund", r["at"], amount_fen=r["refund_fen"],
                       out_refund_no=r["out_request_no"], **base)
    at = datetime.strptime(r["refundPayTime"], _TIME).replace(tzinfo=BEIJING)
    if not _on(at, day):
        return None
    return BillRow("refund", at, amount_fen=r["refundAmount"],
                   out_refund_no=r["refundOrderId"], refund_id=r["refundTargetOrderId"], **base)


def render_statement(channel: str, trades: Iterable[SimTrade], day: date, *,
                     fee_rate: Decimal, mchid: str = "1900000001",
                     appid: str = "wx0000000000000000", pid: str = "2088000000000000",
                     mid: str = "898000000000000", tid: str = "00000001") -> bytes:
    """The channel's statement of Beijing ``day`` from the simulator's trades, as the channel
    delivers it: WeChat the plain trade bill (gzip it if asked), Alipay the bill zip,
    ChinaUMS this service's CSV."""
    rows = statement_rows(channel, trades, day)
    out = io.BytesIO()
    if channel == "wechat":
        write_wechat_bill(out, rows, fee_rate=fee_rate, mchid=mchid, appid=appid)
    elif channel == "alipay":
        write_alipay_bill(out, rows, day=day, fee_rate=fee_rate, pid=pid)
    elif channel == "unionpay":
        write_unionpay_statement(out, rows, day=day, fee_rate=fee_rate, mid=mid, tid=tid)
    else:
        raise ValueError(f"the simulator has no {channel!r} statement")
    return out.getvalue()
