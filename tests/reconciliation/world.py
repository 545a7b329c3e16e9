"""A day of channel payments built in bulk (multi-row INSERTs, both databases), and
statements made of lines — the parsers are tested on their own; a run only needs lines."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, BinaryIO

from sqlalchemy import text
from sqlalchemy.orm import Session

from backend.clock import SHANGHAI
from backend.config import Settings
from backend.reconciliation.service import expected_fee
from backend.sql import Statement as Sql
from backend.sql import Tx
from payment_adapters.statements import StatementError, StatementLine

AMOUNT = 38_000
TOWN, VILLAGE = "370406100", "370406100201"


def trade(i: int) -> str:
    return f"T{i:08d}"


def txn(i: int) -> str:
    return f"4200{i:012d}"


def at(day: date, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm, ss), SHANGHAI)


def bulk(s: Session, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows into a table in the session's transaction: COPY on PostgreSQL, executemany on
    SQLite (values stored as the columns' types store them)."""
    s.flush()
    dbapi = s.connection().connection.dbapi_connection
    cur = dbapi.cursor()
    if s.get_bind().dialect.name == "postgresql":
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                    f"({', '.join('?' * len(columns))})",
                    [tuple(_sqlite_value(v) for v in row) for row in rows])


def _sqlite_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, date):
        return v.isoformat()
    return v


def build_world(s: Session, day: date, n: int, *, unpaid: Sequence[int] = (),
                paid_at: dict[int, datetime] | None = None, channel: str = "wechat",
                first: int = 1) -> None:
    """Orders ``first``..``first+n-1``: one resident, bill line, order, order line and attempt
    each; each paid (payment, applied payment line, bill line paid) unless in ``unpaid``."""
    paid_at = paid_at or {}
    ids = range(first, first + n)
    if first == 1:
        bulk(s, "towns", ("code", "name"), [(TOWN, "店子镇")])
        bulk(s, "villages", ("code", "name", "town_code"), [(VILLAGE, "东村", TOWN)])
    now = at(day, 8)
    bulk(s, "residents", ("id", "id_hash", "id_enc", "id_masked", "birth_date", "name",
                                 "village_code", "hukou_type", "employee_pension",
                                 "employee_medical", "student", "categories", "created_at",
                                 "updated_at"),
                   [(i, f"h{i:063d}", "enc", "370406********0000", date(1960, 1, 1),
                     f"居民{i}", VILLAGE, "rural", False, False, False, "", now, now)
                    for i in ids])
    paid = [i for i in ids if i not in unpaid]
    when = {i: paid_at.get(i, at(day, 9) + timedelta(seconds=i % 40_000)) for i in paid}
    bulk(s, "bill_lines", ("id", "resident_id", "year", "insurance", "status",
                                  "paid_payment_id", "paid_fen", "paid_at", "created_at"),
                   [(i, i, 2021, "medical", "paid" if i in when else "unpaid",
                     i if i in when else None, AMOUNT if i in when else None, when.get(i), now)
                    for i in ids])
    bulk(s, "orders", ("id", "order_no", "payer_sub", "payer_role", "year", "channel",
                              "status", "amount_fen", "expires_at", "paid_at",
                              "channel_transaction_id", "created_at", "updated_at"),
                   [(i, f"O{i:09d}", f"wx:o{i}", "resident", 2021, f"{channel}_native",
                     "paid" if i in when else "pending", AMOUNT, now + timedelta(hours=6),
                     when.get(i), txn(i) if i in when else None, now, now) for i in ids])
    bulk(s, "order_lines", ("id", "order_id", "bill_line_id", "resident_id", "insurance",
                                   "amount_fen", "village_code", "town_code"),
                   [(i, i, i, i, "medical", AMOUNT, VILLAGE, TOWN) for i in ids])
    bulk(s, "attempts", ("id", "order_id", "channel", "kind", "out_trade_no",
                                "amount_fen", "status", "expires_at", "transaction_id",
                                "paid_at", "queries", "created_at", "updated_at"),
                   [(i, i, channel, "native", trade(i), AMOUNT,
                     "paid" if i in when else "pending", now + timedelta(hours=6),
                     txn(i) if i in when else None, when.get(i), 0, now, now) for i in ids])
    bulk(s, "payments", ("id", "attempt_id", "order_id", "channel", "transaction_id",
                                "amount_fen", "paid_at", "business_date", "source",
                                "shared_transaction", "created_at"),
                   [(i, i, i, channel, txn(i), AMOUNT, when[i],
                     when[i].astimezone(SHANGHAI).date(), "notification", False, now)
                    for i in paid])
    bulk(s, "payment_lines", ("id", "payment_id", "bill_line_id", "amount_fen",
                                     "applied"), [(i, i, i, AMOUNT, True) for i in paid])
    resequence(s)


def resequence(s: Session) -> None:
    """After explicit ids: PostgreSQL's sequences carry on after them."""
    if s.get_bind().dialect.name != "postgresql":
        return
    for table in ("residents", "bill_lines", "orders", "order_lines", "attempts", "payments",
                  "payment_lines", "refunds"):
        s.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                       f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))"))


def add_refund(s: Session, refund_id: int, payment_id: int, *, status: str,
               amount_fen: int = AMOUNT, refunded_at: datetime | None = None) -> str:
    out_refund_no = f"RF{refund_id:08d}"
    now = at(date(2020, 11, 1), 8)
    bulk(s, "refunds", ("id", "payment_id", "out_refund_no", "amount_fen", "reason",
                                  "status", "channel_refund_id", "refunded_at", "created_at",
                                  "updated_at"),
                      [(refund_id, payment_id, out_refund_no, amount_fen, "duplicate", status,
                        f"5030{refund_id:08d}" if status == "succeeded" else None, refunded_at,
                        now, now)])
    resequence(s)
    return out_refund_no


def as_duplicate(s: Session, payment_id: int) -> None:
    """The payment's item was paid by someone else first: its line is not applied (the
    money is queued for refund)."""
    Tx(s).rowcount(_UNAPPLY, id=payment_id)


_UNAPPLY = Sql("UPDATE payment_lines SET applied = false WHERE payment_id = :id")


def payment_line(i: int, when: datetime, *, amount: int = AMOUNT, fee: int | None = None,
                 transaction_id: str | None = None, line_no: int = 0,
                 settings: Settings | None = None, out_trade_no: str | None = None
                 ) -> StatementLine:
    rate = settings.fee_rate("wechat") if settings else None
    fee_fen = fee if fee is not None else (expected_fee(amount, rate) if rate is not None
                                           else 76)
    return StatementLine(line_no or i, "payment", out_trade_no or trade(i),
                         transaction_id or txn(i), amount, fee_fen, "SUCCESS", when)


def refund_line(line_no: int, payment: int, out_refund_no: str, amount: int, when: datetime,
                *, status: str = "REFUND") -> StatementLine:
    return StatementLine(line_no, "refund", trade(payment), txn(payment), amount,
                         -expected_fee(amount, Decimal("0.002")),
                         status, when, out_refund_no=out_refund_no,
                         refund_id=f"5030{line_no:08d}")


# --------------------------------------------------------------------------- a test format
COLUMNS = ("kind", "out_trade_no", "transaction_id", "amount_fen", "fee_fen", "status",
           "occurred_at", "out_refund_no", "refund_id")


def to_csv(lines: Sequence[StatementLine]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for line in lines:
        w.writerow([line.kind, line.out_trade_no, line.transaction_id, line.amount_fen,
                    line.fee_fen, line.status, line.occurred_at.isoformat(),
                    line.out_refund_no or "", line.refund_id or ""])
    return out.getvalue().encode()


class CsvStatement:
    totals = None

    def __init__(self, fileobj: BinaryIO) -> None:
        self.fileobj = fileobj

    def __iter__(self) -> Iterator[StatementLine]:
        reader = csv.reader(io.TextIOWrapper(self.fileobj, encoding="utf-8"))
        if next(reader, None) != list(COLUMNS):
            raise StatementError("the header is not " + ",".join(COLUMNS), line=1)
        for n, row in enumerate(reader, start=2):
            try:
                kind, out, txn_id, amount, fee, status, when, refund_no, refund_id = row
                yield StatementLine(n, kind, out, txn_id, int(amount), int(fee),  # type: ignore[arg-type]
                                    status, datetime.fromisoformat(when),
                                    out_refund_no=refund_no or None,
                                    refund_id=refund_id or None)
            except ValueError as exc:
                raise StatementError(f"not a statement line ({exc})", line=n) from None


def parse_csv(source: str, fileobj: BinaryIO, **_: Any) -> CsvStatement:
    return CsvStatement(fileobj)
