"""The publication files (公示清册, 已缴费名单) of one village, their published versions, and
the files written as XLSX (PDF: ``backend.publications.pdf``).

Rows come from the agent roster's builder (``backend.agents.roster.village_rows``): the same
assessment, masked names and masked ID numbers; phone numbers are never read. Publishing
records the rows as a version (``PublicationVersion``); the files serve the latest published
version, or the live rows marked 草稿 (draft) before anything is published.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer
from sqlmodel import col

from backend import money
from backend.agents.roster import VillageRow, village_rows
from backend.audit.service import record
from backend.auth.models import StaffUser
from backend.clock import SHANGHAI
from backend.errors import Conflict, Forbidden, NotFound
from backend.publications.models import PublicationVersion
from backend.residents.models import Town, Village
from backend.residents.service import policy_for
from backend.runtime import Runtime
from backend.security.tokens import Principal

Kind = Literal["roster", "paid"]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PDF = "application/pdf"
DISTRICT_ROLES = ("finance", "auditor", "admin")
TITLES = {"roster": "公示清册", "paid": "已缴费名单"}
INSURANCE = {"pension": "养老保险", "medical": "医疗保险"}
STATUS = {"unpaid": "未缴", "pending": "缴费中", "paid": "已缴", "government_paid": "政府代缴",
          "not_eligible": "不参保"}
PAID_BY = {"resident": "本人缴纳", "agent": "代办员代收", "department": "部门代缴"}
REASONS = {"deceased": "已死亡", "employee_pension": "已参加职工养老保险",
           "employee_medical": "已参加职工医疗保险", "under_16": "未满16周岁",
           "over_59": "已满60周岁", "student": "在校学生", "not_born": "未出生"}
CHANGE_HEADERS = ["变更", "姓名", "身份证号", "险种", "原状态", "原金额(元)", "原缴费方",
                  "新状态", "新金额(元)", "新缴费方"]
MONEY = "0.00"
ITEM_KEYS = ("status", "amount_due_fen", "paid_by")


class Fen(int):
    """An amount in fen, shown in yuan (a number in XLSX, ``300.00`` in PDF)."""

    def yuan(self) -> str:
        return money.yuan(self)


@dataclass(frozen=True)
class Publication:
    """One file's content: a published version, or the live rows (``version`` None: 草稿)."""

    village: Village
    town: Town
    year: int
    kind: Kind
    window_start: date
    window_end: date          # inclusive
    generated_at: datetime    # Asia/Shanghai
    rows: list[dict[str, Any]]     # snapshot rows (``snapshot``)
    version: int | None = None
    published_at: datetime | None = None
    correction: bool = False
    changes: dict[str, Any] | None = field(default=None)

    def filename(self, ext: str) -> str:
        tag = f"v{self.version}" if self.version else "draft"
        return f"{self.village.code}-{self.year}-{self.kind}-{tag}.{ext}"

    def title_filename(self, ext: str) -> str:
        tag = f"第{self.version}版" if self.version else "草稿"
        return f"{self.village.name}-{self.year}-{TITLES[self.kind]}-{tag}.{ext}"


# ------------------------------------------------------------------------------ scope


def village_in_scope(session: Session, principal: Principal, village_code: str
                     ) -> tuple[Village, Town]:
    """The village and its town, if the caller may read its publications: town staff of its
    town, finance, auditors and admins, and the village's own agent."""
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


# ------------------------------------------------------------------------- snapshots


def snapshot(rows: list[VillageRow]) -> list[dict[str, Any]]:
    """The rows as a version keeps them: JSON values, masked name and ID number only."""
    return [{"resident_id": r.resident_id, "name": r.name, "id_masked": r.id_number_masked,
             "items": [{"insurance": i.insurance, "status": i.status,
                        "amount_due_fen": i.amount_due_fen, "paid_by": i.paid_by,
                        "reason": i.reason} for i in r.items]} for r in rows]


def content_hash(rows: list[dict[str, Any]]) -> str:
    """SHA-256 of the rows' canonical JSON: equal rows, equal hash."""
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _person(row: dict[str, Any]) -> dict[str, Any]:
    return {"resident_id": row["resident_id"], "name": row["name"],
            "id_masked": row["id_masked"]}


def _item(item: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if item is None else {k: item[k] for k in ITEM_KEYS}


def diff(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, Any]:
    """What changed from ``old`` to ``new``: residents added and removed, and per insurance
    of a resident on both, the item whose state, amount or payer differs (old → new; an item
    only on one side has null on the other). A resident on both whose (masked) name or ID
    number was corrected is a change too, with ``insurance`` null and the person old → new:
    else a version made for such a correction would list nothing changed."""
    before = {r["resident_id"]: r for r in old}
    after = {r["resident_id"]: r for r in new}
    changed = []
    for rid, row in after.items():
        if rid not in before:
            continue
        if _person(before[rid]) != _person(row):
            changed.append({**_person(row), "insurance": None, "old": _person(before[rid]),
                            "new": _person(row)})
        was = {i["insurance"]: _item(i) for i in before[rid]["items"]}
        now = {i["insurance"]: _item(i) for i in row["items"]}
        for insurance in INSURANCE:
            if was.get(insurance) != now.get(insurance):
                changed.append({**_person(row), "insurance": insurance,
                                "old": was.get(insurance), "new": now.get(insurance)})
    return {"added": [_person(r) for rid, r in after.items() if rid not in before],
            "removed": [_person(r) for rid, r in before.items() if rid not in after],
            "changed": changed}


# -------------------------------------------------------------------------- versions


def _window(rt: Runtime, year: int) -> tuple[date, date]:
    """The window a publication made today opens: the policy's days from the business day."""
    days = policy_for(rt, year).deadlines.roster_publication_days
    start = rt.clock.today()
    return start, start + timedelta(days=days - 1)


def versions(session: Session, village_code: str, year: int, kind: str | None = None
             ) -> list[PublicationVersion]:
    """The versions without their rows (a 5,000-resident roster's are a megabyte each)."""
    q = select(PublicationVersion).options(defer(PublicationVersion.rows)).where(  # type: ignore[arg-type]
        col(PublicationVersion.village_code) == village_code,
        col(PublicationVersion.year) == year)
    if kind is not None:
        q = q.where(col(PublicationVersion.kind) == kind)
    return list(session.scalars(q.order_by(col(PublicationVersion.kind),
                                           col(PublicationVersion.version))))


def _latest(session: Session, village_code: str, year: int, kind: str
            ) -> PublicationVersion | None:
    return session.scalars(
        select(PublicationVersion).where(col(PublicationVersion.village_code) == village_code,
                                         col(PublicationVersion.year) == year,
                                         col(PublicationVersion.kind) == kind)
        .order_by(col(PublicationVersion.version).desc()).limit(1)).first()


def publish(rt: Runtime, session: Session, principal: Principal, village_code: str,
            kind: Kind, year: int) -> PublicationVersion:
    """Record the village's list as it stands as the next version, and audit it.

    The first version opens the window (公示期: the policy's days from the business day); a
    version published within the latest one's window is a correction and keeps that window;
    one published after it closed opens a new window. Nothing changed: 409."""
    if principal.role not in ("town_staff", "finance"):
        raise Forbidden("town staff of the village's town and finance publish the lists")
    village, _ = village_in_scope(session, principal, village_code)
    rows = snapshot(village_rows(rt, session, village.code, year,
                                 paid_only=kind == "paid"))
    digest = content_hash(rows)
    latest = _latest(session, village.code, year, kind)
    if latest is not None and latest.content_hash == digest:
        raise Conflict(f"nothing changed since version {latest.version} of the {kind} of "
                       f"{village.code} for {year}", code="publication_unchanged")
    staff_id = _staff_id(principal)
    staff = session.get(StaffUser, staff_id) if staff_id is not None else None
    today = rt.clock.today()
    correction = latest is not None and latest.window_start <= today <= latest.window_end
    if latest is not None and correction:
        start, end = latest.window_start, latest.window_end
    else:
        start, end = _window(rt, year)
    version = PublicationVersion(
        village_code=village.code, year=year, kind=kind,
        version=(latest.version + 1) if latest else 1, published_at=rt.clock.now(),
        published_by_id=staff.id if staff else None,
        published_by=staff.username if staff else principal.sub[:64],
        window_start=start, window_end=end, correction=correction, content_hash=digest,
        residents=len(rows), rows=rows,
        changes=diff(latest.rows, rows) if latest is not None else None)
    session.add(version)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"another version of the {kind} of {village.code} for {year} was "
                       f"published at the same time: read the versions and retry",
                       code="publication_version_taken") from None
    counts = change_counts(version.changes)
    record(session, rt, principal, "publication.publish", "publication",
           f"{village.code}/{year}/{kind}/{version.version}",
           details={"village_code": village.code, "year": year, "kind": kind,
                    "version": version.version, "correction": correction,
                    "window_start": start, "window_end": end, "residents": len(rows),
                    "content_hash": digest, **({"changes": counts} if counts else {})})
    return version


def _staff_id(principal: Principal) -> int | None:
    return int(principal.sub.removeprefix("staff:")) if principal.sub.startswith(
        "staff:") else None


def change_counts(changes: dict[str, Any] | None) -> dict[str, int] | None:
    if changes is None:
        return None
    return {k: len(changes[k]) for k in ("added", "removed", "changed")}


def version_count(session: Session, village_code: str, year: int, kind: str) -> int:
    return session.scalar(select(func.count()).select_from(PublicationVersion).where(
        col(PublicationVersion.village_code) == village_code,
        col(PublicationVersion.year) == year, col(PublicationVersion.kind) == kind)) or 0


# ---------------------------------------------------------------------- the file's content


def publication(rt: Runtime, session: Session, principal: Principal, village_code: str,
                kind: Kind, year: int, version: int | None = None) -> Publication:
    """The file's content: version ``version``, else the latest published one, else the
    live rows as a draft (草稿) with the window a publication today would open."""
    village, town = village_in_scope(session, principal, village_code)
    policy_for(rt, year)     # a year without a policy: 422, drafts and versions alike
    generated = rt.clock.now().astimezone(SHANGHAI)
    if version is not None:
        found = session.scalars(select(PublicationVersion).where(
            col(PublicationVersion.village_code) == village.code,
            col(PublicationVersion.year) == year, col(PublicationVersion.kind) == kind,
            col(PublicationVersion.version) == version)).first()
        if found is None:
            raise NotFound(f"no version {version} of the {kind} of {village.code} for {year}")
    else:
        found = _latest(session, village.code, year, kind)
    if found is not None:
        return Publication(village=village, town=town, year=year, kind=kind,
                           window_start=found.window_start, window_end=found.window_end,
                           generated_at=generated, rows=found.rows, version=found.version,
                           published_at=found.published_at.astimezone(SHANGHAI),
                           correction=found.correction, changes=found.changes)
    start, end = _window(rt, year)
    rows = snapshot(village_rows(rt, session, village.code, year,
                                 paid_only=kind == "paid"))
    return Publication(village=village, town=town, year=year, kind=kind, window_start=start,
                       window_end=end, generated_at=generated, rows=rows)


def _window_text(p: Publication) -> str:
    days = (p.window_end - p.window_start).days + 1
    text = f"{p.window_start.isoformat()} 至 {p.window_end.isoformat()}（{days}天）"
    return text if p.version else f"尚未公示（今日公示则为 {text}）"


def title(p: Publication) -> str:
    return (f"{p.town.name}{p.village.name} {p.year}年度城乡居民基本养老保险、基本医疗保险"
            f"{TITLES[p.kind]}" + ("" if p.version else "（草稿）"))


def header_rows(p: Publication) -> list[list[object]]:
    """The lines above the table: what, where, which version, the window, when."""
    if p.version:
        edition = f"第{p.version}版" + ("（公示期内更正）" if p.correction else "")
        published = p.published_at.strftime("%Y-%m-%d %H:%M:%S") + "（北京时间）" \
            if p.published_at else ""
    else:
        edition, published = "草稿（尚未公示，不作为公示依据）", "尚未公示"
    return [
        [title(p)],
        ["村(居)", f"{p.village.name}（{p.village.code}）"],
        ["镇(街道)", f"{p.town.name}（{p.town.code}）"],
        ["年度", p.year],
        ["类型", TITLES[p.kind]],
        ["版本", edition],
        ["公示期", _window_text(p)],
        ["公示时间", published],
        ["生成时间", p.generated_at.strftime("%Y-%m-%d %H:%M:%S") + "（北京时间）"],
        [],
    ]


def table(p: Publication) -> tuple[list[str], list[list[object]], list[object]]:
    """The list as a table: its header, one row per resident (roster) or paid item (paid),
    and the closing total row. Amounts are ``Fen``."""
    total = 0
    body: list[list[object]] = []
    if p.kind == "roster":
        head = ["序号", "姓名", "身份证号", "养老保险状态", "养老保险应缴(元)", "养老保险缴费方",
                "医疗保险状态", "医疗保险应缴(元)", "医疗保险缴费方", "备注"]
        for n, r in enumerate(p.rows, 1):
            cells: list[object] = [n, r["name"], r["id_masked"]]
            notes = []
            items = {i["insurance"]: i for i in r["items"]}
            for ins in INSURANCE:
                item = items.get(ins)
                if item is None:
                    cells += ["", "", ""]
                    continue
                cells += [STATUS[item["status"]], Fen(item["amount_due_fen"]),
                          PAID_BY.get(item["paid_by"] or "", "")]
                if item["status"] in ("unpaid", "pending"):
                    total += item["amount_due_fen"]
                if item["reason"]:
                    notes.append(f"{INSURANCE[ins]}：{REASONS.get(item['reason'], item['reason'])}")
            body.append([*cells, "；".join(notes)])
        return head, body, ["合计", f"{len(p.rows)}人", "", "待缴合计(元)", Fen(total)]
    head = ["序号", "姓名", "身份证号", "险种", "缴费金额(元)", "缴费方"]
    for r in p.rows:
        for item in r["items"]:
            total += item["amount_due_fen"]
            body.append([len(body) + 1, r["name"], r["id_masked"], INSURANCE[item["insurance"]],
                         Fen(item["amount_due_fen"]), PAID_BY.get(item["paid_by"] or "", "")])
    return head, body, ["合计", f"{len(p.rows)}人 {len(body)}项", "", "", Fen(total)]


def _item_cells(item: dict[str, Any] | None) -> list[object]:
    if item is None:
        return ["", "", ""]
    return [STATUS[item["status"]], Fen(item["amount_due_fen"]),
            PAID_BY.get(item["paid_by"] or "", "")]


def change_table(p: Publication) -> list[list[object]]:
    """The changes against the version before, one line per resident added or removed and
    per item changed (old → new)."""
    changes = p.changes or {}
    rows: list[list[object]] = []
    rows += [["新增", r["name"], r["id_masked"], "", "", "", "", "", "", ""]
             for r in changes.get("added", [])]
    rows += [["移除", r["name"], r["id_masked"], "", "", "", "", "", "", ""]
             for r in changes.get("removed", [])]
    for c in changes.get("changed", []):
        if c["insurance"] is None:     # the name or ID number corrected: was, then is
            rows += [[f"更正（{was}）", person["name"], person["id_masked"], "姓名/身份证号",
                      "", "", "", "", "", ""]
                     for was, person in (("原", c["old"]), ("新", c["new"]))]
        else:
            rows.append(["更改", c["name"], c["id_masked"], INSURANCE[c["insurance"]],
                         *_item_cells(c["old"]), *_item_cells(c["new"])])
    return rows


def change_heading(p: Publication) -> str:
    counts = change_counts(p.changes) or {"added": 0, "removed": 0, "changed": 0}
    return (f"第{p.version}版相对第{(p.version or 1) - 1}版的变更：新增{counts['added']}人，"
            f"移除{counts['removed']}人，更改{counts['changed']}项")


def _cells(ws: WriteOnlyWorksheet, row: list[object]) -> list[object]:
    """A row's cells: amounts as yuan numbers; text kept as text. openpyxl takes any string
    starting with ``=`` for a formula — a name or village name so written would be a
    formula in the published file (spreadsheet injection) — so such text is typed as a
    string."""
    out: list[object] = []
    for v in row:
        if isinstance(v, Fen):
            cell = WriteOnlyCell(ws, value=Decimal(int(v)).scaleb(-2))
            cell.number_format = MONEY
            out.append(cell)
        elif isinstance(v, str) and v.startswith("="):
            cell = WriteOnlyCell(ws, value=v)
            cell.data_type = "s"
            out.append(cell)
        else:
            out.append(v)
    return out


def write_xlsx(p: Publication) -> bytes:
    """The publication as an XLSX, written in streaming (write-only) mode; a version with a
    version before it has a second sheet, 变更, listing what changed."""
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(TITLES[p.kind])
    for line in header_rows(p):
        ws.append(_cells(ws, line))
    head, body, total = table(p)
    ws.append(_cells(ws, list(head)))
    for row in body:
        ws.append(_cells(ws, row))
    ws.append([])
    ws.append(_cells(ws, total))
    if p.changes is not None:
        changes = wb.create_sheet("变更")
        changes.append(_cells(changes, [change_heading(p)]))
        changes.append(CHANGE_HEADERS)
        for row in change_table(p):
            changes.append(_cells(changes, row))
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
