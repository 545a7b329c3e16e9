# ruff: noqa: E501  (real-format sample lines are kept whole, as the channel writes them)
"""The Alipay trade-bill zip parser, on zips written by hand from the format's notes: GBK
content and GBK member names without the UTF-8 flag, # comment lines, \\t-padded cells,
full-width （元） headers (and variants), refund rows, the 汇总 file and the footers."""

from __future__ import annotations

import io
import struct
import zipfile
from datetime import date, datetime

from payment_adapters.statements import parse_alipay, parse_statement
from payment_adapters.statements._common import BEIJING
from tests.statements.support import consume, gbk_zip, refused

PID = "20880211096256330156"
DETAIL = f"{PID}_20190916_业务明细.csv"
SUMMARY = f"{PID}_20190916_业务明细(汇总).csv"
HEADER = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,"
          "对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,"
          "券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,"
          "分润（元）,备注")
ROWS = [
    "2019091622001458860515315453\t,SB2019000000001\t,交易\t,城乡居民养老保险,2019-09-16 10:55:16,"
    "2019-09-16 10:55:23,\t,\t,\t,\t,*津水(602***@qq.com)\t,380.00,380.00,0.00,0.00,0.00,0.00,"
    "0.00,,0.00\t,0.00,\t,-2.28,0.00,城乡居民养老保险",
    "2019091622001458860515315453\t,SB2019000000001\t,退款\t,城乡居民养老保险,2019-09-16 10:55:16,"
    "2019-09-16 10:56:48,\t,\t,\t,\t,*津水(602***@qq.com)\t,-380.00,-380.00,0.00,0.00,0.00,0.00,"
    "0.00,,0.00\t,0.00,SB2019000000001R1\t,2.28,0.00,",
    "2019091622001465870515233238\t,SB2019000000002\t,交易\t,城乡居民医疗保险,2019-09-16 16:58:56,"
    "2019-09-16 16:58:58,\t,\t,\t,\t,*庚辰(182****01)\t,400.00,400.00,0.00,0.00,0.00,0.00,0.00,,"
    "0.00\t,0.00,\t,-2.40,0.00,",
]


def detail(rows: list[str] = ROWS, *, header: str = HEADER, trades: str = "2笔，商家实收共780.00元",
           refunds: str = "1笔，商家实收退款共-380.00元", end: bool = True) -> str:
    lines = ["#支付宝业务明细查询", f"#账号：[{PID}]",
             "#起始日期：[2019年09月16日 00:00:00]   终止日期：[2019年09月17日 00:00:00]",
             "#-----------------------------------------业务明细列表----------------------------------------",
             header, *rows]
    if end:
        lines += ["#-----------------------------------------业务明细列表结束------------------------------------",
                  f"#交易合计：{trades}，商家优惠共0.00元",
                  f"#退款合计：{refunds}，商家优惠退款共0.00元",
                  "#导出时间：[2019年09月17日 05:46:49]"]
    return "\r\n".join(lines) + "\r\n"


def summary(total: str = "合计,,2,1,400.00,400.00,0.00,0.00,0.00,-2.40,0.00,397.60") -> str:
    return "\r\n".join([
        "#支付宝业务汇总查询", f"#账号：[{PID}]",
        "#-----------------------------------------业务汇总列表----------------------------------------",
        "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,"
        "商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）",
        "alipay_store\t,城关店\t,2,1,400.00,400.00,0.00,0.00,0.00,-2.40,0.00,397.60",
        total,
        "#----------------------------------------业务汇总列表结束-------------------------------------",
        "#导出时间：[2019年09月17日 05:46:49]"]) + "\r\n"


def zipped(detail_text: str | None = None, summary_text: str | None = None,
           extra: list[tuple[str, bytes]] | None = None, **kw: int) -> bytes:
    members = [(DETAIL, (detail_text or detail()).encode("gbk")),
               (SUMMARY, (summary_text or summary()).encode("gbk")), *(extra or [])]
    return gbk_zip(members, **kw)


def test_trade_bill_zip() -> None:
    data = zipped()
    assert zipfile.ZipFile(io.BytesIO(data)).infolist()[0].flag_bits & 0x800 == 0  # raw GBK
    st = parse_statement("alipay", io.BytesIO(data))
    assert st.day == date(2019, 9, 16)  # type: ignore[attr-defined]
    lines = consume(st)
    assert [(x.line_no, x.kind, x.out_trade_no, x.amount_fen, x.fee_fen, x.status)
            for x in lines] == [(6, "payment", "SB2019000000001", 38000, 228, "交易"),
                                (7, "refund", "SB2019000000001", 38000, -228, "退款"),
                                (8, "payment", "SB2019000000002", 40000, 240, "交易")]
    assert lines[0].transaction_id == "2019091622001458860515315453"
    assert lines[1].out_refund_no == "SB2019000000001R1" and lines[1].refund_id is None
    assert lines[1].occurred_at == datetime(2019, 9, 16, 10, 56, 48, tzinfo=BEIJING)
    assert st.totals is not None and (st.totals.payments, st.totals.payment_fen,
                                      st.totals.refunds, st.totals.refund_fen,
                                      st.totals.fee_fen) == (2, 78000, 1, 38000, 240)
    # header variants: half-width (元), 退款批次号 alone, columns in another order
    variant = HEADER.replace("订单金额（元）", "订单金额(元)").replace("退款批次号/请求号", "退款批次号")
    assert len(consume(parse_alipay(io.BytesIO(zipped(detail(header=variant)))))) == 3
    # a member name in UTF-8 with the flag set is read as well
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(DETAIL, detail().encode("gbk"))
        zf.writestr(SUMMARY.replace("(汇总)", "（汇总）"), summary().encode("gbk"))
    assert len(consume(parse_alipay(io.BytesIO(buf.getvalue())))) == 3


def test_malformed_zips_are_refused() -> None:
    def parse(data: bytes, **kw: int) -> object:
        return lambda: parse_alipay(io.BytesIO(data), **kw)

    refused(parse(detail().encode("gbk")), says="not a zip")
    refused(parse(b"PK\x03\x04 truncated"), says="zip")
    refused(parse(zipped(extra=[("readme.txt", b"hi")])), says="exactly")
    refused(parse(gbk_zip([(DETAIL, detail().encode("gbk"))])), says="exactly")
    refused(parse(gbk_zip([(DETAIL, detail().encode("gbk")),
                           (SUMMARY.replace("20190916", "20190917"), summary().encode("gbk"))])),
            says="different")
    refused(parse(zipped(flag_bits=0x1)), says="encrypted")
    nested = gbk_zip([("inner.csv", b"x")])
    refused(parse(gbk_zip([(DETAIL, nested), (SUMMARY, summary().encode("gbk"))])),
            says="nested")
    # bombs: declared size over the cap; a ratio no CSV has; sizes that lie
    refused(parse(zipped(), max_expanded_bytes=1024), says="decompression bomb")
    huge = detail().encode("gbk") + b"#" * (40 * 1024 * 1024)
    refused(parse(gbk_zip([(DETAIL, huge), (SUMMARY, summary().encode("gbk"))])),
            says="decompression bomb")
    lying = bytearray(gbk_zip([(DETAIL, detail().encode("gbk") + b"#" * 100000),
                               (SUMMARY, summary().encode("gbk"))]))
    true_size = struct.pack("<I", len(detail().encode("gbk")) + 100000)
    assert lying.count(true_size) == 2
    lying = bytearray(bytes(lying).replace(true_size, struct.pack("<I", 2000)))
    refused(parse(bytes(lying)), says="damaged")


def test_malformed_content_is_refused() -> None:
    def parse(detail_text: str | None = None, summary_text: str | None = None) -> object:
        return lambda: parse_alipay(io.BytesIO(zipped(detail_text, summary_text)))

    refused(parse(detail(header=HEADER.replace("商户订单号", "订单号"))), line=5, says="商户订单号")
    refused(parse(detail(end=False)), says="truncated")
    refused(parse(detail(ROWS[:2])), line=9, says="#交易合计")
    refused(parse(detail(trades="2笔，商家实收共780.01元")), line=10, says="商家实收")
    refused(parse(detail(refunds="2笔，商家实收退款共-380.00元")), line=11, says="笔数")
    refused(parse(None, summary("合计,,2,2,400.00,400.00,0.00,0.00,0.00,-2.40,0.00,397.60")),
            line=6, says="退款订单总笔数")
    refused(parse(None, summary("合计,,2,1,400.00,400.00,0.00,0.00,0.00,-2.41,0.00,397.60")),
            line=6, says="服务费")
    refused(parse(None, summary().replace("合计", "小计")), says="no 合计 row")
    for old, new, says in [(",380.00,380.00,", ",380.0x,380.00,", "two decimals"),
                           (",380.00,380.00,", ",380.001,380.00,", "two decimals"),
                           (",380.00,380.00,", ",-380.00,-380.00,", "above zero"),
                           ("交易\t", "转账\t", "业务类型"),
                           ("2019-09-16 10:55:23", "2019-09-16 25:55:23", "not a real time"),
                           ("SB2019000000001\t", "\t", "empty")]:
        rows = [ROWS[0].replace(old, new, 1), *ROWS[1:]]
        assert rows[0] != ROWS[0]
        refused(parse(detail(rows)), line=6, says=says)
    refused(parse(detail([*ROWS[:2], ROWS[2].replace(",400.00,400.00,", ",400.00,", 1)])),
            line=8, says="fields")
    refused(parse(detail([ROWS[0], ROWS[1].replace("SB2019000000001R1\t", "\t"), ROWS[2]])),
            line=7, says="退款批次号")
