# ruff: noqa: E501  (real-format sample lines are kept whole, as the channel writes them)
"""The WeChat Pay trade bill parser, on real-format bills written by hand from the format's
notes (backticks, CRLF, BOM, legacy headers, refund rows, 5-decimal fees, summaries)."""

from __future__ import annotations

import gzip
import io
from datetime import datetime

import pytest

from payment_adapters.statements import parse_statement, parse_wechat
from payment_adapters.statements._common import BEIJING
from tests.statements.support import consume, refused

ALL = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
       "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,"
       "退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注")
SUMMARY = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"


def row(*cells: str) -> str:
    return ",".join("`" + c for c in cells)


def pay(time: str, txn: str, out: str, amount: str, fee: str, name: str = "城乡居民养老保险") -> str:
    return row(time, "wxd678efh567hg6787", "1230000109", "0", "", txn, out, "oUpF8uMuAJO",
               "JSAPI", "SUCCESS", "OTHERS", "CNY", amount, "0.00", "0", "0", "0.00", "0.00", "",
               "", name, '{"statement_id":"a,b"}', fee, "0.60%", amount, "0.00", "")


def refund(time: str, txn: str, out: str, refund_id: str, out_refund: str, amount: str,
           fee: str, state: str = "SUCCESS") -> str:
    return row(time, "wxd678efh567hg6787", "1230000109", "0", "", txn, out, "oUpF8uMuAJO",
               "JSAPI", "REFUND", "OTHERS", "CNY", "0.00", "0.00", refund_id, out_refund, amount,
               "0.00", "ORIGINAL", state, "城乡居民养老保险", "", fee, "0.60%", "0.00", amount, "")


ROWS = [
    pay("2026-11-28 09:15:02", "4200002026112800001", "PEN2026A", "380.00", "2.28000",
        "城乡居民养老保险,2026年度"),
    pay("2026-11-28 10:01:44", "4200002026112800002", "MED2026B", "400.00", "2.40000"),
    refund("2026-11-28 15:30:00", "4200002026112800001", "PEN2026A", "50300020261128000001",
           "RFPEN2026A", "380.00", "-2.28000"),
    pay("2026-11-28 23:59:59", "4200002026112800003", "MED2026C", "1.00", "0.00500"),
]
GOOD_SUMMARY = row("4", "781.00", "380.00", "0.00", "2.40500", "781.00", "380.00")


def bill(rows: list[str] = ROWS, summary: str | None = GOOD_SUMMARY, *, header: str = ALL,
         eol: str = "\n", bom: bool = False, summary_header: str = SUMMARY) -> bytes:
    lines = [header, *rows]
    if summary is not None:
        lines += [summary_header, summary]
    return (("\ufeff" if bom else "") + eol.join(lines) + eol).encode()


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("packed", [False, True])
def test_all_bill(eol: str, packed: bool) -> None:
    data = bill(eol=eol, bom=eol == "\r\n")
    st = parse_statement("wechat", io.BytesIO(gzip.compress(data) if packed else data))
    lines = consume(st)
    assert [(x.line_no, x.kind, x.out_trade_no, x.amount_fen, x.fee_fen) for x in lines] == [
        (2, "payment", "PEN2026A", 38000, 228), (3, "payment", "MED2026B", 40000, 240),
        (4, "refund", "PEN2026A", 38000, -228), (5, "payment", "MED2026C", 100, 1)]
    first, _, back, last = lines
    assert first.transaction_id == "4200002026112800001" and first.status == "SUCCESS"
    assert first.occurred_at == datetime(2026, 11, 28, 9, 15, 2, tzinfo=BEIJING)
    assert back.out_refund_no == "RFPEN2026A" and back.refund_id == "50300020261128000001"
    assert back.status == "REFUND" and back.transaction_id == "4200002026112800001"
    assert last.occurred_at.utcoffset().total_seconds() == 8 * 3600  # type: ignore[union-attr]
    assert st.totals is not None
    assert (st.totals.payments, st.totals.payment_fen, st.totals.refunds,
            st.totals.refund_fen, st.totals.fee_fen) == (3, 78100, 1, 38000, 241)


def test_legacy_and_refund_bills() -> None:
    # an early-format bill (总金额, 企业红包…, 子商户号; no 订单金额), CRLF with a BOM, and a
    # refund still PROCESSING when the bill was made
    legacy = ("交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
              "付款银行,货币种类,总金额,企业红包金额,微信退款单号,商户退款单号,退款金额,企业红包退款金额,"
              "退款类型,退款状态,商品名称,商户数据包,手续费,费率")
    rows = [
        row("2018-05-07 10:54:45", "wx1024cb31dfbae7cc", "1488511392", "0", "",
            "4200000113201805074559498485", "152566112349603496538", "oOmPo0", "NATIVE",
            "REFUND", "CFT", "CNY", "0.00", "0.00", "50000506642018050704485755976",
            "484316432018050745594984851525661661", "0.02", "0.00", "ORIGINAL", "PROCESSING",
            "扫码充值", "3496--32", "0.00000", "0.60%"),
        row("2018-05-07 10:45:37", "wx1024cb31dfbae7cc", "1488511392", "0", "",
            "4200000113201805074559498485", "152566112349603496538", "oOmPo0", "NATIVE",
            "SUCCESS", "CFT", "CNY", "0.02", "0.00", "0", "0", "0.00", "0.00", "", "",
            "扫码充值", "3496--32", "0.00000", "0.60%"),
    ]
    data = bill(rows, row("2", "0.02", "0.02", "0.00", "0.00000"), header=legacy, eol="\r\n",
                bom=True, summary_header="总交易单数,总交易额,总退款金额,总企业红包退款金额,手续费总金额")
    st = parse_wechat(io.BytesIO(data))
    got = consume(st)
    assert [(x.kind, x.amount_fen, x.status) for x in got] == [
        ("refund", 2, "REFUND_PROCESSING"), ("payment", 2, "SUCCESS")]
    # the REFUND bill type: 交易时间 is the payment's; the refund is dated by 退款申请时间
    refund_header = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
                     "交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,"
                     "商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,"
                     "订单金额,申请退款金额,费率备注")
    refund_row = row("2018-08-20 14:40:09", "wx34723380b2d8a699", "1510598081", "1511458511", "",
                     "4200000145201808202300523655", "2018082010", "oDodT0", "NATIVE", "REFUND",
                     "CFT", "CNY", "0.00", "0.00", "2018-08-21 18:13:10", "2018-08-21 18:13:12",
                     "50000707812018082106030155182", "R2018082010", "0.01", "0.00", "ORIGINAL",
                     "SUCCESS", "测试", "", "-0.00006", "0.60%", "0.00", "0.01", "")
    st = parse_wechat(io.BytesIO(bill([refund_row], row("1", "0.00", "0.01", "0.00", "-0.00006",
                                                        "0.00", "0.01"), header=refund_header)))
    (only,) = consume(st)
    assert only.occurred_at == datetime(2018, 8, 21, 18, 13, 10, tzinfo=BEIJING)
    assert (only.kind, only.amount_fen, only.fee_fen, only.out_refund_no) == (
        "refund", 1, 0, "R2018082010")
    # a SUCCESS bill (no refund columns) cannot hold a refund row
    success_header = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
                      "交易状态,付款银行,货币种类,应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,"
                      "订单金额,费率备注")
    ok = row("2019-07-23 18:46:41", "wx1", "1", "0", "", "4201", "O1", "o", "JSAPI", "SUCCESS",
             "CFT", "CNY", "0.01", "0.00", "x", "", "0.00000", "0.60%", "0.01", "")
    summary = "总交易单数,应结订单总金额,手续费总金额,订单总金额"
    assert len(consume(parse_wechat(io.BytesIO(bill(
        [ok], row("1", "0.01", "0.00000", "0.01"), header=success_header,
        summary_header=summary))))) == 1
    bad = ok.replace("`SUCCESS", "`REFUND")
    refused(lambda: parse_wechat(io.BytesIO(bill([bad], row("1", "0.01", "0.00000", "0.01"),
                                                 header=success_header,
                                                 summary_header=summary))),
            line=2, says="without the refund columns")


def test_malformed_bills_are_refused() -> None:
    def parse(data: bytes, **kw: int) -> object:
        return lambda: parse_wechat(io.BytesIO(data), **kw)

    refused(parse(b""), says="empty")
    refused(parse(bill(header=ALL.replace("商户订单号", "订单号"))), line=1, says="商户订单号")
    refused(parse(bill(header=ALL + ",交易时间")), line=1, says="appears twice")
    refused(parse(bill(summary=None)), says="truncated")
    refused(parse(bill(ROWS[:3])), line=6, says="总交易单数")
    refused(parse(bill(summary=GOOD_SUMMARY.replace("`781.00,`380.00,`0.00,`2",
                                                     "`781.01,`380.00,`0.00,`2"))),
            line=7, says="应结订单总金额")
    refused(parse(bill(summary=GOOD_SUMMARY.replace("2.40500", "2.40000"))), line=7,
            says="手续费总金额")
    refused(parse(bill(summary=GOOD_SUMMARY + "\n`junk")), line=8, says="after the summary")
    refused(parse(bill(summary=None)[:-1] + b"\n" + SUMMARY.encode() + b"\n"), line=6,
            says="no summary row")
    cases = [("`380.00,`0.00,`0,", "`380.001,`0.00,`0,", "two decimals"),
             ("`380.00,`0.00,`0,", "`38O.00,`0.00,`0,", "two decimals"),
             ("`380.00,`0.00,`0,", "`-380.00,`0.00,`0,", "above zero"),
             ("`2.28000", "`2.280001", "five decimals"),
             ("`2.28000", "`-2.28000", "negative"),
             ("2026-11-28 09:15:02", "2026-13-28 09:15:02", "not a real time"),
             ("2026-11-28 09:15:02", "2026/11/28 09:15:02", "yyyy-MM-dd HH:mm:ss"),
             ("`SUCCESS", "`REVOKED", "REVOKED"),
             ("`SUCCESS", "`PAYERROR", "PAYERROR"),
             ("`PEN2026A", "`", "商户订单号 is empty"),
             ("`JSAPI,", "`JSAPI,`extra,", "fields for the header"),
             ("`2026-11-28", "2026-11-28", "backtick")]
    for old, new, says in cases:
        rows = [ROWS[0].replace(old, new, 1), *ROWS[1:]]
        assert rows[0] != ROWS[0], old
        refused(parse(bill(rows)), line=2, says=says)
    # a late bad line: the earlier lines came out, then the error (the caller rolls back)
    st = parse_wechat(io.BytesIO(bill([*ROWS[:3], ROWS[3].replace("`1.00,", "`1.0x,", 1)])))
    seen = []
    with pytest.raises(ValueError, match="line 5"):
        for x in st:
            seen.append(x.line_no)
    assert seen == [2, 3, 4] and st.totals is None
    # a positive fee on a refund, an empty refund number
    refused(parse(bill([*ROWS[:2], ROWS[2].replace("`-2.28000", "`2.28000"), ROWS[3]])),
            line=4, says="positive")
    refused(parse(bill([*ROWS[:2], ROWS[2].replace("`RFPEN2026A", "`"), ROWS[3]])), line=4,
            says="商户退款单号")


def test_gzip_bombs_and_damage_are_refused() -> None:
    data = bill()
    refused(lambda: parse_wechat(io.BytesIO(gzip.compress(data)), max_expanded_bytes=300),
            says="decompression bomb")
    # expands ~1000 times: refused by ratio as it streams, under the default size cap
    bomb = gzip.compress(ALL.encode() + b"\n" + b"`" * (24 * 1024 * 1024), compresslevel=9)
    refused(lambda: parse_wechat(io.BytesIO(bomb)), says="decompression bomb")
    packed = gzip.compress(data)
    refused(lambda: parse_wechat(io.BytesIO(packed[: len(packed) - 12])), says="cut short")
    refused(lambda: parse_wechat(io.BytesIO(b"\x1f\x8bnot gzip at all")), says="gzip")
    refused(lambda: parse_wechat(io.BytesIO("交易时间\n".encode("gbk"))), line=1,
            says="utf-8")
