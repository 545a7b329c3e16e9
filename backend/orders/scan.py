"""What happens when someone scans one of our QR codes.

For a channel QR the image holds the channel's own content (``weixin://…``,
``https://qr.alipay.com/…``, ChinaUMS' bills URL). The aggregate QR (聚合码) holds our landing
URL instead: the app that opens it says who it is in its User-Agent, and we open a trade at
that channel (WeChat → Native, Alipay → precreate, anything else → the UnionPay bills QR) and
send the wallet on, like jeepay's 聚合码.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from backend.db import unit_of_work
from backend.errors import NotFound
from backend.orders import repository as repo
from backend.orders import service
from backend.receipts import service as receipts
from backend.runtime import Runtime
from payment_adapters.base import Channel


def channel_for_user_agent(user_agent: str) -> Channel:
    ua = user_agent.lower()
    if "micromessenger" in ua:
        return Channel.WECHAT
    if "alipayclient" in ua:
        return Channel.ALIPAY
    return Channel.UNIONPAY


def qr_content_for_token(rt: Runtime, token: str) -> str:
    with unit_of_work(rt.sessions) as s:
        order = repo.order_by_qr_token(s, token)
        if order is None:
            raise NotFound("no QR code with this token (it may have been refreshed)")
        content = service.qr_content_of(rt, order, repo.attempts_of(s, order.id))  # type: ignore[arg-type]
    if not content:
        raise NotFound("this order has no QR code at the channel yet")
    return content


@dataclass(frozen=True)
class ScanOutcome:
    status: int = 200
    redirect: str | None = None
    page: str = ""


def _page(title: str, text: str, status: int = 200) -> ScanOutcome:
    return ScanOutcome(status=status, page=(
        "<!doctype html><html lang=zh><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><body style='font-family:sans-serif;"
        f"text-align:center;padding:3em 1em'><h2>{html.escape(title)}</h2>"
        f"<p>{html.escape(text)}</p></body></html>"))


_PAID_TITLES = {"paid": "已缴费", "partially_refunded": "已缴费（部分已退款）",
                "refunded": "已缴费（已全额退款）"}


def _paid_page(status: str, receipt_url: str | None) -> ScanOutcome:
    """The page of a paid order: paid, and the link to its receipt's check page."""
    title = _PAID_TITLES.get(status, "已缴费")
    link = ("" if receipt_url is None else
            f"<p><a href='{html.escape(receipt_url)}' style='font-size:1.2em'>"
            "查看缴费凭证 · View the receipt</a></p>"
            "<p style='color:#666;font-size:.9em'>凭证可由任何人在此核验（姓名、身份证号已遮挡）；"
            "请保存此链接或截图。</p>")
    return ScanOutcome(status=200, page=(
        "<!doctype html><html lang=zh><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><body style='font-family:sans-serif;"
        f"text-align:center;padding:3em 1em'><h2>{html.escape(title)}</h2>"
        "<p>This order is paid. 缴费成功。</p>" + link + "</body></html>"))


def scan(rt: Runtime, token: str, user_agent: str) -> ScanOutcome:
    channel = channel_for_user_agent(user_agent)
    with unit_of_work(rt.sessions) as s:
        order = repo.order_by_qr_token(s, token)
        if order is None:
            return _page("二维码已失效", "This QR code has been replaced or does not exist.", 404)
        if order.status in service.PAID_STATES:
            # the payer (an agent's QR: the resident who scanned it) reaches the receipt
            # from here: its public check page, masked (issued now if the worker has not yet)
            receipt = receipts.order_receipt(rt, s, order.id,  # type: ignore[arg-type]
                                             order.channel_transaction_id)
            return _paid_page(order.status, None if receipt is None else receipts.verify_url(
                rt.settings.public_base_url, receipts.token_of(receipt)))
        if order.channel != "aggregate_qr":
            content = service.qr_content_of(rt, order, repo.attempts_of(s, order.id))  # type: ignore[arg-type]
            return ScanOutcome(status=302, redirect=content) if content else _page(
                "请稍候", "The payment is being prepared; scan again.", 409)
        now = rt.clock.now()
        if order.status != "pending" or order.expires_at <= now:
            return _page("二维码已过期", "This QR code has expired; ask for a new one.", 410)
        reusable = [a for a in repo.attempts_of(s, order.id)  # type: ignore[arg-type]
                    if a.channel == channel.value and a.status == "pending" and a.qr_content
                    and a.expires_at > now]
        if reusable:
            return ScanOutcome(status=302, redirect=reusable[-1].qr_content)
        kind = "native" if channel is Channel.WECHAT else "qr"
        attempt = service._new_attempt(rt, s, order, channel, kind)
        description = service._description(s, order)
    result = service._open_at_channel(rt, order, attempt, description, None)
    if result is None or not result.qr_content:
        return _page("暂时无法支付", "The payment channel did not answer; scan again.", 502)
    return ScanOutcome(status=302, redirect=result.qr_content)


