"""The simulator's statements read back by the parsers (round trip), and a 20,000-row bill
streamed."""

from __future__ import annotations

import gzip
import io
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from payment_adapters.base import Channel
from payment_adapters.sandbox.core import BEIJING, SimTrade
from payment_adapters.sandbox.statements import (
    BillRow,
    render_statement,
    write_pos_settlement,
    write_wechat_bill,
)
from payment_adapters.statements import parse_pos, parse_statement, parse_wechat

DAY = date(2020, 11, 2)
RATE = Decimal("0.006")


def bj(hour: int, minute: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=BEIJING).astimezone(UTC)


def trade(channel: Channel, no: str, fen: int, paid_at: datetime | None, txn: str,
          refunds: list[dict[str, object]] | None = None) -> SimTrade:
    return SimTrade(channel=channel, out_trade_no=no, amount_fen=fen, notify_url="http://x",
                    kind="jsapi", description="城乡居民养老保险,2021年度", state="paid",
                    transaction_id=txn, paid_at=paid_at, paid_fen=fen, payer="oSbx1",
                    refunds=refunds or [])


def refunds_for(channel: Channel, at: datetime, fen: int, n: int) -> dict[str, object]:
    if channel is Channel.WECHAT:
        return {"out_refund_no": f"RF{n}", "refund_id": f"5030{n:025d}", "refund_fen": fen,
                "total_fen": 38000, "status": "SUCCESS", "create_time": at, "success_time": at}
    if channel is Channel.ALIPAY:
        return {"out_request_no": f"RF{n}", "refund_fen": fen, "reason": "", "at": at,
                "done": True}
    return {"refundOrderId": f"RF{n}", "refundAmount": fen, "refundTargetOrderId": f"T{n}R1",
            "refundPayTime": at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")}


@pytest.mark.parametrize("channel", list(Channel))
def test_round_trip_from_simulator_trades(channel: Channel) -> None:
    trades = [
        trade(channel, "SB0001", 38000, bj(9), "T0001",
              [refunds_for(channel, bj(15), 10000, 1),
               refunds_for(channel, bj(9, day=DAY + timedelta(days=1)), 28000, 2)]),
        trade(channel, "SB0002", 40001, bj(23, 59), "T0002"),
        trade(channel, "SB0003", 20000, bj(0, 0), "T0003"),                 # 00:00 Beijing
        trade(channel, "SB0004", 20000, bj(23, 59, DAY - timedelta(days=1)), "T0004",
              [refunds_for(channel, bj(8), 20000, 3)]),                     # paid the day before
        SimTrade(channel=channel, out_trade_no="SB0005", amount_fen=100, notify_url="x",
                 kind="native"),                                            # never paid
    ]
    data = render_statement(str(channel), trades, DAY, fee_rate=RATE)
    if channel is Channel.WECHAT:
        assert data.startswith("交易时间,".encode()) and b"`" in data
        data = gzip.compress(data)
    st = parse_statement(str(channel), io.BytesIO(data))
    got = [(x.kind, x.out_trade_no, x.transaction_id, x.amount_fen, x.fee_fen, x.out_refund_no,
            x.occurred_at) for x in st]
    assert got == [
        ("payment", "SB0003", "T0003", 20000, 120, None, bj(0)),
        ("refund", "SB0004", "T0004", 20000, -120, "RF3", bj(8)),
        ("payment", "SB0001", "T0001", 38000, 228, None, bj(9)),
        ("refund", "SB0001", "T0001", 10000, -60, "RF1", bj(15)),
        ("payment", "SB0002", "T0002", 40001, 240, None, bj(23, 59)),       # 2.40006 → 2.40
    ]
    assert st.totals is not None
    assert (st.totals.payments, st.totals.payment_fen, st.totals.refunds,
            st.totals.refund_fen) == (3, 98001, 2, 30000)
    assert getattr(st, "day", None) == (None if channel is Channel.WECHAT else DAY)


def _rows(n: int) -> Iterator[BillRow]:
    start = datetime(2020, 11, 2, tzinfo=BEIJING)
    for i in range(n):
        at = start + timedelta(seconds=i * 4)
        if i % 50 == 49:
            yield BillRow("refund", at, f"SB{i - 1:012d}", f"42000{i - 1:023d}", 38000,
                          out_refund_no=f"RF{i:010d}", refund_id=f"5030{i:025d}")
        else:
            yield BillRow("payment", at, f"SB{i:012d}", f"42000{i:023d}",
                          (38000, 40000, 20000, 100000)[i % 4], payer="oSbx")


class _Reads(io.RawIOBase):
    """A file that counts what was read from it."""

    def __init__(self, inner: io.BufferedIOBase) -> None:
        self.inner, self.read_bytes = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.read_bytes += len(data)
        return len(data)


def test_a_20000_row_bill_streams() -> None:
    with tempfile.TemporaryFile() as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as gz:
            write_wechat_bill(gz, _rows(20000), fee_rate=RATE)  # type: ignore[arg-type]
        size = f.tell()
        f.seek(0)
        source = _Reads(f)  # type: ignore[arg-type]
        st = parse_wechat(io.BufferedReader(source, 8192))  # type: ignore[arg-type]
        lines = iter(st)
        first = next(lines)
        assert first.line_no == 2 and source.read_bytes < size / 4   # not read whole
        n = 1 + sum(1 for _ in lines)
    assert n == 20000 and st.totals is not None
    assert (st.totals.payments, st.totals.refunds) == (19600, 400)
    assert st.totals.refund_fen == 400 * 38000


def test_pos_round_trip() -> None:
    rows = [BillRow("payment", datetime(2020, 11, 2, 9, tzinfo=BEIJING), "201102000001",
                    "201102000001", 38000, terminal="T1"),
            BillRow("refund", datetime(2020, 11, 2, 10, tzinfo=BEIJING), "201102000001",
                    "201102000001", 38000, out_refund_no="201102000009", terminal="T1")]
    out = io.BytesIO()
    write_pos_settlement(out, rows, day=DAY, fee_rate=RATE)
    got = list(parse_pos(io.BytesIO(out.getvalue())))
    assert [(x.kind, x.out_trade_no, x.amount_fen, x.fee_fen, x.out_refund_no, x.terminal)
            for x in got] == [("payment", "201102000001", 38000, 228, None, "T1"),
                              ("refund", "201102000001", 38000, -228, "201102000009", "T1")]
