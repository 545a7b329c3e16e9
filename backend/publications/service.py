"""The publication files (公示清册, 已缴费名单) of one village, written as XLSX.

Rows come from the agent roster's builder (``backend.agents.roster.village_rows``): the same
assessment, masked names and masked ID numbers; phone numbers are never read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from sqlalchemy.orm import Session

from backend.agents.roster import VillageRow, village_rows
from backend.clock import SHANGHAI
from backend.errors import Forbidden, NotFound
from backend.residents.models import Town, Village
from backend.residents.service import policy_for
from backend.runtime import Runtime
from backend.security.tokens import Principal

Kind = Literal["roster", "paid"]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DISTRICT_ROLES = ("finance", "auditor", "admin")
TITLES = {"roster": "公示清册", "paid": "已缴费名单"}
INSURANCE = {"pension": "养老保险", "medical": "医疗保险"}
STATUS = {"unpaid": "未缴", "pending": "缴费中", "paid": "已缴", "government_paid": "政府代缴",
          "not_eligible": "不参保"}
PAID_BY = {"resident": "本人缴纳", "agent": "代办员代收", "department": "部门代缴"}
REASONS = {"deceased": "已死亡", "employee_pension": "已参加职工养老保险",
           "employee_medical": "已参加职工医疗保险", "under_16": "未满16周岁",
           "over_59": "已满60周岁", "student": "在校学生", "not_born": "未出生"}
MONEY = "0.00"


@dataclass(frozen=True)
class Publication:
    village: Village
    town: Town
    year: int
    kind: Kind
    window_start: date
    window_end: date          # inclusive
    generated_at: datetime    # Asia/Shanghai
    rows: list[VillageRow]

    @property
    def filename(self) -> str:
        return f"{self.village.code}-{self.year}-{self.kind}.xlsx"


def village_in_scope(session: Session, principal: Principal, village_code: str
                     ) -> tuple[Village, Town]:
    """The village and its town, if the caller may publish it: town staff of its town,
    finance, auditors and admins, and the village's own agent."""
    if principal.role not in (*DISTRICT_ROLES, "town_staff", "agent"):
        raise Forbidden("publications are for town staff, the village's agent, finance, "
                        "auditors and admins")
    village = session.get(Village, village_code)
    if village is None:
        raise NotFound(f"no village {village_code}")
    if principal.role == "town_staff" and village.town_code != principal.town_code:
        raise Forbidden("town staff publish the villages of their own town only")
    if principal.role == "agent" and village.code != principal.village_code:
        raise Forbidden("an agent publishes the lists of their own village only")
    town = session.get(Town, village.town_code)
    assert town is not None   # villages.town_code is a foreign key
    return village, town


def publication(rt: Runtime, session: Session, principal: Principal, village_code: str,
                kind: Kind, year: int) -> Publication:
    village, town = village_in_scope(session, principal, village_code)
    days = policy_for(rt, year).deadlines.roster_publication_days
    start = rt.clock.today()
    rows = village_rows(rt, session, village.code, year,
                        status="paid" if kind == "paid" else None)
    return Publication(village=village, town=town, year=year, kind=kind, window_start=start,
                       window_end=start + timedelta(days=days - 1),
                       generated_at=rt.clock.now().astimezone(SHANGHAI), rows=rows)


def _yuan(ws: WriteOnlyWorksheet, fen: int) -> WriteOnlyCell:
    cell = WriteOnlyCell(ws, value=Decimal(fen).scaleb(-2))
    cell.number_format = MONEY
    return cell


def header_rows(p: Publication) -> list[list[object]]:
    days = (p.window_end - p.window_start).days + 1
    return [
        [f"{p.town.name}{p.village.name} {p.year}年度城乡居民基本养老保险、基本医疗保险"
         f"{TITLES[p.kind]}"],
        ["村(居)", f"{p.village.name}（{p.village.code}）"],
        ["镇(街道)", f"{p.town.name}（{p.town.code}）"],
        ["年度", p.year],
        ["类型", TITLES[p.kind]],
        ["公示期", f"{p.window_start.isoformat()} 至 {p.window_end.isoformat()}（{days}天）"],
        ["生成时间", p.generated_at.strftime("%Y-%m-%d %H:%M:%S") + "（北京时间）"],
        [],
    ]


def write_xlsx(p: Publication) -> bytes:
    """The publication as an XLSX, written in streaming (write-only) mode."""
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(TITLES[p.kind])
    for row in header_rows(p):
        ws.append(row)
    total = 0
    if p.kind == "roster":
        ws.append(["序号", "姓名", "身份证号", "养老保险状态", "养老保险应缴(元)",
                   "养老保险缴费方", "医疗保险状态", "医疗保险应缴(元)", "医疗保险缴费方",
                   "备注"])
        for n, r in enumerate(p.rows, 1):
            cells: list[object] = [n, r.name, r.id_number_masked]
            notes = []
            for ins in ("pension", "medical"):
                item = next((i for i in r.items if i.insurance == ins), None)
                if item is None:
                    cells += ["", "", ""]
                    continue
                cells += [STATUS[item.status], _yuan(ws, item.amount_due_fen),
                          PAID_BY.get(item.paid_by or "", "")]
                if item.status in ("unpaid", "pending"):
                    total += item.amount_due_fen
                if item.reason:
                    notes.append(f"{INSURANCE[ins]}：{REASONS.get(item.reason, item.reason)}")
            ws.append([*cells, "；".join(notes)])
        ws.append([])
        ws.append(["合计", f"{len(p.rows)}人", "", "待缴合计(元)", _yuan(ws, total)])
    else:
        ws.append(["序号", "姓名", "身份证号", "险种", "缴费金额(元)", "缴费方"])
        n = 0
        for r in p.rows:
            for item in r.items:
                n += 1
                total += item.amount_due_fen
                ws.append([n, r.name, r.id_number_masked, INSURANCE[item.insurance],
                           _yuan(ws, item.amount_due_fen), PAID_BY.get(item.paid_by or "", "")])
        ws.append([])
        ws.append(["合计", f"{len(p.rows)}人 {n}项", "", "", _yuan(ws, total)])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
