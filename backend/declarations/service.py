"""The declaration file (申报入库) of one town and business day, as CSV.

Finance downloads it once the day is closed (日结: reconciled, no open discrepancy) and
imports it into the e-tax bureau's entrusted collection (委托代征), which collects the money
of the town's virtual account. It is the one export with full ID numbers: only finance
gets it, every download is in the audit trail, and no log line carries an ID number.

Before anything is served the file is checked against the ledger; a file that disagrees
is refused (``declaration_mismatch``, 500) and logged at ERROR: a declaration must never
say something else than the book.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.clock import SHANGHAI
from backend.db import unit_of_work
from backend.declarations import repository as repo
from backend.declarations.repository import PAYMENT, LedgerSide, Row
from backend.errors import AppError, Conflict, Forbidden, NotFound
from backend.ledger.models import ClosedDay
from backend.money import yuan
from backend.residents.models import Town
from backend.runtime import Runtime
from backend.security.tokens import Principal

log = logging.getLogger(__name__)

CSV = "text/csv; charset=utf-8"
BOM = "\ufeff"         # Excel (zh-CN) reads a CSV as GBK unless it starts with one
INSURANCE = {"pension": "养老保险", "medical": "医疗保险"}
CHANNELS = {"wechat": "微信", "alipay": "支付宝", "unionpay": "银联", "cash": "现金",
            "pos": "POS刷卡", "department": "部门代缴"}
KINDS = {"payment": "缴费", "refund": "退费"}
COLUMNS = ["序号", "类型", "身份证号码", "姓名", "村(居)代码", "村(居)名称", "险种", "缴费年度",
           "养老档次(元)", "金额(分)", "金额(元)", "缴费渠道", "交易/收据号", "时间(北京时间)"]
TOTAL_COLUMNS = ["汇总", "险种", "缴费笔数", "缴费金额(分)", "退费笔数", "退费金额(分)",
                 "申报金额(分)", "申报金额(元)"]


class DeclarationMismatch(AppError):
    status, code = 500, "declaration_mismatch"


@dataclass(frozen=True)
class Totals:
    paid_count: int = 0
    paid_fen: int = 0
    refund_count: int = 0
    refunded_fen: int = 0       # > 0

    @property
    def net_fen(self) -> int:
        return self.paid_fen - self.refunded_fen

    def plus(self, row: Row) -> Totals:
        if row.kind == PAYMENT:
            return Totals(self.paid_count + 1, self.paid_fen + row.amount_fen,
                          self.refund_count, self.refunded_fen)
        return Totals(self.paid_count, self.paid_fen, self.refund_count + 1,
                      self.refunded_fen - row.amount_fen)


@dataclass(frozen=True)
class Declaration:
    town: Town
    day: date
    rows: list[Row]
    by_insurance: dict[str, Totals]
    total: Totals
    content: bytes

    @property
    def filename(self) -> str:
        return f"declaration-{self.town.code}-{self.day.isoformat()}.csv"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def check_access(principal: Principal) -> None:
    """Finance only. Admins are refused too: administering accounts is not a reason to
    take every resident's full ID number home."""
    if principal.role != "finance" or not principal.sub.startswith("staff:"):
        raise Forbidden("the declaration holds full ID numbers: only finance downloads it")


def totals_of(rows: Sequence[Row]) -> tuple[dict[str, Totals], Totals]:
    by: dict[str, Totals] = {}
    total = Totals()
    for row in rows:
        by[row.insurance] = by.get(row.insurance, Totals()).plus(row)
        total = total.plus(row)
    return by, total


def disagreements(rows: Sequence[Row], ledger: LedgerSide) -> list[str]:
    """Where the rows and the ledger differ (none: they agree). The rows' items paid must
    be the day's ``collected`` money, and per insurance and year what the contributions
    accounts were credited; their refunds what those accounts were debited."""
    found = []
    paid = sum(r.amount_fen for r in rows if r.kind == PAYMENT)
    if paid != ledger.collected_fen:
        found.append(f"items paid {paid} fen, the ledger's collected {ledger.collected_fen}")
    credited: dict[tuple[str, int], int] = {}
    debited: dict[tuple[str, int], int] = {}
    for r in rows:
        key = (r.insurance, r.year)
        if r.kind == PAYMENT:
            credited[key] = credited.get(key, 0) + r.amount_fen
        else:
            debited[key] = debited.get(key, 0) - r.amount_fen
    for name, ours, theirs in (("paid", credited, ledger.credited),
                               ("refunded", debited, ledger.debited)):
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key, 0) != theirs.get(key, 0):
                found.append(f"{key[0]} {key[1]} {name} {ours.get(key, 0)} fen, the "
                             f"contributions account {theirs.get(key, 0)}")
    return found


def write_csv(rt: Runtime, town: Town, day: date, rows: Sequence[Row],
              by_insurance: dict[str, Totals], total: Totals) -> bytes:
    """UTF-8 with a BOM, CRLF line ends (RFC 4180). No generation time in it: the same
    closed day gives the same bytes, so equal SHA-256 sums in the audit trail say two
    downloads were the same file."""
    out = io.StringIO()
    out.write(BOM)
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(COLUMNS)
    pii = rt.pii
    for n, r in enumerate(rows, 1):
        w.writerow([n, KINDS[r.kind], pii.decrypt(r.id_enc), r.name, r.village_code or "",
                    r.village_name or "", INSURANCE.get(r.insurance, r.insurance), r.year,
                    "" if r.tier_yuan is None else r.tier_yuan, r.amount_fen,
                    yuan(r.amount_fen), CHANNELS.get(r.channel, r.channel), r.reference,
                    r.at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")])
    w.writerow([])
    w.writerow(TOTAL_COLUMNS)
    order = list(INSURANCE)          # pension, then medical, as on every form
    for insurance in sorted(by_insurance, key=lambda i: (order.index(i) if i in order
                                                         else len(order), i)):
        t = by_insurance[insurance]
        w.writerow(["汇总", INSURANCE.get(insurance, insurance), t.paid_count, t.paid_fen,
                    t.refund_count, t.refunded_fen, t.net_fen, yuan(t.net_fen)])
    w.writerow(["汇总", "合计", total.paid_count, total.paid_fen, total.refund_count,
                total.refunded_fen, total.net_fen, yuan(total.net_fen)])
    w.writerow([])
    w.writerow(["镇(街道)", f"{town.name}（{town.code}）", "业务日期", day.isoformat()])
    return out.getvalue().encode("utf-8")


def declaration(rt: Runtime, principal: Principal, town_code: str, day: date) -> Declaration:
    """The checked declaration of ``town_code`` on ``day``. Its own transaction: the audit
    event is committed before the file is handed back, so none leaves unrecorded."""
    check_access(principal)
    with unit_of_work(rt.sessions) as session:
        return _declaration(rt, session, principal, town_code, day)


def _declaration(rt: Runtime, session: Session, principal: Principal, town_code: str,
                 day: date) -> Declaration:
    town = session.get(Town, town_code)
    if town is None:
        raise NotFound(f"no town {town_code}")
    if session.get(ClosedDay, day) is None:
        raise Conflict(f"{day} is not closed: a declaration is made of a closed day only "
                       "(reconciled, then closed by finance)", code="day_not_closed")
    rows = (repo.payment_rows(session, day, town_code)
            + repo.refund_rows(session, day, town_code)
            + repo.credit_rows(session, day, town_code))
    wrong = disagreements(rows, repo.ledger_side(session, day, town_code))
    if wrong:
        log.error("DECLARATION REFUSED: town %s %s disagrees with the ledger: %s", town_code,
                  day, "; ".join(wrong))
        raise DeclarationMismatch(f"the declaration of town {town_code} on {day} does not "
                                  "agree with the ledger; it was not served, and the "
                                  "difference is logged")
    by_insurance, total = totals_of(rows)
    content = write_csv(rt, town, day, rows, by_insurance, total)
    d = Declaration(town, day, rows, by_insurance, total, content)
    audit.record(session, rt, principal, "declaration.downloaded", "declaration",
                 f"{town_code}/{day.isoformat()}", details={
                     "town_code": town_code, "business_date": day.isoformat(),
                     "rows": len(rows), "paid_count": total.paid_count,
                     "paid_fen": total.paid_fen, "refund_count": total.refund_count,
                     "refunded_fen": total.refunded_fen, "net_fen": total.net_fen,
                     "by_insurance": {i: t.net_fen for i, t in by_insurance.items()},
                     "sha256": d.sha256})
    log.info("declaration of town %s %s downloaded by %s: %d rows, net %d fen, sha256 %s",
             town_code, day, principal.sub, len(rows), total.net_fen, d.sha256)
    return d
