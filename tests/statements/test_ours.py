"""This service's ChinaUMS statement and POS settlement formats (docs/statements.md)."""

from __future__ import annotations

import io
from datetime import date, datetime

from payment_adapters.statements import parse_pos, parse_statement, parse_unionpay
from payment_adapters.statements._common import BEIJING
from tests.statements.support import consume, refused

UMS_HEADER = ("billDate,billNo,targetOrderId,seqId,type,payTime,amount,fee,refundOrderId,"
              "refundTargetOrderId,mid,tid")
UMS_ROWS = [
    "2020-11-02,31940000000001,20201102000000000001,00000000001N,PAY,2020-11-02 09:00:01,"
    "38000,76,,,898000000000000,00000001",
    "2020-11-02,31940000000002,20201102000000000002,00000000002N,PAY,2020-11-02 10:00:00,"
    "40000,80,,,898000000000000,00000001",
    "2020-11-02,31940000000001,20201102000000000001,00000000001N,REFUND,2020-11-02 11:30:00,"
    "38000,-76,31940000000001R1,20201102000000000001R1,898000000000000,00000001",
]
UMS_TOTAL = "TOTAL,2,78000,1,38000,80"


def ums(rows: list[str] = UMS_ROWS, total: str | None = UMS_TOTAL, header: str = UMS_HEADER,
        eol: str = "\r\n") -> bytes:
    lines = [header, *rows] + ([total] if total is not None else [])
    return ("\ufeff" + eol.join(lines) + eol).encode()


POS_HEADER = ("settle_date,merchant_id,terminal_id,pos_reference,card_no,trade_time,type,amount,"
              "fee,net_amount,original_reference,batch_no")
POS_ROWS = [
    "2020-11-02,102100000000001,T0000001,201102123456,622848******1234,2020-11-02 09:10:00,"
    "SALE,380.00,0.76,379.24,,000101",
    "2020-11-02,102100000000001,T0000002,201102123457,6225****5678,2020-11-02 09:20:00,,"
    "400.00,0.80,399.20,,000101",
    "2020-11-02,102100000000001,T0000001,201102123999,622848******1234,2020-11-02 15:00:00,"
    "REFUND,380.00,-0.76,-379.24,201102123456,000101",
]
POS_TOTAL = "TOTAL,2,780.00,1,380.00,0.80"


def pos(rows: list[str] = POS_ROWS, total: str | None = POS_TOTAL,
        header: str = POS_HEADER) -> bytes:
    return ("\n".join([header, *rows] + ([total] if total is not None else [])) + "\n").encode()


def test_chinaums_statement() -> None:
    st = parse_statement("unionpay", io.BytesIO(ums()))
    lines = consume(st)
    assert st.day == date(2020, 11, 2)  # type: ignore[attr-defined]
    assert [(x.line_no, x.kind, x.out_trade_no, x.transaction_id, x.amount_fen, x.fee_fen,
             x.terminal) for x in lines] == [
        (2, "payment", "31940000000001", "20201102000000000001", 38000, 76, "00000000001N"),
        (3, "payment", "31940000000002", "20201102000000000002", 40000, 80, "00000000002N"),
        (4, "refund", "31940000000001", "20201102000000000001", 38000, -76, "00000000001N")]
    assert lines[2].out_refund_no == "31940000000001R1"
    assert lines[2].refund_id == "20201102000000000001R1"
    assert lines[0].occurred_at == datetime(2020, 11, 2, 9, 0, 1, tzinfo=BEIJING)
    assert st.totals is not None and st.totals.fee_fen == 80
    # columns found by name: reordered, quoted, unknown columns ignored, optional ones absent
    header = "type,amount,fee,payTime,seqId,targetOrderId,billNo,billDate,refundOrderId,note"
    row = 'PAY,38000,76,2020-11-02 09:00:01,1N,T1,B1,2020-11-02,,"a, note"'
    (only,) = consume(parse_unionpay(io.BytesIO(ums([row], "TOTAL,1,38000,0,0,76", header))))
    assert (only.out_trade_no, only.transaction_id, only.terminal) == ("B1", "T1", "1N")


def test_chinaums_refusals() -> None:
    def parse(data: bytes) -> object:
        return lambda: parse_unionpay(io.BytesIO(data))

    refused(parse(b""), says="empty")
    refused(parse(ums(header=UMS_HEADER.replace("seqId", "seq"))), line=1, says="seqId")
    refused(parse(ums(total=None)), says="no TOTAL")
    refused(parse(ums(UMS_ROWS[:2])), line=4, says="refunds")
    refused(parse(ums(total="TOTAL,2,78000,1,38000,81")), line=5, says="net fee")
    refused(parse(ums(total="TOTAL,2,78000")), line=5, says="TOTAL row is")
    refused(parse(ums() + b"2020-11-02\r\n"), line=6, says="after the TOTAL")
    for old, new, says in [(",40000,80,", ",400.00,80,", "whole number of fen"),
                           (",40000,80,", ",-40000,80,", "above zero"),
                           (",40000,80,", ",40000,-80,", "negative"),
                           (",PAY,", ",PAID,", "neither PAY nor REFUND"),
                           ("2020-11-02 10:00:00", "2020-11-02T10:00:00", "HH:mm:ss"),
                           ("2020-11-02,", "2020-11-03,", "one day"),
                           (",00000000002N,", ",,", "seqId is empty"),
                           (",,,898", ",R9,,898", "refundOrderId on a PAY")]:
        rows = [UMS_ROWS[0], UMS_ROWS[1].replace(old, new, 1), UMS_ROWS[2]]
        assert rows[1] != UMS_ROWS[1], old
        refused(parse(ums(rows)), line=3, says=says)
    refused(parse(ums([*UMS_ROWS[:2], UMS_ROWS[2].replace("31940000000001R1", "")])), line=4,
            says="refundOrderId is empty")


def test_pos_settlement() -> None:
    st = parse_statement("pos", io.BytesIO(pos()))
    lines = consume(st)
    assert st.day == date(2020, 11, 2)  # type: ignore[attr-defined]
    assert [(x.kind, x.out_trade_no, x.transaction_id, x.amount_fen, x.fee_fen, x.terminal,
             x.status, x.out_refund_no) for x in lines] == [
        ("payment", "201102123456", "201102123456", 38000, 76, "T0000001", "SALE", None),
        ("payment", "201102123457", "201102123457", 40000, 80, "T0000002", "SALE", None),
        ("refund", "201102123456", "201102123456", 38000, -76, "T0000001", "REFUND",
         "201102123999")]
    assert st.totals is not None and (st.totals.payment_fen, st.totals.refund_fen,
                                      st.totals.fee_fen) == (78000, 38000, 80)


def test_pos_refusals() -> None:
    def parse(data: bytes) -> object:
        return lambda: parse_pos(io.BytesIO(data))

    refused(parse(pos(header=POS_HEADER.replace("pos_reference", "ref"))), line=1,
            says="pos_reference")
    refused(parse(pos(total=None)), says="truncated")
    refused(parse(pos(total="TOTAL,2,780.01,1,380.00,0.80")), line=5, says="payment amount")
    for old, new, says in [("622848******1234", "6228480000001234", "masked"),
                           (",380.00,0.76,379.24,", ",380.00,0.76,379.25,", "net_amount"),
                           (",380.00,0.76,379.24,", ",380.005,0.76,379.24,", "two decimals"),
                           (",SALE,", ",VOID,", "neither SALE nor REFUND"),
                           ("2020-11-02 09:10:00", "2020-02-30 09:10:00", "not a real time"),
                           ("2020-11-02,", "2020-11-31,", "not a date")]:
        rows = [POS_ROWS[0].replace(old, new, 1), *POS_ROWS[1:]]
        assert rows[0] != POS_ROWS[0], old
        refused(parse(pos(rows)), line=2, says=says)
    refused(parse(pos([*POS_ROWS[:2], POS_ROWS[2].replace(",201102123456,", ",,")])), line=4,
            says="original_reference")
