"""The public page for checking a paper receipt (``/r/report``): the form and its outcome.

Chinese, for a phone's browser, no script, the check page's style and headers. The form
takes the amount in yuan as typed (converted to fen exactly, ``backend.money.parse_yuan``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.receipts.page import REPORT_URL, env
from backend.receipts.report_schemas import (
    MAX_NOTE_CHARS,
    ReceiptKnownOut,
    ReceiptReportOut,
)
from backend.residents.models import Town, Village

#: what each form field is called on the page, and what to do when it is wrong
LABELS = {"village_code": "村（社区）", "paper_receipt_no": "收据号", "amount_yuan": "金额",
          "paid_on": "缴费日期", "note": "备注"}
HINTS = {
    "village_code": "请从列表中选择收款代办员所在的村（社区）",
    "paper_receipt_no": "请填写收据上的编号（最多 64 个字母、数字或符号，不含空格）",
    "amount_yuan": "请填写元，最多两位小数，大于 0 且不超过 10 万元，例如 380 或 380.50",
    "paid_on": "请填写缴费日期，不能晚于今天，也不能早于三年前",
    "note": f"备注最多 {MAX_NOTE_CHARS} 字，不能含特殊控制字符",
}


@dataclass(frozen=True)
class VillageOption:
    code: str
    name: str


@dataclass(frozen=True)
class TownOption:
    name: str
    villages: list[VillageOption] = field(default_factory=list)


def villages(session: Session) -> list[TownOption]:
    """The district's villages by town (names are public: the publications carry them)."""
    rows = session.execute(
        select(col(Town.name), col(Village.code), col(Village.name))
        .join(Village, col(Village.town_code) == col(Town.code))
        .order_by(col(Town.code), col(Village.code))).all()
    towns: dict[str, TownOption] = {}
    for town_name, code, name in rows:
        towns.setdefault(town_name, TownOption(town_name)).villages.append(
            VillageOption(code, name))
    return list(towns.values())


def form(towns: list[TownOption], today: date, per_hour: int, *,
         values: dict[str, str] | None = None, errors: list[str] | None = None) -> str:
    """The form, with what was typed and a hint for each field that was wrong."""
    problems = {f: HINTS.get(f, "请检查后重新提交") for f in (errors or [])}
    return env.get_template("report.html").render(
        title="核对纸质收据", outcome=None, limited=None, towns=towns, today=today,
        values=values or {}, errors=problems, labels=LABELS, per_hour=per_hour,
        max_note=MAX_NOTE_CHARS, form_url=REPORT_URL)


def outcome(result: ReceiptReportOut | ReceiptKnownOut) -> str:
    title = "收据已登记" if isinstance(result, ReceiptKnownOut) else "已记录举报"
    return env.get_template("report.html").render(
        title=title, outcome=result, limited=None, form_url=REPORT_URL)


def limited(per_hour: int, retry_after_s: int) -> str:
    return env.get_template("report.html").render(
        title="提交太频繁", outcome=None, form_url=REPORT_URL,
        limited={"per_hour": per_hour, "minutes": max(1, (retry_after_s + 59) // 60)})
