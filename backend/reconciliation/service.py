"""Reconciliation runs (对账) and the two-person resolution of what they find.

A run takes one channel's statement for one business day, stages its lines in bulk (COPY on
PostgreSQL), pairs every line with our side in one set-based statement (attempts by
``out_trade_no``, their payments; POS collections by their reference; refunds by
``out_refund_no``), then finds the differences in both directions with a handful of
``INSERT … SELECT``: nothing is looked up line by line, so a million-line bill costs a few
table scans, not a million queries. The file, its lines, the run and its discrepancies are
one transaction: a file that does not parse leaves nothing behind.

Our payments of the day that the statement does not have are missing at the channel — but
one paid in the last minutes before midnight (Beijing) may be billed by the channel on the
next day, so it is *held* until the next day's statement of that channel: found there, the
discrepancy resolves itself; not found, it opens (roncoo-pay's 缓冲池).

A discrepancy is resolved by one finance user choosing the side that is right, with a
reason, and approved by another. Approving the channel's side corrects our books: money the
channel took for a trade of ours that we never recorded is recovered as a payment through
the same function a notification uses; a difference of amount or fee, or money one side
has that the other has not, is a correcting ledger entry against the channel's clearing
account. Approving our side changes no money: the channel is asked to correct its own.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, BinaryIO, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

import backend.models  # noqa: F401  (every table these rows' foreign keys name)
from backend.audit import service as audit
from backend.clock import SHANGHAI
from backend.db import unit_of_work
from backend.errors import AppError, Conflict, Forbidden, NotFound, ValidationFailed
from backend.ledger import service as ledger
from backend.ledger.models import JournalEntry
from backend.ledger.pos import POS_REMITTANCE, PosSettled, remit_pos
from backend.orders.models import Payment, Refund
from backend.orders.payment_flow import (
    AmountMismatch,
    ChannelConfirmation,
    TransactionConflict,
    UnknownTrade,
    confirm_channel_payment,
)
from backend.reconciliation.models import (
    CHANNELS,
    SIDES,
    Discrepancy,
    ReconciliationRun,
    Statement,
    StatementLine,
)
from backend.reconciliation.schemas import (
    DiscrepancyOut,
    RunOut,
    RunTotals,
    StatementInfo,
    StatementSide,
    TotalsOurs,
)
from backend.refunds.service import CHANNEL_STATES, complete_refund
from backend.runtime import Runtime
from backend.sql import Statement as Sql
from backend.sql import Tx
from payment_adapters.base import Channel, ChannelError, StatementNotReady
from payment_adapters.statements import StatementError
from payment_adapters.statements import StatementLine as Line

#: Our payments (and refunds) this close to midnight wait for the next day's statement.
HOLD_WINDOW = timedelta(minutes=10)
#: How many discrepancies a run's answer lists; the rest are paged with
#: ``GET /api/v1/reconciliation/discrepancies?run_id=``.
RUN_LIST_LIMIT = 500
# Lines per executemany on SQLite; COPY on PostgreSQL streams them.
_BATCH = 5_000
_MAX_ID = 64

OPEN_STATUSES = ("open", "proposed")


# --------------------------------------------------------------------------- errors
class InvalidStatement(AppError):
    status, code = 422, "invalid_statement"


class StatementTooLarge(AppError):
    status, code = 413, "payload_too_large"


# --------------------------------------------------------------------------- accounts
def differences(channel: str) -> ledger.Account:
    """Money the statement and our books disagree on, until it is explained (对账差异)."""
    return ledger.Account(f"reconciliation_differences:{channel}", "reconciliation_differences",
                          f"{channel} 对账差异")


def channel_fees(channel: str) -> ledger.Account:
    return ledger.Account(f"channel_fees:{channel}", "channel_fees", f"{channel} 手续费")


# --------------------------------------------------------------------------- parsing
Parse = Callable[[str, BinaryIO], Iterable[Line]]


def default_parser(rt: Runtime) -> Parse:
    """The channel's statement parser (``payment_adapters.statements.parse_statement``),
    with the expansion limit of the settings."""

    def parse(channel: str, fileobj: BinaryIO) -> Iterable[Line]:
        from payment_adapters import statements

        parse_statement = getattr(statements, "parse_statement", None)
        if parse_statement is None:
            raise StatementError(f"no statement parser is installed for {channel}")
        kwargs: dict[str, Any] = {}
        if "max_expanded_bytes" in inspect.signature(parse_statement).parameters:
            kwargs["max_expanded_bytes"] = rt.settings.statement_max_expanded_bytes
        return cast(Iterable[Line], parse_statement(channel, fileobj, **kwargs))

    return parse


def _compressed(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b" or data[:4] == b"PK\x03\x04"


def fee_ratio(rate: Decimal) -> tuple[int, int]:
    n, d = rate.as_integer_ratio()
    return int(n), int(d)


def expected_fee(amount_fen: int, rate: Decimal) -> int:
    """round_half_up(amount × rate), in integers: what the SQL computes too."""
    n, d = fee_ratio(rate)
    return (2 * amount_fen * n + d) // (2 * d)


# --------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Reconciled:
    """The run (its fields read through: ``.run_id``, ``.matched``, ``.discrepancies``…),
    and whether this call made it."""

    run: RunOut
    created: bool            # False: this very file was loaded before; its run

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)


#: The service's records begin in this century: a day far outside it (0001-01-01) would
#: overflow when its Beijing midnight, less the hold window, is worked out.
EARLIEST_DAY, LATEST_DAY = date(2000, 1, 1), date(2999, 12, 31)


def check_day(day: date) -> None:
    """A statement's business day, within the years the service can date."""
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise ValidationFailed(f"date: {day} is outside {EARLIEST_DAY} to {LATEST_DAY}",
                               fields=["date"])


def reconcile_statement(rt: Runtime, *, channel: str, day: date, fileobj: BinaryIO,
                        filename: str, source: str, user_id: int | None,
                        parse: Parse | None = None) -> Reconciled:
    """Load one statement of ``channel`` for business ``day`` and reconcile it, all or
    nothing. The same file again gives the same run; another file for a day that has a run
    is refused (409 ``statement_already_loaded``); a file that does not parse is refused
    (422 ``invalid_statement``) and nothing is kept."""
    if channel not in CHANNELS:
        raise ValidationFailed(f"channel: {channel!r} is none of {', '.join(CHANNELS)}")
    if source not in ("upload", "fetch"):
        raise ValidationFailed(f"source: {source!r} is neither upload nor fetch")
    check_day(day)
    limit = rt.settings.statement_max_bytes
    data = fileobj.read(limit + 1)
    if len(data) > limit:
        raise StatementTooLarge(f"the statement is over {limit} bytes")
    if not data:
        raise InvalidStatement("the file is empty")
    sha256 = hashlib.sha256(data).hexdigest()
    before = _loaded_before(rt, channel, day, sha256)
    if before is not None:
        return before
    parse = parse or default_parser(rt)
    try:
        with unit_of_work(rt.sessions) as s:
            _no_run_yet(s, channel, day)
            if _compressed(data):
                content, encoding = data, "identity"
            else:
                content, encoding = gzip.compress(data, compresslevel=6, mtime=0), "gzip"
            stmt = Statement(channel=channel, business_date=day, filename=filename[:255],
                             size=len(data), sha256=sha256, content=content,
                             content_encoding=encoding, source=source, uploaded_by=user_id,
                             created_at=rt.clock.now())
            s.add(stmt)
            s.flush()
            run = ReconciliationRun(channel=channel, business_date=day,
                                    statement_id=stmt.id,  # type: ignore[arg-type]
                                    created_by=user_id, created_at=rt.clock.now())
            s.add(run)
            s.flush()
            s.expunge(stmt)          # its bytes are written; the session need not keep them
            del content
            try:
                lines = parse(channel, io.BytesIO(data))
                _stage(s, stmt.id, channel, day, lines)  # type: ignore[arg-type]
            except StatementError as exc:
                err = InvalidStatement(f"{filename}: {exc}")
                if exc.line:
                    err.extra["line"] = exc.line
                raise err from None
            _match(rt, s, run)
            audit.record(s, rt, user_id, "statement.load", "statement", stmt.id,
                         details={"channel": channel, "business_date": day, "source": source,
                                  "filename": filename[:255], "sha256": sha256,
                                  "run_id": run.id})
            return Reconciled(run_view(s, run.id), created=True)  # type: ignore[arg-type]
    except IntegrityError as exc:
        # The same file or another of the same day, loaded at the same moment.
        if not any(name in str(exc.orig) for name in ("uq_statement_file", "uq_run_day",
                                                      "statements", "reconciliation_runs")):
            raise
        before = _loaded_before(rt, channel, day, sha256)
        if before is not None:
            return before
        with rt.sessions() as s:
            _no_run_yet(s, channel, day)
        raise


FETCHABLE = ("wechat", "alipay")       # the channels whose statements have an API


class StatementUnavailable(AppError):
    """The channel has not published the day's statement (yet), or no longer serves it."""

    status, code = 409, "statement_not_ready"

    def __init__(self, message: str, *, why: str = "not_ready") -> None:
        super().__init__(message)
        # not_ready (yet), no_statement (WeChat: no trade that day), statement_out_of_range
        self.why = why


class StatementChannelError(AppError):
    status, code = 502, "channel_error"


def fetch_and_reconcile(rt: Runtime, *, channel: str, day: date,
                        user_id: int | None) -> Reconciled:
    """Fetch ``channel``'s statement of ``day`` through its own API and reconcile it, as if
    uploaded (the same file twice gives the same run). WeChat and Alipay only: ChinaUMS and
    POS statements are uploaded."""
    if channel not in FETCHABLE:
        raise ValidationFailed(f"channel: {channel} statements are uploaded; only "
                               f"{' and '.join(FETCHABLE)} are fetched from the channel")
    check_day(day)
    client = rt.channels.clients[Channel(channel)]
    fetch = getattr(client, "fetch_statement", None)
    if fetch is None:
        raise ValidationFailed(f"channel: {channel} has no statement API here")
    try:
        data = fetch(day)
    except StatementNotReady as exc:
        raise StatementUnavailable(f"{channel}: {exc}") from None
    except ChannelError as exc:
        if exc.code in ("no_statement", "statement_out_of_range"):
            raise StatementUnavailable(f"{channel}: {exc}", why=exc.code) from None
        raise StatementChannelError(f"{channel} statement of {day}: {exc}") from None
    return reconcile_statement(rt, channel=channel, day=day, fileobj=io.BytesIO(data),
                               filename=f"{channel}-{day.isoformat()}"
                                        f"{'.csv.gz' if channel == 'wechat' else '.zip'}",
                               source="fetch", user_id=user_id)


def _loaded_before(rt: Runtime, channel: str, day: date, sha256: str) -> Reconciled | None:
    with rt.sessions() as s:
        row = s.execute(select(col(ReconciliationRun.id), col(ReconciliationRun.business_date))
                        .join(Statement, col(Statement.id) == col(ReconciliationRun.statement_id))
                        .where(col(Statement.channel) == channel,
                               col(Statement.sha256) == sha256)).first()
        if row is None:
            return None
        run_id, loaded_for = row
        if loaded_for != day:
            raise Conflict(f"this {channel} statement was loaded before for {loaded_for} (run "
                           f"{run_id}), not {day}", code="statement_already_loaded",
                           run_id=run_id)
        return Reconciled(run_view(s, run_id or 0), created=False)


def _no_run_yet(s: Session, channel: str, day: date) -> None:
    run_id = s.scalar(select(col(ReconciliationRun.id)).where(
        col(ReconciliationRun.channel) == channel, col(ReconciliationRun.business_date) == day))
    if run_id is not None:
        raise Conflict(f"the {channel} statement of {day} is already loaded (run {run_id}), "
                       "from another file; its discrepancies are resolved one by one",
                       code="statement_already_loaded", run_id=run_id)


# --------------------------------------------------------------------------- staging
_STAGING = "recon_staging"
_STAGING_COLUMNS = ("line_no", "kind", "out_trade_no", "transaction_id", "amount_fen",
                    "fee_fen", "status", "done", "occurred_at", "out_refund_no", "refund_id",
                    "terminal")
_STAGING_TYPES = ("int8", "varchar", "varchar", "varchar", "int8", "int8", "varchar", "bool",
                  "timestamptz", "varchar", "varchar", "varchar")
_STAGING_DDL = """(line_no BIGINT NOT NULL, kind VARCHAR(8) NOT NULL,
    out_trade_no VARCHAR(64) NOT NULL, transaction_id VARCHAR(64) NOT NULL,
    amount_fen BIGINT NOT NULL, fee_fen BIGINT NOT NULL, status VARCHAR(32) NOT NULL,
    done BOOLEAN NOT NULL, occurred_at {ts} NOT NULL, out_refund_no VARCHAR(64),
    refund_id VARCHAR(64), terminal VARCHAR(64))"""
# A refund the channel has not finished (WeChat REFUND_PROCESSING, REFUND_FAIL, …).
_NOT_DONE = ("PROCESSING", "FAIL", "ABNORMAL", "CLOSE", "处理中", "失败")


def refund_done(status: str) -> bool:
    upper = status.upper()
    return not any(word in upper for word in _NOT_DONE)


def _checked(lines: Iterable[Line], day: date) -> Iterator[tuple[Any, ...]]:
    """Each line as a staging row, refused (StatementError) if it cannot be of this
    statement: a payment of another day (a channel may bill a payment of the last minutes
    before midnight on the next day, never earlier), a refund after the day, an id too long.
    (A million lines pass through here: the common case is kept to a few comparisons.)"""
    # In Beijing time, as the parsers give it: comparing datetimes of one tzinfo object
    # compares their fields, with no offset computed per line.
    start = datetime.combine(day, time(), SHANGHAI)
    end, earliest = start + timedelta(days=1), start - HOLD_WINDOW
    last = 0
    for line in lines:
        n, at, kind = line.line_no, line.occurred_at, line.kind
        if n <= last:
            raise StatementError(f"line numbers must rise: {n} after {last}", line=n)
        last = n
        if kind == "payment":
            if not earliest <= at < end:
                raise StatementError(
                    f"a payment of {at.astimezone(SHANGHAI):%Y-%m-%d %H:%M:%S} in the "
                    f"statement of {day}: is this the statement of another day?", line=n)
            done = True
        elif kind == "refund":
            if at >= end:
                raise StatementError(f"a refund of {at.astimezone(SHANGHAI):%Y-%m-%d} in the "
                                     f"statement of {day}", line=n)
            done = refund_done(line.status)
        else:
            raise StatementError(f"a line of kind {kind!r}", line=n)
        if len(line.out_trade_no) > _MAX_ID or len(line.transaction_id) > _MAX_ID or (
                kind == "refund" and len(line.out_refund_no or "") + len(line.refund_id or "")
                > _MAX_ID) or (line.terminal is not None and len(line.terminal) > _MAX_ID):
            _too_long(line)
        if line.amount_fen <= 0:
            raise StatementError(f"an amount of {line.amount_fen} fen", line=n)
        yield (n, kind, line.out_trade_no, line.transaction_id, line.amount_fen,
               line.fee_fen, line.status[:32], done, at, line.out_refund_no, line.refund_id,
               line.terminal)


def _too_long(line: Line) -> None:
    for name, value in (("out_trade_no", line.out_trade_no),
                        ("transaction_id", line.transaction_id),
                        ("out_refund_no", line.out_refund_no),
                        ("refund_id", line.refund_id), ("terminal", line.terminal)):
        if value is not None and len(value) > _MAX_ID:
            raise StatementError(f"{name} is {len(value)} characters, more than {_MAX_ID}",
                                 line=line.line_no)


def _dbapi(s: Session) -> Any:
    s.flush()
    return s.connection().connection.dbapi_connection


def _stage(s: Session, statement_id: int, channel: str, day: date,
           lines: Iterable[Line]) -> None:
    """Lines into a temporary table (COPY on PostgreSQL), then into ``statement_lines`` in
    one INSERT … SELECT that pairs each with our side."""
    dbapi = _dbapi(s)
    cur = dbapi.cursor()
    postgres = s.get_bind().dialect.name == "postgresql"
    rows = _checked(lines, day)
    if postgres:
        # Hash joins and aggregates of a million rows fit in memory instead of spilling; and
        # no nested loops: every join here is of whole days, and a table whose statistics
        # are stale (a day of payments just inserted) must not be planned as one row
        # scanned against the lines once per payment. Both end with the transaction.
        cur.execute("SET LOCAL work_mem = '128MB'")
        cur.execute("SET LOCAL enable_nestloop = off")
        # each statement runs once: compiling it costs more than it saves
        cur.execute("SET LOCAL jit = off")
        cur.execute(f"CREATE TEMPORARY TABLE {_STAGING} "
                    f"{_STAGING_DDL.format(ts='TIMESTAMPTZ')} ON COMMIT DROP")
        # binary COPY: half the client's time of the text format for a million rows
        with cur.copy(f"COPY {_STAGING} ({', '.join(_STAGING_COLUMNS)}) FROM STDIN "
                      "(FORMAT BINARY)") as copy:
            copy.set_types(_STAGING_TYPES)
            for row in rows:
                copy.write_row(row)
        # Temporary tables are never analysed by autovacuum: the planner must know its size.
        cur.execute(f"ANALYZE {_STAGING}")
    else:
        cur.execute(f"DROP TABLE IF EXISTS temp.{_STAGING}")
        cur.execute(f"CREATE TEMPORARY TABLE {_STAGING} {_STAGING_DDL.format(ts='DATETIME')}")
        insert = (f"INSERT INTO {_STAGING} ({', '.join(_STAGING_COLUMNS)}) VALUES "
                  f"({', '.join('?' * len(_STAGING_COLUMNS))})")
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row[:8] + (_sqlite_time(row[8]),) + row[9:])
            if len(batch) >= _BATCH:
                cur.executemany(insert, batch)
                batch.clear()
        if batch:
            cur.executemany(insert, batch)
    Tx(s).rowcount(_pair_sql(channel), s=statement_id, ch=channel)
    if postgres:
        cur.execute("ANALYZE statement_lines")
    else:
        cur.execute(f"DROP TABLE temp.{_STAGING}")


def _sqlite_time(at: datetime) -> str:
    # as UTCDateTime stores it on SQLite
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_PAIR = """
INSERT INTO statement_lines (statement_id, line_no, kind, out_trade_no, transaction_id,
    amount_fen, fee_fen, status, done, occurred_at, out_refund_no, refund_id, terminal,
    duplicate_of, attempt_id, payment_id, our_refund_id, our_amount_fen, our_transaction_id,
    our_status)
SELECT :s, t.line_no, t.kind, t.out_trade_no, t.transaction_id, t.amount_fen, t.fee_fen,
       t.status, t.done, t.occurred_at, t.out_refund_no, t.refund_id, t.terminal,
       COALESCE(dp.first_line, dr.first_line), {attempt}, p.id, rf.id,
       CASE WHEN t.kind = 'payment' THEN p.amount_fen ELSE rf.amount_fen END,
       p.transaction_id, rf.status
FROM recon_staging t
LEFT JOIN (SELECT out_trade_no, MIN(line_no) AS first_line FROM recon_staging
           WHERE kind = 'payment' GROUP BY out_trade_no HAVING COUNT(*) > 1) dp
       ON t.kind = 'payment' AND dp.out_trade_no = t.out_trade_no AND t.line_no > dp.first_line
LEFT JOIN (SELECT out_refund_no, MIN(line_no) AS first_line FROM recon_staging
           WHERE kind = 'refund' GROUP BY out_refund_no HAVING COUNT(*) > 1) dr
       ON t.kind = 'refund' AND dr.out_refund_no = t.out_refund_no AND t.line_no > dr.first_line
{ours}
LEFT JOIN (SELECT r.id, r.out_refund_no, r.amount_fen, r.status FROM refunds r
           JOIN payments rp ON rp.id = r.payment_id WHERE rp.channel = :ch) rf
       ON t.kind = 'refund' AND rf.out_refund_no = t.out_refund_no"""
# a channel's trades are our attempts
_OURS_TRADES = """
LEFT JOIN attempts a ON t.kind = 'payment' AND a.out_trade_no = t.out_trade_no
                        AND a.channel = :ch
LEFT JOIN payments p ON p.attempt_id = a.id"""
# a POS acquirer's lines are the agents' POS collections, by the terminal's reference
_OURS_POS = """
LEFT JOIN (SELECT pos_reference, MIN(payment_id) AS payment_id FROM agent_collections
           WHERE method = 'pos' AND pos_reference IS NOT NULL GROUP BY pos_reference) pc
       ON t.kind = 'payment' AND pc.pos_reference = t.out_trade_no
LEFT JOIN payments p ON p.id = pc.payment_id"""


def _pair_sql(channel: str) -> Sql:
    if channel == "pos":
        return Sql(_PAIR.format(attempt="NULL", ours=_OURS_POS), prepare=False)
    return Sql(_PAIR.format(attempt="a.id", ours=_OURS_TRADES), prepare=False)


# --------------------------------------------------------------------------- matching
_DISCREPANCY_COLUMNS = """INSERT INTO discrepancies (run_id, channel, business_date, kind,
    status, line_no, out_trade_no, transaction_id, out_refund_no, our_amount_fen,
    channel_amount_fen, expected_fee_fen, channel_fee_fen, attempt_id, payment_id, refund_id,
    detail, created_at, updated_at)"""
# The run's constants in a SELECT list: typed for PostgreSQL (a parameter there has no
# type); bare on SQLite, where CAST(… AS DATE) would make a number of a date.
_CONSTANTS = {"sqlite": {"run": ":run, :ch, :d", "now": ":now, :now"},
              "postgresql": {"run": "CAST(:run AS INTEGER), CAST(:ch AS VARCHAR(16)), "
                                    "CAST(:d AS DATE)",
                             "now": "CAST(:now AS TIMESTAMPTZ), CAST(:now AS TIMESTAMPTZ)"}}


def _both(sql: str, per_dialect: dict[str, str] | None = None) -> Sql:
    """``{run}`` and ``{now}`` (and ``{not_on}``) filled in for each dialect."""
    extra = per_dialect or {}
    return Sql(sql.format(**_CONSTANTS["sqlite"], not_on=extra.get("sqlite", "")),
               postgresql=sql.format(**_CONSTANTS["postgresql"],
                                     not_on=extra.get("postgresql", "")), prepare=False)


def _txt(expr: str) -> str:
    return f"CAST({expr} AS VARCHAR(64))"


def _lines_sql(kind: str, status: str, where: str, detail: str, *,
               expected_fee: str = "NULL", extra_from: str = "") -> Sql:
    """Discrepancies from this statement's lines ``l`` (``:s``) matching ``where``."""
    sql = f"""{_DISCREPANCY_COLUMNS}
        SELECT {{run}}, {kind}, '{status}', l.line_no, l.out_trade_no, l.transaction_id,
               l.out_refund_no, l.our_amount_fen, l.amount_fen, {expected_fee}, l.fee_fen,
               l.attempt_id, l.payment_id, l.our_refund_id, {detail}, {{now}}
        FROM statement_lines l {extra_from}
        WHERE l.statement_id = :s AND {where}"""
    return _both(sql)


def _fee_expr(channel_rate: Decimal) -> str:
    n, d = fee_ratio(channel_rate)
    return f"((2 * CAST(l.amount_fen AS BIGINT) * {n} + {d}) / {2 * d})"


def _checks(channel: str, rate: Decimal) -> list[Sql]:
    fee = _fee_expr(rate)
    unknown = ("'unknown trade: no POS collection of ours has the reference ' || l.out_trade_no"
               if channel == "pos" else
               "'unknown trade: no ' || CAST(:ch AS VARCHAR(16)) || "
               "' trade of ours has out_trade_no ' || l.out_trade_no")
    checks = [
        # the same trade (or refund) twice on the statement
        _lines_sql(
            "CASE WHEN l.kind = 'payment' THEN 'duplicate_payment' ELSE 'status_mismatch' END",
            "open", "l.duplicate_of IS NOT NULL",
            "CASE WHEN l.kind = 'payment' THEN 'trade ' || l.out_trade_no ELSE 'refund ' || "
            "l.out_refund_no END || ' is on the statement again: line ' || "
            f"{_txt('l.line_no')} || ' repeats line ' || {_txt('l.duplicate_of')}"),
        # one channel transaction billed for two of our trades
        _lines_sql(
            "'duplicate_payment'", "open",
            "l.kind = 'payment' AND l.duplicate_of IS NULL AND l.line_no > g.first_line",
            "'transaction ' || l.transaction_id || ' is billed for trade ' || f.out_trade_no "
            f"|| ' (line ' || {_txt('f.line_no')} || ') and again for trade ' || "
            f"l.out_trade_no || ' (line ' || {_txt('l.line_no')} || ')'",
            extra_from="""JOIN (SELECT transaction_id, MIN(line_no) AS first_line
                                FROM statement_lines WHERE statement_id = :s
                                AND kind = 'payment' AND duplicate_of IS NULL
                                GROUP BY transaction_id HAVING COUNT(*) > 1) g
                            ON g.transaction_id = l.transaction_id
                          JOIN statement_lines f ON f.statement_id = :s
                            AND f.line_no = g.first_line"""),
        # money the channel took that we did not record
        _lines_sql(
            "'missing_locally'", "open",
            "l.kind = 'payment' AND l.duplicate_of IS NULL AND l.payment_id IS NULL",
            f"CASE WHEN l.attempt_id IS NULL THEN {unknown} ELSE 'the channel took ' || "
            f"{_txt('l.amount_fen')} || ' fen for trade ' || l.out_trade_no || "
            "', which we have not recorded as paid' END"),
        _lines_sql(
            "'amount_mismatch'", "open",
            "l.duplicate_of IS NULL AND l.our_amount_fen IS NOT NULL "
            "AND l.our_amount_fen <> l.amount_fen",
            "CASE WHEN l.kind = 'payment' THEN 'the channel took ' ELSE 'the channel refunded ' "
            f"END || {_txt('l.amount_fen')} || ' fen for ' || CASE WHEN l.kind = 'payment' "
            "THEN 'trade ' || l.out_trade_no ELSE 'refund ' || l.out_refund_no END || "
            f"'; we recorded ' || {_txt('l.our_amount_fen')} || ' fen'"),
        # the payer paid a duplicate (items already paid): money to give back
        _lines_sql(
            "'duplicate_payment'", "open",
            "l.kind = 'payment' AND l.duplicate_of IS NULL",
            "'trade ' || l.out_trade_no || ' paid ' || "
            f"{_txt('pl.fen')} || ' fen for items already paid by another payment: a "
            "duplicate payment, to be refunded'",
            # (a line that paid its item and was refunded since is not applied either: not
            # a duplicate)
            extra_from="""JOIN (SELECT payment_id, SUM(amount_fen) AS fen FROM payment_lines x
                                WHERE NOT applied AND NOT EXISTS (
                                    SELECT 1 FROM refund_lines rl
                                    WHERE rl.payment_line_id = x.id AND rl.applied)
                                GROUP BY payment_id) pl
                            ON pl.payment_id = l.payment_id"""),
        _lines_sql(
            "'fee_mismatch'", "open",
            f"l.kind = 'payment' AND l.duplicate_of IS NULL AND l.fee_fen <> {fee}",
            f"'the channel charged a fee of ' || {_txt('l.fee_fen')} || ' fen on trade ' || "
            f"l.out_trade_no || '; its rate makes it ' || {_txt(fee)} || ' fen'",
            expected_fee=fee),
        # refunds: the channel's and ours disagree on whether it was done
        _lines_sql(
            "'status_mismatch'", "open",
            "l.kind = 'refund' AND l.duplicate_of IS NULL AND (l.our_refund_id IS NULL "
            "OR (l.done AND l.our_status <> 'succeeded') "
            "OR (NOT l.done AND l.our_status = 'succeeded'))",
            "CASE WHEN l.our_refund_id IS NULL THEN 'the channel refunded ' || "
            f"{_txt('l.amount_fen')} || ' fen of trade ' || l.out_trade_no || ' (refund ' || "
            "l.out_refund_no || '), a refund we do not have' "
            "WHEN l.done THEN 'the channel did refund ' || l.out_refund_no || '; ours is ' || "
            "l.our_status ELSE 'the channel shows refund ' || l.out_refund_no || ' as ' || "
            "l.status || '; ours succeeded' END"),
    ]
    if channel != "pos":   # a POS collection's id is the agent's receipt, not the acquirer's
        checks.append(_lines_sql(
            "'status_mismatch'", "open",
            "l.kind = 'payment' AND l.duplicate_of IS NULL AND l.payment_id IS NOT NULL "
            "AND l.our_transaction_id <> l.transaction_id",
            "'the channel billed trade ' || l.out_trade_no || ' as transaction ' || "
            "l.transaction_id || '; we recorded it as ' || l.our_transaction_id"))
    return checks


def _not_on_statements(column: str, statements: list[int], key: str) -> dict[str, str]:
    """``key`` is on none of these statements' lines: an anti-join. PostgreSQL plans NOT
    EXISTS as a hash anti-join (spilling to disk if it must); SQLite makes an index of a NOT
    IN list, where a correlated NOT EXISTS would scan the lines once per row."""
    ids = ", ".join(str(int(i)) for i in statements)
    return {
        "sqlite": f"{key} NOT IN (SELECT m.{column} FROM statement_lines m "
                  f"WHERE m.statement_id IN ({ids}) AND m.{column} IS NOT NULL)",
        "postgresql": f"NOT EXISTS (SELECT 1 FROM statement_lines m WHERE m.statement_id IN "
                      f"({ids}) AND m.{column} = {key})"}


def _ours_missing_sql(channel: str, statements: list[int]) -> list[Sql]:
    """Our payments of the day, and our refunds done that day, on none of the statements
    (this day's, and the neighbouring days' already loaded)."""
    held = "CASE WHEN {at} >= :held_from THEN 'held' ELSE 'open' END"
    if channel == "pos":
        trade = ("(SELECT MIN(ac.pos_reference) FROM agent_collections ac "
                 "WHERE ac.payment_id = p.id)")
        join = ""
        attempt = "NULL"
    else:
        trade, join, attempt = "a.out_trade_no", "JOIN attempts a ON a.id = p.attempt_id", "a.id"
    payments = f"""{_DISCREPANCY_COLUMNS}
        SELECT {{run}}, 'missing_at_channel', {held.format(at='p.paid_at')}, NULL, {trade},
               p.transaction_id, NULL, p.amount_fen, NULL, NULL, NULL, {attempt}, p.id, NULL,
               'we recorded ' || {_txt('p.amount_fen')} || ' fen paid by ' ||
               COALESCE({trade}, {_txt('p.id')}) || ' (transaction ' || p.transaction_id ||
               '); the channel''s statement does not have it', {{now}}
        FROM payments p {join}
        WHERE p.channel = :ch AND p.business_date = :d
          AND {{not_on}}"""
    refunds = f"""{_DISCREPANCY_COLUMNS}
        SELECT {{run}}, 'status_mismatch', {held.format(at='r.refunded_at')}, NULL, {trade},
               p.transaction_id, r.out_refund_no, r.amount_fen, NULL, NULL, NULL, {attempt},
               p.id, r.id,
               'our refund ' || r.out_refund_no || ' of ' || {_txt('r.amount_fen')} ||
               ' fen succeeded; the channel''s statement does not have it', {{now}}
        FROM refunds r JOIN payments p ON p.id = r.payment_id {join}
        WHERE p.channel = :ch AND r.status = 'succeeded' AND r.refunded_at >= :lo
          AND r.refunded_at < :hi
          AND {{not_on}}"""
    return [_both(payments, _not_on_statements("payment_id", statements, "p.id")),
            _both(refunds, _not_on_statements("our_refund_id", statements, "r.id"))]


def _neighbours(s: Session, channel: str, day: date) -> dict[date, int]:
    rows = s.execute(select(col(ReconciliationRun.business_date),
                            col(ReconciliationRun.statement_id))
                     .where(col(ReconciliationRun.channel) == channel,
                            col(ReconciliationRun.business_date).in_(
                                [day - timedelta(days=1), day + timedelta(days=1)]))).all()
    return {d: int(sid) for d, sid in rows}


_HELD_FOUND = Sql("""
    UPDATE discrepancies SET status = 'auto_resolved', resolved_at = :now, updated_at = :now,
        detail = SUBSTR(detail || '; billed on ' || :today || ', run ' || :run_txt, 1, 500)
    WHERE status = 'held' AND channel = :ch AND business_date = :prev
      AND EXISTS (SELECT 1 FROM statement_lines m WHERE m.statement_id = :s
                  AND ((discrepancies.kind = 'missing_at_channel'
                        AND m.payment_id = discrepancies.payment_id)
                       OR (discrepancies.kind = 'status_mismatch'
                           AND m.our_refund_id = discrepancies.refund_id)))""", prepare=False)
# Not on the next day's statement either: reported now, with the run (and the day) that found
# it missing — the day before may be closed already, and this day must not close over it.
_HELD_NOT_FOUND = Sql("""
    UPDATE discrepancies SET status = 'open', updated_at = :now, run_id = :run,
        business_date = :d,
        detail = SUBSTR(detail || '; nor on the statement of ' || :today, 1, 500)
    WHERE status = 'held' AND channel = :ch AND business_date = :prev""", prepare=False)



def _line_totals_sql(rate: Decimal) -> Sql:
    n, d = fee_ratio(rate)
    return Sql(f"""
        SELECT kind, COUNT(*), COALESCE(SUM(amount_fen), 0), COALESCE(SUM(fee_fen), 0),
               COALESCE(SUM((2 * CAST(amount_fen AS BIGINT) * {n} + {d}) / {2 * d}), 0),
               COALESCE(SUM(CASE WHEN duplicate_of IS NULL AND (payment_id IS NOT NULL
                                 OR our_refund_id IS NOT NULL) THEN 1 ELSE 0 END), 0)
        FROM statement_lines WHERE statement_id = :s GROUP BY kind""", prepare=False)


# paired lines with a difference found (the rest of the paired lines are matched)
_PAIRED_WITH_DISCREPANCY = Sql("""
    SELECT COUNT(DISTINCT d.line_no) FROM discrepancies d
    JOIN statement_lines l ON l.statement_id = :s AND l.line_no = d.line_no
    WHERE d.run_id = :run AND l.duplicate_of IS NULL
      AND (l.payment_id IS NOT NULL OR l.our_refund_id IS NOT NULL)""", prepare=False)
_OUR_PAYMENTS = Sql("""SELECT COUNT(*), COALESCE(SUM(amount_fen), 0) FROM payments
                       WHERE channel = :ch AND business_date = :d""", prepare=False)
_OUR_REFUNDS = Sql("""SELECT COUNT(*), COALESCE(SUM(r.amount_fen), 0)
                      FROM refunds r JOIN payments p ON p.id = r.payment_id
                      WHERE p.channel = :ch AND r.status = 'succeeded'
                        AND r.refunded_at >= :lo AND r.refunded_at < :hi""", prepare=False)
_COUNT_BY_STATUS = Sql("""SELECT status, COUNT(*) FROM discrepancies WHERE run_id = :run
                          GROUP BY status""", prepare=False)


def _match(rt: Runtime, s: Session, run: ReconciliationRun) -> None:
    assert run.id is not None
    tx = Tx(s)
    channel, day, statement_id = run.channel, run.business_date, run.statement_id
    rate = rt.settings.fee_rate(channel)
    now = rt.clock.now()          # the business clock: a rehearsal's 2020 day reads 2020
    start = datetime.combine(day, time(), SHANGHAI)
    lo, hi = start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)
    params = dict(run=run.id, ch=channel, d=day, s=statement_id, now=now)
    for check in _checks(channel, rate):
        tx.rowcount(check, **params)
    # The held pool: ours of the day before, near its midnight, billed today or never.
    prev = day - timedelta(days=1)
    tx.rowcount(_HELD_FOUND, ch=channel, prev=prev, s=statement_id, now=now,
                today=day.isoformat(), run_txt=str(run.id))
    tx.rowcount(_HELD_NOT_FOUND, ch=channel, prev=prev, now=now, today=day.isoformat(),
                run=run.id, d=day)
    # Ours not on the statement: held when near midnight, unless the next day's statement
    # is here already (then it is known not to be on it either).
    neighbours = _neighbours(s, channel, day)
    statements = [statement_id, *neighbours.values()]
    held_from = (datetime.max.replace(tzinfo=UTC) if day + timedelta(days=1) in neighbours
                 else hi - HOLD_WINDOW)
    for q in _ours_missing_sql(channel, statements):
        tx.rowcount(q, held_from=held_from, lo=lo, hi=hi, **params)
    if channel == "pos":
        _remit_pos(rt, s, run)

    totals = {kind: row for kind, *row in tx.all(_line_totals_sql(rate), s=statement_id)}
    pay = totals.get("payment", [0, 0, 0, 0, 0])
    ref = totals.get("refund", [0, 0, 0, 0, 0])
    differing = tx.one(_PAIRED_WITH_DISCREPANCY, s=statement_id, run=run.id)
    ours_p = tx.one(_OUR_PAYMENTS, ch=channel, d=day) or (0, 0)
    ours_r = tx.one(_OUR_REFUNDS, ch=channel, lo=lo, hi=hi) or (0, 0)
    by_status = dict(tx.all(_COUNT_BY_STATUS, run=run.id))
    run.statement_payments, run.statement_payment_fen = int(pay[0]), int(pay[1])
    run.statement_refunds, run.statement_refund_fen = int(ref[0]), int(ref[1])
    run.statement_fee_fen = int(pay[2]) + int(ref[2])
    run.expected_fee_fen = int(pay[3])
    run.paired = int(pay[4]) + int(ref[4])
    run.matched = run.paired - int(differing[0] if differing else 0)
    run.our_payments, run.our_payment_fen = int(ours_p[0]), int(ours_p[1])
    run.our_refunds, run.our_refund_fen = int(ours_r[0]), int(ours_r[1])
    run.held = int(by_status.get("held", 0))
    run.discrepancies = sum(int(v) for v in by_status.values())
    s.flush()


# The POS lines paired with a collection of ours (each once: a repeated line is a
# duplicate_payment already), with whether this run found the line's amount wrong.
_POS_SETTLED = Sql("""
    SELECT l.line_no, l.payment_id, l.amount_fen, l.fee_fen, l.out_trade_no, l.transaction_id,
           l.our_amount_fen
    FROM statement_lines l
    WHERE l.statement_id = :s AND l.kind = 'payment' AND l.duplicate_of IS NULL
      AND l.payment_id IS NOT NULL
    ORDER BY l.line_no""", prepare=False)
_POS_REFUSED_KIND = {"amount_mismatch": "amount_mismatch", "bad_fee": "fee_mismatch",
                     "duplicate_line": "duplicate_payment",
                     "already_remitted": "duplicate_payment"}


def _remit_pos(rt: Runtime, s: Session, run: ReconciliationRun) -> None:
    """A POS settlement's lines paired with the agents' POS collections remit them
    (``ledger.pos.remit_pos``: the daily ledger counts the money as remitted, on the
    collection's day and village), in the run's transaction. The acquirer's own fee is
    booked. A line the remittance refuses — or one of a collection an earlier settlement
    remitted — is a discrepancy of the run, unless the run has one for that line already."""
    rows = Tx(s).all(_POS_SETTLED, s=run.statement_id)
    if not rows:
        return
    by_payment = {int(r[1]): r for r in rows}
    done = remit_pos(s, settle_date=run.business_date, collections=[
        PosSettled(amount_fen=int(r[2]), fee_fen=int(r[3]), payment_id=int(r[1]),
                   pos_reference=r[4]) for r in rows],
        occurred_at=rt.clock.now(),
        reference=f"statement {run.statement_id} (run {run.id})")
    refused = [(line.payment_id, why) for line, why in done.refused]
    refused += [(pid, "already_remitted") for pid in done.already_remitted]
    if not refused:
        return
    have = set(s.scalars(select(col(Discrepancy.line_no)).where(
        col(Discrepancy.run_id) == run.id, col(Discrepancy.line_no).is_not(None))).all())
    now = rt.clock.now()          # the business clock: a rehearsal's 2020 day reads 2020
    for pid, why in refused:
        line_no, payment_id, amount, fee, ref, txn, ours = by_payment[int(pid or 0)]
        if line_no in have:
            continue
        detail = ("the collection with POS reference " + ref
                  + (" was remitted by an earlier POS settlement"
                     if why == "already_remitted" else
                     f" cannot be remitted from this settlement ({why})"))
        s.add(Discrepancy(run_id=run.id, channel=run.channel, business_date=run.business_date,  # type: ignore[arg-type]
                          kind=_POS_REFUSED_KIND.get(why, "status_mismatch"), status="open",
                          line_no=line_no, out_trade_no=ref, transaction_id=txn,
                          our_amount_fen=ours, channel_amount_fen=amount, channel_fee_fen=fee,
                          payment_id=payment_id, detail=detail[:500], created_at=now,
                          updated_at=now))
    s.flush()


# --------------------------------------------------------------------------- reading
def run_view(s: Session, run_id: int, *, limit: int = RUN_LIST_LIMIT) -> RunOut:
    run = s.get(ReconciliationRun, run_id)
    if run is None:
        raise NotFound(f"no reconciliation run {run_id}")
    stmt = s.execute(select(col(Statement.id), col(Statement.filename), col(Statement.size),
                            col(Statement.sha256), col(Statement.source),
                            col(Statement.uploaded_by), col(Statement.created_at))
                     .where(col(Statement.id) == run.statement_id)).one()
    items = s.scalars(select(Discrepancy).where(col(Discrepancy.run_id) == run_id)
                      .order_by(col(Discrepancy.id)).limit(limit)).all()
    return RunOut(
        run_id=run_id, date=run.business_date, channel=run.channel, matched=run.matched,
        discrepancy_count=run.discrepancies, discrepancies=[discrepancy_view(d) for d in items],
        discrepancies_truncated=run.discrepancies > len(items),
        statement=StatementInfo.model_validate(dict(zip(
            ("id", "filename", "size", "sha256", "source", "uploaded_by", "created_at"), stmt,
            strict=True))),
        totals=RunTotals(
            statement=StatementSide(payments=run.statement_payments,
                                    payment_fen=run.statement_payment_fen,
                                    refunds=run.statement_refunds,
                                    refund_fen=run.statement_refund_fen,
                                    fee_fen=run.statement_fee_fen,
                                    expected_fee_fen=run.expected_fee_fen),
            ours=TotalsOurs(payments=run.our_payments, payment_fen=run.our_payment_fen,
                            refunds=run.our_refunds, refund_fen=run.our_refund_fen),
            paired=run.paired, matched=run.matched, held=run.held,
            discrepancies=run.discrepancies),
        created_at=run.created_at)


def discrepancy_view(d: Discrepancy) -> DiscrepancyOut:
    return DiscrepancyOut.model_validate(d, from_attributes=True)


def list_runs(s: Session, *, day: date | None, channel: str | None) -> list[ReconciliationRun]:
    q = select(ReconciliationRun).order_by(col(ReconciliationRun.business_date).desc(),
                                           col(ReconciliationRun.channel))
    if day is not None:
        q = q.where(col(ReconciliationRun.business_date) == day)
    if channel is not None:
        q = q.where(col(ReconciliationRun.channel) == channel)
    return list(s.scalars(q.limit(400)).all())


def list_discrepancies(s: Session, *, status: str | None = None, run_id: int | None = None,
                       kind: str | None = None, day: date | None = None,
                       channel: str | None = None, after_id: int = 0,
                       limit: int = 100) -> list[Discrepancy]:
    q = select(Discrepancy).where(col(Discrepancy.id) > after_id)
    for column, value in ((Discrepancy.status, status), (Discrepancy.run_id, run_id),
                          (Discrepancy.kind, kind), (Discrepancy.business_date, day),
                          (Discrepancy.channel, channel)):
        if value is not None:
            q = q.where(col(column) == value)
    return list(s.scalars(q.order_by(col(Discrepancy.id)).limit(limit)).all())


def open_discrepancies(session: Session, day: date) -> int:
    """Discrepancies of ``day``'s runs still waiting for someone: open, or proposed and not
    yet approved. Held ones are not counted: they wait for the next day's statement, which
    comes after the day is closed, and open (in this day's run) if it does not have them."""
    return int(session.scalar(select(func.count()).select_from(Discrepancy).where(
        col(Discrepancy.business_date) == day,
        col(Discrepancy.status).in_(OPEN_STATUSES))) or 0)


def reconciled_channels(session: Session, day: date) -> set[str]:
    """The channels whose statement of ``day`` has been reconciled."""
    return set(session.scalars(select(col(ReconciliationRun.channel)).where(
        col(ReconciliationRun.business_date) == day)).all())


# --------------------------------------------------------------------------- resolution
def resolve_discrepancy(rt: Runtime, session: Session, discrepancy_id: int, *, user_id: int,
                        side: str, reason: str) -> DiscrepancyOut:
    """The first of two people: which side is right, and why (→ ``proposed``). Proposing
    again, before approval, replaces the proposal (and its proposer)."""
    if side not in SIDES:
        raise ValidationFailed(f"side: {side!r} is neither channel nor local")
    reason = reason.strip()
    if not reason:
        raise ValidationFailed("reason: say why this side is right")
    now = rt.clock.now()          # the business clock: a rehearsal's 2020 day reads 2020
    moved = cast(CursorResult[Any], session.execute(
        update(Discrepancy).where(col(Discrepancy.id) == discrepancy_id,
                                  col(Discrepancy.status).in_(OPEN_STATUSES))
        .values(status="proposed", side=side, reason=reason[:500], proposed_by=user_id,
                proposed_at=now, updated_at=now)
        .execution_options(synchronize_session=False))).rowcount
    d = _get(session, discrepancy_id)
    if not moved:
        raise Conflict(f"discrepancy {discrepancy_id} is {d.status}, not open: "
                       + ("it waits for the next day's statement" if d.status == "held"
                          else "it is settled"), code="discrepancy_not_open")
    audit.record(session, rt, user_id, "discrepancy.resolve", "discrepancy", discrepancy_id,
                 reason=reason, details={"side": side, "kind": d.kind, "channel": d.channel})
    return discrepancy_view(d)


def approve_discrepancy(rt: Runtime, session: Session, discrepancy_id: int, *,
                        user_id: int) -> DiscrepancyOut:
    """The second person: another finance user approves the proposal (→ ``resolved``), and
    the correction it calls for is made in the same transaction — once, however many
    approvals race (the proposal is taken by a compare-and-set)."""
    d = _get(session, discrepancy_id)
    if d.status != "proposed":
        raise Conflict(f"discrepancy {discrepancy_id} is {d.status}: only a proposed "
                       "resolution can be approved", code="discrepancy_not_proposed")
    if d.proposed_by == user_id:
        raise Forbidden("the resolution must be approved by another finance user than the "
                        "one who proposed it", code="same_approver")
    now = rt.clock.now()          # the business clock: a rehearsal's 2020 day reads 2020
    moved = cast(CursorResult[Any], session.execute(
        update(Discrepancy).where(col(Discrepancy.id) == discrepancy_id,
                                  col(Discrepancy.status) == "proposed",
                                  col(Discrepancy.proposed_by) == d.proposed_by,
                                  col(Discrepancy.side) == d.side)
        .values(status="resolved", approved_by=user_id, approved_at=now, resolved_at=now,
                updated_at=now)
        .execution_options(synchronize_session=False))).rowcount
    if not moved:
        raise Conflict(f"discrepancy {discrepancy_id} was changed meanwhile: read it again",
                       code="discrepancy_not_proposed")
    session.refresh(d)
    if d.side == "channel":
        entry_id, payment_id = _correct(rt, session, d)
        values: dict[str, Any] = {"ledger_entry_id": entry_id}
        if payment_id is not None:
            values["payment_id"] = payment_id
        session.execute(update(Discrepancy).where(col(Discrepancy.id) == discrepancy_id)
                        .values(**values).execution_options(synchronize_session=False))
        session.refresh(d)
    audit.record(session, rt, user_id, "discrepancy.approve", "discrepancy", discrepancy_id,
                 reason=d.reason, details={"side": d.side, "kind": d.kind,
                                           "channel": d.channel,
                                           "proposed_by": d.proposed_by,
                                           "ledger_entry_id": d.ledger_entry_id})
    return discrepancy_view(d)


def _get(session: Session, discrepancy_id: int) -> Discrepancy:
    d = session.get(Discrepancy, discrepancy_id, populate_existing=True)
    if d is None:
        raise NotFound(f"no discrepancy {discrepancy_id}")
    return d


class CannotRecover(AppError):
    status, code = 409, "cannot_recover"


def _line(session: Session, d: Discrepancy) -> StatementLine | None:
    if d.line_no is None:
        return None
    statement_id = session.scalar(select(col(ReconciliationRun.statement_id))
                                  .where(col(ReconciliationRun.id) == d.run_id))
    return session.get(StatementLine, (statement_id, d.line_no))


def _correct(rt: Runtime, session: Session, d: Discrepancy) -> tuple[int | None, int | None]:
    """What the channel's side being right changes in our books: (ledger entry, payment
    recovered). Money the channel took for a trade of ours is recovered as its payment; a
    refund the channel did completes ours; any other difference moves the channel's clearing
    account (what it owes us) to the channel's figure, against the reconciliation
    differences (对账差异) — or, for a fee, against the channel's fees."""
    channel = d.channel
    line = _line(session, d)
    refund = session.get(Refund, d.refund_id) if d.refund_id is not None else None
    repeated = line is not None and line.duplicate_of is not None
    delta, what = 0, ""        # + the channel holds more for us than our books say
    if d.kind == "missing_locally":
        if d.attempt_id is not None and line is not None:
            return _recover(session, d, line)
        delta, what = d.channel_amount_fen or 0, f"unknown trade {d.out_trade_no}"
    elif d.kind == "missing_at_channel":
        delta, what = -(d.our_amount_fen or 0), f"payment {d.transaction_id} not at the channel"
    elif d.kind == "amount_mismatch":
        diff = (d.channel_amount_fen or 0) - (d.our_amount_fen or 0)
        delta = -diff if d.out_refund_no else diff
        what = f"amount of {d.out_refund_no or d.out_trade_no}"
    elif d.kind == "fee_mismatch":
        extra = (d.channel_fee_fen or 0) - (d.expected_fee_fen or 0)
        if extra == 0 or (channel == "pos" and _pos_remitted(session, d.payment_id)):
            # a POS settlement's remittance booked the fee the acquirer kept already
            return None, None
        entry = ledger.post_entry(
            session, kind="correction",
            reason=f"reconciliation {d.id}: {channel} fee on {d.out_trade_no} is {extra:+d} "
                   f"fen from its rate ({d.reason})",
            business_date=rt.clock.today(), occurred_at=rt.clock.now(),
            legs=[ledger.Leg(channel_fees(channel), extra, channel=channel),
                  ledger.Leg(ledger.channel_clearing(channel), -extra, channel=channel)],
            payment_id=d.payment_id)
        return entry.entry_id, None
    elif d.kind == "status_mismatch" and d.out_refund_no:
        done_there = line is not None and line.done
        if repeated:                                  # refunded twice by the channel
            delta, what = -(d.channel_amount_fen or 0), f"refund {d.out_refund_no} again"
        elif refund is not None and done_there and refund.status in CHANNEL_STATES:
            # the channel did refund: ours completes as a refund notification would
            assert line is not None and refund.id is not None
            complete_refund(session, refund.id, channel_refund_id=line.refund_id,
                            refunded_at=line.occurred_at)
            entry = session.scalar(select(func.max(col(JournalEntry.id))).where(
                col(JournalEntry.refund_id) == refund.id))
            return (int(entry) if entry else None), None
        elif done_there and (refund is None or refund.status != "succeeded"):
            delta, what = -(d.channel_amount_fen or 0), f"refund {d.out_refund_no} we lack"
        elif not done_there and refund is not None and refund.status == "succeeded":
            delta = d.our_amount_fen or refund.amount_fen
            what = f"refund {d.out_refund_no} not done by the channel"
    elif d.kind == "duplicate_payment" and repeated:
        delta, what = d.channel_amount_fen or 0, f"trade {d.out_trade_no} billed twice"
    if delta == 0:
        return None, None   # nothing in money: a transaction id, a duplicate being refunded
    entry = ledger.post_entry(
        session, kind="correction",
        reason=f"reconciliation {d.id}: {what}, {delta:+d} fen to {channel} clearing "
               f"({d.reason})",
        business_date=rt.clock.today(), occurred_at=rt.clock.now(),
        legs=[ledger.Leg(ledger.channel_clearing(channel), delta, channel=channel),
              ledger.Leg(differences(channel), -delta, channel=channel)],
        payment_id=d.payment_id, refund_id=d.refund_id)
    return entry.entry_id, None


def _pos_remitted(session: Session, payment_id: int | None) -> bool:
    return payment_id is not None and session.scalar(
        select(func.count()).select_from(JournalEntry).where(
            col(JournalEntry.kind) == POS_REMITTANCE,
            col(JournalEntry.payment_id) == payment_id)) != 0


def _recover(session: Session, d: Discrepancy, line: StatementLine) -> tuple[int | None, int]:
    """The channel took money for a trade of ours we never saw paid: applied as the
    notification would have been (source ``statement``), once."""
    try:
        applied = confirm_channel_payment(session, ChannelConfirmation(
            channel=d.channel, out_trade_no=line.out_trade_no,
            transaction_id=line.transaction_id, amount_fen=line.amount_fen,
            paid_at=line.occurred_at, source="statement"))
    except UnknownTrade:
        raise CannotRecover(f"no {d.channel} trade {line.out_trade_no} to recover") from None
    except AmountMismatch as exc:
        raise CannotRecover(f"trade {line.out_trade_no} cannot be recovered as a payment: "
                            f"{exc}") from None
    except TransactionConflict as exc:
        raise CannotRecover(exc.detail) from None
    payment_id = applied.payment_id or session.scalar(
        select(col(Payment.id)).where(col(Payment.attempt_id) == d.attempt_id))
    assert payment_id is not None
    entry = session.scalar(select(func.min(col(JournalEntry.id))).where(
        col(JournalEntry.payment_id) == payment_id))
    return (int(entry) if entry else None), int(payment_id)
