"""Templates, their filters (fen → yuan, channel and status names) and the desk's headers."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import money
from backend.clock import SHANGHAI

HERE = Path(__file__).parent

CHANNEL_NAMES = {"wechat": "微信支付", "alipay": "支付宝", "unionpay": "银联商务",
                 "cash": "现金", "pos": "POS 刷卡", "department": "部门代缴"}
DISCREPANCY_KINDS = {"missing_locally": "我方漏单", "missing_at_channel": "渠道漏单",
                     "amount_mismatch": "金额不符", "status_mismatch": "状态不符",
                     "fee_mismatch": "手续费不符", "duplicate_payment": "重复支付"}
#: What each kind means, for the run page (one line each).
DISCREPANCY_HINTS = {
    "missing_locally": "渠道收了款，我方没有记为已缴",
    "missing_at_channel": "我方记了收款，渠道账单上没有",
    "amount_mismatch": "双方金额不一致",
    "status_mismatch": "交易号或退款状态不一致",
    "fee_mismatch": "手续费与费率不符",
    "duplicate_payment": "同一笔交易重复出现，或已缴的项目又被支付",
}
# Discrepancies (open … auto_resolved) and refunds (requested … rejected): no name is both.
STATUS_NAMES = {"open": "待处理", "held": "待次日对账", "proposed": "待复核",
                "resolved": "已解决", "auto_resolved": "次日账单已核对",
                "requested": "待审批", "approved": "已审批，待退款", "queued": "待退款",
                "processing": "退款中", "awaiting_cash": "待代办员退还现金",
                "succeeded": "已退款", "rejected": "已驳回", "failed": "退款失败"}
SIDE_NAMES = {"channel": "以渠道为准", "local": "以我方为准"}


def yuan(fen: int | None) -> str:
    """Integer fen as yuan with two decimals and thousands separators: -123456 → -1,234.56."""
    return "—" if fen is None else money.yuan(fen, thousands=True)


def local_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")


def cn_date(value: date) -> str:
    return f"{value.year}年{value.month}月{value.day}日"


env = Environment(loader=FileSystemLoader(HERE / "templates"),
                  autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True)
env.filters.update(
    yuan=yuan, local_time=local_time, cn_date=cn_date,
    channel=lambda c: CHANNEL_NAMES.get(c, c),
    kind=lambda k: DISCREPANCY_KINDS.get(k, k),
    kind_hint=lambda k: DISCREPANCY_HINTS.get(k, ""),
    status=lambda s: STATUS_NAMES.get(s, s),
    side=lambda s: SIDE_NAMES.get(s, s) if s else "—")


def page(request: Request, template: str, context: dict[str, Any],
         status_code: int = 200) -> HTMLResponse:
    html = env.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code)


# No inline script anywhere (the pages have none); forms post only back here; never framed.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]


class DeskHeaders:
    """Security headers on everything under /desk/; pages (not the stylesheet) are never
    cached: they show money and personal names."""

    def __init__(self, app: ASGIApp, prefix: str = "/desk") -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return
        static = path.startswith(self.prefix + "/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", [])
                           if h[0].lower() not in {k for k, _ in _HEADERS}]
                headers += _HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
