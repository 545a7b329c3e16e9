"""The finance desk (财务工作台): server-rendered pages under /desk/ for finance, town staff,
auditors and admin.

Plain HTML forms, no script: every page works in any browser, on a laptop or a phone. Each
GET reads in one unit of work; each POST checks the session's CSRF token and runs its action
in one unit of work, so a refused action writes nothing, then redirects (303) back to its
page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from backend.auth import service as auth
from backend.db import unit_of_work
from backend.declarations import service as declarations
from backend.deps import ClientIp, RuntimeDep
from backend.desk import charts, services
from backend.desk.render import CHANNEL_NAMES, page
from backend.desk.session import (
    DESK_ROLES,
    LOGIN_COOKIE,
    DeskRefusal,
    DeskUser,
    LoginRequired,
    check_csrf,
    clear_session,
    current_user,
    new_login_nonce,
    require_acting,
    require_district,
    role_refusal,
    set_login_nonce,
    set_session,
)
from backend.errors import AppError, RateLimited, Unauthorized
from backend.ledger import closing
from backend.ledger.daily import daily_ledger, ledger_scope
from backend.receipts import reports as receipt_reports
from backend.residents.models import Town, Village
from backend.runtime import Runtime

router = APIRouter(prefix="/desk", include_in_schema=False)

_CODE = re.compile(r"^[0-9A-Za-z_-]{1,32}$")
# How far back the home page looks for cash not yet remitted.
OVERDUE_LOOKBACK_DAYS = 14
MAX_REASON = 200
# a refund's reason is what the payer's wallet shows with it (WeChat takes 80 characters)
MAX_REFUND_REASON = 80

LOGIN_MESSAGES = {
    "login": "请先登录。",
    "expired": "登录已过期，请重新登录。",
    "revoked": "账号已停用或登录已被撤销，请重新登录。",
    "logout": "已退出登录。",
}
DONE_MESSAGES = {
    "uploaded": "对账单已上传并完成对账。",
    "fetched": "已从渠道获取对账单并完成对账。",
    "resolved": "处理意见已提交，等待另一位财务人员复核。",
    "approved": "已复核：差异已解决，以渠道为准的更正已记账。",
    "refund_requested": "退款申请已提交，等待另一位财务人员审批。",
    "refund_approved": "退款已审批：原路退回的由系统发起退款，现金退款由代办员退还。",
    "refund_rejected": "退款申请已驳回。",
    "closed": "已日结，该日已锁定。",
    "report_closed": "收据举报已关闭，不再计入待处理。",
}


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    href: str
    district: bool      # only for finance, auditors and admin


NAV = (
    NavItem("home", "首页", "/desk/", False),
    NavItem("ledger", "日报解台账", "/desk/ledger", False),
    NavItem("progress", "进度", "/desk/progress", False),
    NavItem("receipt_reports", "收据举报", "/desk/receipt-reports", False),
    NavItem("statements", "对账单", "/desk/statements", True),
    NavItem("reconciliation", "对账结果", "/desk/reconciliation", True),
    NavItem("refunds", "退款审批", "/desk/refunds", True),
    NavItem("day_close", "日结", "/desk/day-close", True),
)


# ------------------------------------------------------------------------------- helpers

def _user(request: Request, rt: Runtime) -> DeskUser:
    return current_user(request, rt)


def page_context(request: Request, user: DeskUser | None, active: str, **extra: Any
             ) -> dict[str, Any]:
    done = request.query_params.get("done")
    nav = [n for n in NAV if user is not None and (user.sees_district or not n.district)]
    return {"user": user, "nav": nav, "active": active,
            "notice": DONE_MESSAGES.get(done or ""), "channel_names": CHANNEL_NAMES,
            **extra}


def _day(value: str | None, rt: Runtime, field: str = "日期") -> date:
    if not value:
        return rt.clock.today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise DeskRefusal(422, "日期格式不对",
                          f"{field}应为 年-月-日，例如 2020-11-02；收到的是 {value[:20]!r}。"
                          ) from None


def _code(value: str | None, field: str) -> str | None:
    if not value:
        return None
    if not _CODE.fullmatch(value):
        raise DeskRefusal(422, "参数不对",
                          f"{field}代码只能是字母、数字、下划线或连字符（1–32 位）。")
    return value


def _reason(value: str, limit: int = MAX_REASON) -> str:
    reason = value.strip()
    if not reason:
        raise DeskRefusal(422, "请填写原因",
                          "处理差异、申请或驳回退款、关闭收据举报时必须写明原因。")
    if len(reason) > limit:
        raise DeskRefusal(422, "原因太长", f"原因最多 {limit} 个字。")
    return reason


#: What the desk says first when a service refuses, by the error's code; the service's own
#: sentence follows.
REFUSALS = {
    "same_approver": "须由另一位财务人员操作：不能复核或审批自己提交的处理或申请。",
    "discrepancy_not_open": "这条差异已不在待处理状态（已处理、已复核或在等待次日对账单）。",
    "discrepancy_not_proposed": "这条差异没有待复核的处理意见（可能已被他人复核）。",
    "cannot_recover": "无法按渠道记录补记这笔收款。",
    "statement_not_ready": "渠道还没有提供这一天的对账单（微信支付次日 10:00 后、支付宝次日"
                           "上午发布；没有交易的日子没有账单）。",
    "statement_already_loaded": "这一天该渠道的对账单已经对过账，请到对账结果中逐条处理差异。",
    "invalid_statement": "对账单文件无法识别，未导入任何内容。",
    "payload_too_large": "对账单文件太大。",
    "channel_error": "获取对账单时渠道出错，请稍后重试。",
    "refund_not_pending": "这笔退款已不是待审批状态。",
    "receipt_report_not_open": "这条收据举报已不是待处理状态（已匹配或已被关闭）。",
    "refund_exceeds_refundable": "退款金额超过了可退金额。",
    "order_not_refundable": "这个订单没有可退的款项。",
    "day_not_over": "这一天还没有结束，不能日结。",
    "day_closed": "这一天已经日结。",
    "day_not_closed": "这一天还没有日结：日结后才能生成申报文件。",
    "declaration_mismatch": "申报文件与台账不一致，未生成；已记录日志，请联系技术人员。",
    "open_discrepancies": "这一天还有未处理完的对账差异，处理并复核后才能日结。",
    "not_found": "找不到要操作的记录。",
    "validation_error": "填写的内容不对。",
    "forbidden": "无权进行这一操作。",
}


def _refused(exc: AppError) -> DeskRefusal:
    lead = REFUSALS.get(exc.code)
    return DeskRefusal(exc.status, "操作未完成",
                       f"{lead}（{exc.message}）" if lead else exc.message)


def _act(rt: Runtime, action: Callable[[Session], object]) -> None:
    """Run one action in its own unit of work: an error rolls all of it back."""
    try:
        with unit_of_work(rt.sessions) as session:
            action(session)
    except services.NotAvailable:
        raise DeskRefusal(503, "功能尚未开放", "这一功能还在建设中，暂时不能使用。") from None
    except AppError as exc:
        raise _refused(exc) from None


def _call(action: Callable[[], Any]) -> Any:
    """Run an action whose service keeps its own unit of work (never inside another)."""
    try:
        return action()
    except AppError as exc:
        raise _refused(exc) from None


def _back(path: str, **params: str) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(path + (f"?{query}" if query else ""), status_code=303)


def _places(session: Session, user: DeskUser) -> tuple[dict[str, str], dict[str, Village]]:
    """Town names and villages the user may filter by."""
    towns = select(Town).order_by(col(Town.code))
    villages = select(Village).order_by(col(Village.code))
    if not user.sees_district:
        towns = towns.where(col(Town.code) == user.principal.town_code)
        villages = villages.where(col(Village.town_code) == user.principal.town_code)
    return ({t.code: t.name for t in session.scalars(towns)},
            {v.code: v for v in session.scalars(villages)})


def _try(call: Callable[[], Any]) -> tuple[Any, bool]:
    """(answer, available) of an adapter call."""
    try:
        return call(), True
    except services.NotAvailable:
        return None, False


# ---------------------------------------------------------------------------- login/out

@router.get("", response_class=HTMLResponse)
def desk_root() -> RedirectResponse:
    return RedirectResponse("/desk/", status_code=307)


def _login_page(request: Request, rt: Runtime, *, message: str | None = None,
                error: str | None = None, username: str = "", status: int = 200) -> Response:
    nonce = new_login_nonce()
    response = page(request, "login.html", page_context(
        request, None, "login", message=message, error=error, username=username, csrf=nonce),
        status_code=status)
    set_login_nonce(response, rt, nonce)
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, rt: RuntimeDep, m: str | None = None) -> Response:
    try:
        _user(request, rt)
        return RedirectResponse("/desk/", status_code=303)
    except (LoginRequired, DeskRefusal):
        pass
    return _login_page(request, rt, message=LOGIN_MESSAGES.get(m or ""))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, rt: RuntimeDep, ip: ClientIp,
                username: Annotated[str, Form(max_length=64)] = "",
                password: Annotated[str, Form(max_length=256)] = "",
                csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    # double submit: the form's token must equal the login cookie's, and there must be one
    # (a form posted from another site arrives without the SameSite=Strict cookie)
    check_csrf(request.cookies.get(LOGIN_COOKIE) or "", csrf)
    username = username.strip()
    if not username or not password:
        return _login_page(request, rt, error="请输入用户名和密码。", username=username,
                           status=422)
    try:
        delay = await run_in_threadpool(auth.login_throttle, rt, username, ip)
        if delay:
            await anyio.sleep(delay)   # as the API's login: waiting ties up no thread

        def check() -> tuple[str, str]:
            with unit_of_work(rt.sessions) as session:
                token, user = auth.login_staff(rt, session, username, password, ip)
                return token, user.role

        token, role = await run_in_threadpool(check)
    except RateLimited:
        return _login_page(request, rt, error="登录失败次数过多，请几分钟后再试。",
                           username=username, status=429)
    except Unauthorized:
        return _login_page(request, rt, error="用户名或密码错误。", username=username,
                           status=401)
    if role not in DESK_ROLES:
        raise role_refusal(role)
    response = RedirectResponse("/desk/", status_code=303)
    set_session(response, rt, token)
    return response


@router.post("/logout")
def logout(request: Request, rt: RuntimeDep,
           csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    response = RedirectResponse("/desk/login?m=logout", status_code=303)
    clear_session(response, rt)
    return response


# ---------------------------------------------------------------------------------- home

@router.get("/", response_class=HTMLResponse)
def home(request: Request, rt: RuntimeDep) -> Response:
    user = _user(request, rt)
    today = rt.clock.today()
    town, _ = ledger_scope(user.principal, None, None)
    with unit_of_work(rt.sessions) as session:
        towns, villages = _places(session, user)
        ledger = daily_ledger(session, today, today=today, town=town)
        overdue = []
        for back in range(2, OVERDUE_LOOKBACK_DAYS + 1):
            day = today - timedelta(days=back)
            overdue += [(day, row) for row in
                        daily_ledger(session, day, today=today, town=town).rows if row.overdue]
        todo: dict[str, tuple[Any, bool]] = {}
        if user.sees_district:
            p = user.principal
            todo["refunds"] = _try(lambda: len(services.list_refunds(
                session, rt, p, status="requested")))
            todo["discrepancies"] = _try(lambda: services.waiting_discrepancies(
                session, rt, p))
            todo["yesterday"] = _try(lambda: services.day_close_state(
                session, rt, p, today - timedelta(days=1)))
    return page(request, "home.html", page_context(
        request, user, "home", today=today, ledger=ledger, overdue=overdue, todo=todo,
        towns=towns, villages=villages))


# ------------------------------------------------------------------- the daily ledger

@router.get("/ledger", response_class=HTMLResponse)
def ledger_page(request: Request, rt: RuntimeDep, date: str | None = None,
                town: str | None = None, village: str | None = None) -> Response:
    user = _user(request, rt)
    day = _day(date, rt)
    asked_town, asked_village = _code(town, "乡镇"), _code(village, "村")
    try:
        scoped_town, scoped_village = ledger_scope(user.principal, asked_town, asked_village)
    except AppError:
        raise DeskRefusal(403, "无权查看", "乡镇工作人员只能查看本镇的台账。") from None
    with unit_of_work(rt.sessions) as session:
        towns, villages = _places(session, user)
        ledger = closing.ledger_of(session, rt.clock, day, town=scoped_town,
                                   village=scoped_village)
    shown_villages = {code: v for code, v in villages.items()
                      if not scoped_town or v.town_code == scoped_town}
    return page(request, "ledger.html", page_context(
        request, user, "ledger", ledger=ledger, day=day, today=rt.clock.today(),
        prev_day=day - timedelta(days=1), next_day=day + timedelta(days=1),
        town=scoped_town, village=scoped_village, towns=towns, villages=villages,
        shown_villages=shown_villages))


# ---------------------------------------------------------------------------- progress

MEASURE_NAMES = {"medical": "医疗保险"}


def _measure_name(key: str, min_age: int | None, max_age: int | None) -> str:
    if key in MEASURE_NAMES:
        return MEASURE_NAMES[key]
    return f"养老保险 {min_age}–{max_age} 岁"


def _year(value: str | None, rt: Runtime) -> int:
    if not value:
        return rt.policy.coverage_year
    if not re.fullmatch(r"[0-9]{4}", value):
        raise DeskRefusal(422, "年度不对",
                          f"年度应为四位数字，例如 2021；收到的是 {value[:20]!r}。")
    return int(value)


@router.get("/progress", response_class=HTMLResponse)
def progress_page(request: Request, rt: RuntimeDep, year: str | None = None,
                  town: str | None = None) -> Response:
    user = _user(request, rt)
    asked_year, asked_town = _year(year, rt), _code(town, "乡镇")
    try:
        with unit_of_work(rt.sessions) as session:
            towns, _ = _places(session, user)
            view = services.progress_view(session, rt, user.principal, year=asked_year,
                                          town=asked_town)
    except AppError as exc:
        if exc.code == "forbidden":
            raise DeskRefusal(403, "无权查看", "乡镇工作人员只能查看本镇的进度。") from None
        if exc.code == "not_found":
            raise DeskRefusal(404, "找不到乡镇", f"没有代码为 {asked_town} 的乡镇。") from None
        raise DeskRefusal(exc.status, "无法显示进度",
                          f"{asked_year} 年度没有本区的征缴政策（{exc.message}）。") from None
    p = view.progress
    names = {t.key: _measure_name(t.key, t.min_age, t.max_age) for t in p.targets}
    rate_charts = []
    for target in p.targets:
        def of(measures: list[Any], key: str = target.key) -> Any:
            return next(m for m in measures if m.key == key)

        rows: list[tuple[str, Any, bool]] = []
        if view.town is None:       # the district: one bar per town
            rows = [(t.name, of(t.measures), False) for t in p.towns]
        else:                       # one town: the town, then its villages furthest behind
            for t in p.towns:
                rows.append((t.name + "合计", of(t.measures), True))
                rows += [(v.name, of(v.measures), False) for v in t.villages]
        rate_charts.append(charts.rate_chart(target.key, f"{names[target.key]} 缴费率", rows,
                                             target.target_bp))
    return page(request, "progress.html", page_context(
        request, user, "progress", view=view, year=asked_year, town=view.town, towns=towns,
        names=names, rate_charts=rate_charts, money=charts.money_chart(view.days),
        percent=charts.percent))


# ------------------------------------------------------------------------- statements

@router.get("/statements", response_class=HTMLResponse)
def statements_page(request: Request, rt: RuntimeDep, date: str | None = None) -> Response:
    user = _user(request, rt)
    require_district(user)
    day = _day(date, rt) if date else rt.clock.today() - timedelta(days=1)
    with unit_of_work(rt.sessions) as session:
        runs, available = _try(lambda: services.list_runs(session, rt, user.principal,
                                                          day=day))
    return page(request, "statements.html", page_context(
        request, user, "statements", day=day, runs=runs or [], available=available,
        channels=services.STATEMENT_CHANNELS, fetchable=services.FETCHABLE_CHANNELS))


def _channel(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        names = "、".join(CHANNEL_NAMES.get(c, c) for c in allowed)
        raise DeskRefusal(422, "渠道不对", f"请选择渠道：{names}。")
    return value


@router.post("/statements/upload")
def statements_upload(request: Request, rt: RuntimeDep,
                            file: Annotated[UploadFile, File()],
                            channel: Annotated[str, Form(max_length=16)] = "",
                            date: Annotated[str, Form(max_length=10)] = "",
                            csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    require_acting(user)
    channel = _channel(channel, services.STATEMENT_CHANNELS)
    day = _day(date, rt)
    limit = rt.settings.statement_max_bytes
    if file.size is not None and file.size > limit:
        raise DeskRefusal(413, "文件太大", f"对账单文件不能超过 {limit // (1024 * 1024)} MB。")
    if not file.size:
        raise DeskRefusal(422, "请选择文件", "没有收到对账单文件，请选择文件后再上传。")
    filename = file.filename or "statement"
    file.file.seek(0)
    run_id = _call(lambda: services.upload_statement(
        rt, user.principal, channel=channel, day=day, filename=filename, stream=file.file))
    return _back(f"/desk/reconciliation/{run_id}", done="uploaded")


@router.post("/statements/fetch")
def statements_fetch(request: Request, rt: RuntimeDep,
                     channel: Annotated[str, Form(max_length=16)] = "",
                     date: Annotated[str, Form(max_length=10)] = "",
                     csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    require_acting(user)
    channel = _channel(channel, services.FETCHABLE_CHANNELS)
    day = _day(date, rt)
    run_id = _call(lambda: services.fetch_statement(rt, user.principal, channel=channel,
                                                    day=day))
    return _back(f"/desk/reconciliation/{run_id}", done="fetched")


# --------------------------------------------------------------------- reconciliation

@router.get("/reconciliation", response_class=HTMLResponse)
def runs_page(request: Request, rt: RuntimeDep, date: str | None = None) -> Response:
    user = _user(request, rt)
    require_district(user)
    day = _day(date, rt) if date else None
    with unit_of_work(rt.sessions) as session:
        runs, available = _try(lambda: services.list_runs(session, rt, user.principal,
                                                          day=day))
    return page(request, "runs.html", page_context(
        request, user, "reconciliation", day=day, runs=runs or [], available=available))


@router.get("/reconciliation/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, rt: RuntimeDep, run_id: int) -> Response:
    user = _user(request, rt)
    require_district(user)
    try:
        with unit_of_work(rt.sessions) as session:
            detail, available = _try(lambda: services.get_run(session, rt, user.principal,
                                                              run_id))
    except AppError as exc:
        raise DeskRefusal(exc.status, "找不到对账批次", exc.message) from None
    return page(request, "run.html", page_context(
        request, user, "reconciliation", run_id=run_id, detail=detail, available=available,
        sides=services.RESOLUTION_SIDES))


@router.post("/discrepancies/{discrepancy_id}/resolve")
def discrepancy_resolve(request: Request, rt: RuntimeDep, discrepancy_id: int,
                        side: Annotated[str, Form(max_length=16)] = "",
                        reason: Annotated[str, Form(max_length=1000)] = "",
                        run: Annotated[int, Form()] = 0,
                        csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    require_acting(user)
    if side not in services.RESOLUTION_SIDES:
        raise DeskRefusal(422, "请选择以哪一方为准",
                          "处理差异时请选择“以渠道为准”或“以我方为准”。")
    text = _reason(reason)
    _act(rt, lambda s: services.resolve_discrepancy(s, rt, user.principal, discrepancy_id,
                                                    side=side, reason=text))
    return _back(f"/desk/reconciliation/{run}" if run else "/desk/reconciliation",
                 done="resolved")


@router.post("/discrepancies/{discrepancy_id}/approve")
def discrepancy_approve(request: Request, rt: RuntimeDep, discrepancy_id: int,
                        run: Annotated[int, Form()] = 0,
                        csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    require_acting(user)
    _act(rt, lambda s: services.approve_discrepancy(s, rt, user.principal, discrepancy_id))
    return _back(f"/desk/reconciliation/{run}" if run else "/desk/reconciliation",
                 done="approved")


# ---------------------------------------------------------------------------- refunds

REFUND_FILTERS = {"requested": "待审批", "all": "全部"}


@router.get("/refunds", response_class=HTMLResponse)
def refunds_page(request: Request, rt: RuntimeDep, status: str = "requested") -> Response:
    user = _user(request, rt)
    require_district(user)
    if status not in REFUND_FILTERS:
        status = "requested"
    with unit_of_work(rt.sessions) as session:
        refunds, available = _try(lambda: services.list_refunds(
            session, rt, user.principal, status=None if status == "all" else status))
    return page(request, "refunds.html", page_context(
        request, user, "refunds", refunds=refunds or [], available=available, status=status,
        filters=REFUND_FILTERS))


@router.post("/refunds/request")
def refund_request(request: Request, rt: RuntimeDep,
                   order_no: Annotated[str, Form(max_length=64)] = "",
                   reason: Annotated[str, Form(max_length=1000)] = "",
                   csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    require_acting(user)
    order_no = order_no.strip()
    if not order_no:
        raise DeskRefusal(422, "请填写订单号", "申请退款需要填写订单号。")
    text = _reason(reason, MAX_REFUND_REASON)
    _call(lambda: services.request_refund(rt, user.principal, order_no=order_no, reason=text))
    return _back("/desk/refunds", done="refund_requested")


@router.post("/refunds/{refund_id}/approve")
def refund_approve(request: Request, rt: RuntimeDep, refund_id: int,
                   csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    require_acting(user)
    _call(lambda: services.approve_refund(rt, user.principal, refund_id))
    return _back("/desk/refunds", done="refund_approved")


@router.post("/refunds/{refund_id}/reject")
def refund_reject(request: Request, rt: RuntimeDep, refund_id: int,
                  reason: Annotated[str, Form(max_length=1000)] = "",
                  csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    require_acting(user)
    text = _reason(reason)
    _call(lambda: services.reject_refund(rt, user.principal, refund_id, reason=text))
    return _back("/desk/refunds", done="refund_rejected")


# -------------------------------------------------------------------- receipt reports

#: who closes a resident's report of a paper receipt: not auditors (they watch)
REPORT_CLOSERS = ("town_staff", "finance", "admin")
#: the open reports one page shows (oldest first); the API pages through more
REPORTS_SHOWN = 500
MAX_CLOSE_REASON = 500


@router.get("/receipt-reports", response_class=HTMLResponse)
def receipt_reports_page(request: Request, rt: RuntimeDep,
                         town: str | None = None) -> Response:
    """Residents' open reports of paper receipts, per village, with a close form."""
    user = _user(request, rt)
    asked = _code(town, "乡镇")
    try:
        with unit_of_work(rt.sessions) as session:
            towns, villages = _places(session, user)
            scope = receipt_reports.reading_scope(session, user.principal, asked, None)
            rows = receipt_reports.listing(session, town=scope, status="open",
                                           limit=REPORTS_SHOWN + 1)
            items = [(r, receipt_reports.note_of(rt, r.report)) for r in rows[:REPORTS_SHOWN]]
    except AppError as exc:
        if exc.code == "forbidden":
            raise DeskRefusal(403, "无权查看", "乡镇工作人员只能查看本镇的收据举报。") from None
        raise DeskRefusal(404, "找不到乡镇", f"没有代码为 {asked} 的乡镇。") from None
    by_village: dict[str, list[Any]] = {}
    for listed, note in items:
        by_village.setdefault(listed.report.village_code, []).append((listed, note))
    return page(request, "receipt_reports.html", page_context(
        request, user, "receipt_reports", towns=towns, villages=villages, town=scope,
        by_village=by_village, more=len(rows) > REPORTS_SHOWN,
        may_close=user.role in REPORT_CLOSERS))


@router.post("/receipt-reports/{report_no}/close")
def receipt_report_close(request: Request, rt: RuntimeDep, report_no: str,
                         reason: Annotated[str, Form(max_length=2000)] = "",
                         town: Annotated[str, Form(max_length=64)] = "",
                         csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    if user.role not in REPORT_CLOSERS:
        raise DeskRefusal(403, "无权操作", "收据举报由乡镇工作人员、财务或管理员关闭；审计只查看。")
    text = _reason(reason, MAX_CLOSE_REASON)
    _act(rt, lambda s: receipt_reports.close(s, rt, user.principal, report_no, text))
    return _back("/desk/receipt-reports", town=_code(town, "乡镇") or "", done="report_closed")


# -------------------------------------------------------------------------- day close

@router.get("/day-close", response_class=HTMLResponse)
def day_close_page(request: Request, rt: RuntimeDep, date: str | None = None) -> Response:
    user = _user(request, rt)
    require_district(user)
    today = rt.clock.today()
    day = _day(date, rt) if date else today - timedelta(days=1)
    with unit_of_work(rt.sessions) as session:
        ledger = closing.ledger_of(session, rt.clock, day)
        state, available = _try(lambda: services.day_close_state(session, rt,
                                                                 user.principal, day))
        # finance downloads a closed day's declaration (申报文件) per town
        towns = _places(session, user)[0] if user.role == "finance" else {}
    return page(request, "day_close.html", page_context(
        request, user, "day_close", day=day, today=today, ledger=ledger, state=state,
        towns=towns,
        available=available, prev_day=day - timedelta(days=1),
        next_day=day + timedelta(days=1), channels=services.STATEMENT_CHANNELS,
        fetchable=services.FETCHABLE_CHANNELS))


@router.get("/declarations/{town_code}/{day}.csv")
def declaration_csv(request: Request, rt: RuntimeDep, town_code: str, day: str) -> Response:
    """The declaration file (申报文件) of a town's closed day, as the API serves it to
    finance (``backend/declarations``): the same checks, the same audit event."""
    user = _user(request, rt)
    town, when = _code(town_code, "镇(街道)") or "", _day(day, rt)
    d = _call(lambda: declarations.declaration(rt, user.principal, town, when))
    return Response(d.content, media_type=declarations.CSV, headers={
        "Content-Disposition": f"attachment; filename=\"{d.filename}\"",
        "Cache-Control": "no-store"})


@router.post("/day-close")
def day_close(request: Request, rt: RuntimeDep,
              date: Annotated[str, Form(max_length=10)] = "",
              note: Annotated[str, Form(max_length=1000)] = "",
              csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    user = _user(request, rt)
    check_csrf(user.csrf, csrf)
    require_acting(user)
    if not date:
        raise DeskRefusal(422, "请选择日期", "日结需要指明哪一天。")
    day = _day(date, rt)
    text = note.strip()
    if len(text) > MAX_REASON:
        raise DeskRefusal(422, "备注太长", f"备注最多 {MAX_REASON} 个字。")
    _act(rt, lambda s: services.close_day(s, rt, user.principal, day, text))
    return _back("/desk/day-close", date=day.isoformat(), done="closed")
