"""The Alipay open-platform gateway (支付宝开放平台网关), simulated in its real wire format.

``GET``/``POST /sandbox/alipay/gateway.do`` takes the same signed public parameters as
``https://openapi.alipay.com/gateway.do`` (app_id, method, charset, sign_type, timestamp,
version, notify_url, biz_content, sign), checks the app's RSA2 signature with the public half
of the configured app key, and answers ``{"<method>_response": {...}, "sign": "..."}`` signed
over the exact inner JSON text with the "Alipay" private key — so python-alipay-sdk pointed
at it verifies the answers as it would Alipay's. Notifications are the form POSTs Alipay sends.

As at Alipay, a precreated trade exists only once its code is scanned: before that
``alipay.trade.query``, ``close``, ``refund`` and the refund query answer ``ACQ.TRADE_NOT_EXIST``,
while the code stays payable until its ``time_expire`` (by the business clock). Paying
through ``POST /sandbox/pay`` is a scan and a payment; ``POST /sandbox/alipay/scan`` is a scan
alone (the trade then waits for the buyer, ``WAIT_BUYER_PAY``). With ``refunds_pending`` set,
refunds are taken but not yet done (``fund_change`` N, and a refund query without
``refund_status``) until :meth:`AlipaySimulator.finish_refunds`.

``alipay.data.dataservice.bill.downloadurl.query`` (bill_type ``trade``) answers a
``bill_download_url`` from 09:00 Beijing the next day (business clock), ``isp.bill_not_exist``
before that or for a day without trades, and ``isv.invalid_arguments`` for today or later. The
link (``/sandbox/alipay/downloadBillFile.resource?…&token=…``, unsigned, as Alipay's) serves
the bill zip built from the simulator's own trades of that day for 30 s of real time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import APIRouter, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from payment_adapters.base import AlipayConfig, Channel
from payment_adapters.pem import rsa_private_key
from payment_adapters.sandbox.bills import DownloadLinks, active_on, damaged
from payment_adapters.sandbox.core import (
    OutgoingNotification,
    PayOptions,
    SandboxState,
    SimTrade,
    sim_transaction_id,
)

_BEIJING = ZoneInfo("Asia/Shanghai")
_FMT = "%Y-%m-%d %H:%M:%S"
_YUAN = re.compile(r"(0|[1-9][0-9]{0,9})\.([0-9]{2})")
_OUT_NO = re.compile(r"[A-Za-z0-9_]{1,64}")
_EXPRESS = re.compile(r"([1-9][0-9]{0,4})([mhd])")
_TIMESTAMP_SKEW = timedelta(minutes=15)
_BILL_METHOD = "alipay.data.dataservice.bill.downloadurl.query"
_METHODS = ("alipay.trade.precreate", "alipay.trade.query", "alipay.trade.close",
            "alipay.trade.refund", "alipay.trade.fastpay.refund.query", _BILL_METHOD)
# A day's bill is made the next morning: "当日数据一般于次日 9 点前生成".
BILL_MADE_AT = time(9, 0)
_NOTIFY_EVENTS = ("TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED")
_FORM = "application/x-www-form-urlencoded; charset=utf-8"

Inner = dict[str, Any]


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _fen(yuan: Any) -> int | None:
    match = _YUAN.fullmatch(yuan) if isinstance(yuan, str) else None
    return int(match.group(1)) * 100 + int(match.group(2)) if match else None


def _bj(moment: datetime) -> str:
    return moment.astimezone(_BEIJING).strftime(_FMT)


def _ok(**fields: Any) -> Inner:
    return {"code": "10000", "msg": "Success", **fields}


def _biz_error(sub_code: str, sub_msg: str) -> Inner:
    return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}


def _sign_content(params: dict[str, str], *, exclude: tuple[str, ...]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items())
                    if k not in exclude and v != "")


class _GatewayError(Exception):
    """A gateway-level refusal: Alipay answers these unsigned."""

    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        self.inner = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


class AlipaySimulator:
    """The Alipay side of 当面付: gateway API and ``trade_status_sync`` notifications."""

    channel = Channel.ALIPAY

    def __init__(self, state: SandboxState, config: AlipayConfig,
                 alipay_private_key_pem: str, *, fee_rate: Decimal = Decimal(0)) -> None:
        self._state = state
        self._config = config
        self.fee_rate = fee_rate             # 费率 charged on the bill's payments
        self.bill_links = DownloadLinks()    # validity / real_clock / single_use: tests set
        self._alipay_key = _rsa_private(alipay_private_key_pem)
        self._app_public = _rsa_private(config.app_private_key_pem).public_key()
        self._forger: rsa.RSAPrivateKey | None = None
        self.refunds_pending = False       # refunds are taken, and done by finish_refunds()
        self._pending: set[str] = set()    # out_trade_no of trades with refunds not done
        self.calls: Counter[str] = Counter()   # method -> requests that passed the checks

    # ------------------------------------------------------------------ HTTP API
    def router(self) -> APIRouter:
        # control_router() includes this under its own "/sandbox" prefix, so the gateway is
        # served at /sandbox/alipay/gateway.do.
        router = APIRouter(prefix="/alipay", tags=["sandbox-alipay"])

        @router.api_route("/gateway.do", methods=["GET", "POST"], include_in_schema=False)
        async def gateway(request: Request) -> Response:
            await run_in_threadpool(self._state.before_call, Channel.ALIPAY)
            body = await request.body() if request.method == "POST" else b""
            ctype = request.headers.get("content-type", "")
            here = str(request.url).split("?", 1)[0].rsplit("/gateway.do", 1)[0]
            return await run_in_threadpool(self._gateway, request.url.query, body, ctype, here)

        @router.get("/downloadBillFile.resource", include_in_schema=False)
        def download_bill(token: str = "") -> Response:
            return self._download_bill(token)

        @router.post("/scan")
        def scan(cmd: dict[str, Any]) -> dict[str, Any]:
            no = cmd.get("out_trade_no")
            trade = self._state.get(Channel.ALIPAY, no) if isinstance(no, str) else None
            if trade is None:
                raise HTTPException(404, f"the simulator has no Alipay trade {no}")
            refusal = self.refuses_payment(trade)
            if refusal:
                raise HTTPException(409, refusal)
            self._state.update(trade, lambda t: t.extra.__setitem__("scanned", True))
            return {"out_trade_no": trade.out_trade_no, "state": trade.state}

        return router

    def refuses_payment(self, trade: SimTrade) -> str | None:
        """Why Alipay would not take this payment: a code past its time_expire."""
        if self._state.past_expiry(trade) and trade.expires_at is not None:
            return f"trade {trade.out_trade_no} expired at {_bj(trade.expires_at)}"
        return None

    def finish_refunds(self) -> None:
        """Do the refunds taken while ``refunds_pending`` was set."""
        while self._pending:
            trade = self._state.get(Channel.ALIPAY, self._pending.pop())
            if trade is not None:
                self._state.update(trade, self._finish_refunds)

    def _finish_refunds(self, t: SimTrade) -> None:
        total = t.paid_fen if t.paid_fen is not None else t.amount_fen
        for r in t.refunds:
            if not r["done"]:
                r["done"], r["at"] = True, self._state.now()
                t.refunded_fen += r["refund_fen"]
        if t.refunded_fen == total:
            t.state = "refunded"

    def _gateway(self, query: str, body: bytes, ctype: str, here: str = "") -> Response:
        if self._state.faults[Channel.ALIPAY].garbage:
            return Response("<html><body><h1>502 Bad Gateway</h1></body></html>",
                            media_type="text/html")
        response_type = "error_response"
        try:
            params = self._params(query, body, ctype)
            method = params.get("method", "")
            if method in _METHODS:
                response_type = method.replace(".", "_") + "_response"
            self._check_request(params)
            self.calls[method] += 1
            try:
                biz = json.loads(params.get("biz_content", "{}"))
            except ValueError:
                biz = None
            if not isinstance(biz, dict):
                inner = _biz_error("ACQ.INVALID_PARAMETER", "biz_content不是JSON对象")
            else:
                inner = (self._bill_url(biz, here) if method == _BILL_METHOD
                         else self._dispatch(method, biz, params))
        except _GatewayError as exc:
            text = json.dumps({response_type: exc.inner}, ensure_ascii=False,
                              separators=(",", ":"))
            return Response(text, media_type="text/html;charset=utf-8")
        return Response(self._signed_answer(response_type, inner),
                        media_type="text/html;charset=utf-8")

    def _params(self, query: str, body: bytes, ctype: str) -> dict[str, str]:
        pairs = parse_qsl(query, keep_blank_values=True, encoding="utf-8")
        if body and "application/x-www-form-urlencoded" in ctype.lower():
            try:
                pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError:
                raise _GatewayError("40002", "Invalid Arguments", "isv.invalid-charset",
                                    "字符集错误") from None
        params: dict[str, str] = {}
        for key, value in pairs:
            if key in params:
                raise _GatewayError("40002", "Invalid Arguments", "isv.invalid-parameter",
                                    f"参数{key}重复")
            params[key] = value
        return params

    def _check_request(self, params: dict[str, str]) -> None:
        def refuse(code: str, sub_code: str, sub_msg: str) -> _GatewayError:
            msg = "Missing Required Arguments" if code == "40001" else "Invalid Arguments"
            return _GatewayError(code, msg, sub_code, sub_msg)

        for name in ("method", "app_id", "sign", "sign_type", "timestamp", "charset", "version"):
            if not params.get(name):
                raise refuse("40001", f"isv.missing-{name.replace('_', '-')}", f"缺少{name}参数")
        if params["method"] not in _METHODS:
            raise refuse("40002", "isv.invalid-method", "不存在的方法名")
        if params["app_id"] != self._config.appid:
            raise refuse("40002", "isv.invalid-app-id", "无效的AppID参数")
        if params["sign_type"] != "RSA2":
            raise refuse("40002", "isv.invalid-signature-type", "无效的签名类型")
        if params["charset"].lower() != "utf-8":
            raise refuse("40002", "isv.invalid-charset", "字符集错误")
        if params.get("format", "JSON").upper() != "JSON":
            raise refuse("40002", "isv.invalid-format", "无效的数据格式")
        try:
            sent = datetime.strptime(params["timestamp"], _FMT).replace(tzinfo=_BEIJING)
        except ValueError:
            raise refuse("40002", "isv.invalid-timestamp", "非法的时间戳参数") from None
        if abs(datetime.now(UTC) - sent) > _TIMESTAMP_SKEW:    # Beijing time, not local time
            raise refuse("40002", "isv.invalid-timestamp", "非法的时间戳参数")
        # The request is signed over every non-empty parameter except sign (sign_type in).
        try:
            signature = base64.b64decode(params["sign"], validate=True)
            self._app_public.verify(signature,
                                    _sign_content(params, exclude=("sign",)).encode("utf-8"),
                                    padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            raise refuse("40002", "isv.invalid-signature",
                          "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配") from None

    def _signed_answer(self, response_type: str, inner: Inner) -> str:
        # Alipay signs the exact JSON text of the inner object, which the SDK cuts out again.
        text = json.dumps(inner, ensure_ascii=False, separators=(",", ":"))
        sign = base64.b64encode(self._alipay_key.sign(
            text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()
        return f'{{"{response_type}":{text},"sign":"{sign}"}}'

    # ------------------------------------------------------------------ methods
    def _dispatch(self, method: str, biz: dict[str, Any], params: dict[str, str]) -> Inner:
        handlers: dict[str, Callable[[dict[str, Any], dict[str, str]], Inner]] = {
            "alipay.trade.precreate": self._precreate,
            "alipay.trade.query": self._query,
            "alipay.trade.close": self._close,
            "alipay.trade.refund": self._refund,
            "alipay.trade.fastpay.refund.query": self._refund_query,
        }
        return handlers[method](biz, params)

    def _trade(self, biz: dict[str, Any]) -> SimTrade | None:
        """The trade Alipay knows: a precreated code is a trade only once scanned."""
        # Only out_trade_no is looked up: the simulator does not index trade_no.
        no = biz.get("out_trade_no")
        trade = self._state.get(Channel.ALIPAY, no) if isinstance(no, str) else None
        if trade is not None and biz.get("trade_no") not in (None, trade.transaction_id):
            return None
        if trade is not None and trade.transaction_id is None and not trade.extra.get("scanned"):
            return None
        return trade

    def _precreate(self, biz: dict[str, Any], params: dict[str, str]) -> Inner:
        no, subject = biz.get("out_trade_no"), biz.get("subject")
        amount = _fen(biz.get("total_amount"))
        if not isinstance(no, str) or not _OUT_NO.fullmatch(no):
            return _biz_error("ACQ.INVALID_PARAMETER", "参数无效: out_trade_no")
        if amount is None or not 1 <= amount <= 100_000_000_00:
            return _biz_error("ACQ.INVALID_PARAMETER", "订单总金额格式错误: total_amount")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            return _biz_error("ACQ.INVALID_PARAMETER", "参数无效: subject")
        now = self._state.now()
        expires_at: datetime | None = None
        if "time_expire" in biz:
            try:
                expires_at = datetime.strptime(str(biz["time_expire"]), _FMT).replace(
                    tzinfo=_BEIJING)
            except ValueError:
                return _biz_error("ACQ.INVALID_PARAMETER", "参数无效: time_expire")
        elif "timeout_express" in biz:
            match = _EXPRESS.fullmatch(str(biz["timeout_express"]))
            if match is None:
                return _biz_error("ACQ.INVALID_PARAMETER", "参数无效: timeout_express")
            unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
            expires_at = now + timedelta(**{unit: int(match.group(1))})
        seq = self._state.next_seq()
        qr = f"https://qr.alipay.com/bax0{seq % 100000:05d}{secrets.token_hex(8)}"
        trade = self._state.put(SimTrade(
            channel=Channel.ALIPAY, out_trade_no=no, amount_fen=amount,
            notify_url=params.get("notify_url", ""), kind="qr", description=subject,
            expires_at=expires_at, created_at=now, extra={"qr_code": qr, "scanned": False},
        ))
        if trade.amount_fen != amount:
            return _biz_error("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
        if trade.state in ("paid", "refunded"):
            return _biz_error("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
        if trade.state == "closed":
            return _biz_error("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
        return _ok(out_trade_no=no, qr_code=trade.extra["qr_code"])

    def _query(self, biz: dict[str, Any], params: dict[str, str]) -> Inner:
        trade = self._trade(biz)
        if trade is None or self._state.faults[Channel.ALIPAY].query_not_found:
            return _biz_error("ACQ.TRADE_NOT_EXIST", "交易不存在")
        total = trade.paid_fen if trade.paid_fen is not None else trade.amount_fen
        out: Inner = _ok(out_trade_no=trade.out_trade_no, total_amount=_yuan(total))
        if trade.state == "pending":
            return {**out, "trade_status": "WAIT_BUYER_PAY", "buyer_pay_amount": "0.00"}
        if trade.state == "closed" and trade.transaction_id is None:
            return {**out, "trade_status": "TRADE_CLOSED"}
        status = {"paid": "TRADE_SUCCESS", "refunded": "TRADE_CLOSED"}.get(trade.state,
                                                                           "TRADE_CLOSED")
        if trade.state == "paid" and trade.extra.get("finished"):
            status = "TRADE_FINISHED"
        return {**out, **self._buyer(trade), "trade_status": status,
                "trade_no": trade.transaction_id or "",
                "buyer_pay_amount": _yuan(total), "receipt_amount": _yuan(total),
                "invoice_amount": _yuan(total), "point_amount": "0.00",
                "send_pay_date": _bj(trade.paid_at or trade.created_at)}

    def _close(self, biz: dict[str, Any], params: dict[str, str]) -> Inner:
        trade = self._trade(biz)
        if trade is None:
            return _biz_error("ACQ.TRADE_NOT_EXIST", "交易不存在")
        result: list[Inner] = []

        def close(t: SimTrade) -> None:
            if t.state != "pending":
                result.append(_biz_error("ACQ.TRADE_STATUS_ERROR",
                                         "只有等待买家付款状态下才能发起交易关闭"))
                return
            t.state = "closed"
            t.extra["gmt_close"] = self._state.now()
            result.append(_ok(out_trade_no=t.out_trade_no))

        self._state.update(trade, close)
        return result[0]

    def _refund(self, biz: dict[str, Any], params: dict[str, str]) -> Inner:
        trade = self._trade(biz)
        if trade is None:
            return _biz_error("ACQ.TRADE_NOT_EXIST", "交易不存在")
        amount = _fen(biz.get("refund_amount"))
        if amount is None or amount < 1:
            return _biz_error("ACQ.INVALID_PARAMETER", "参数无效: refund_amount")
        # Without out_request_no Alipay takes the out_trade_no (a full refund only).
        request_no = str(biz.get("out_request_no") or trade.out_trade_no)
        reason = str(biz.get("refund_reason", ""))
        result: list[Inner] = []
        made: list[bool] = []
        self._state.refund_seen(request_no, "call")
        if self._state.hold_refund(Channel.ALIPAY, request_no, "before_effect"):
            return _biz_error("ACQ.SYSTEM_ERROR", "系统错误")   # lost on its way in: not done

        def refund(t: SimTrade) -> None:
            total = t.paid_fen if t.paid_fen is not None else t.amount_fen
            earlier = next((r for r in t.refunds if r["out_request_no"] == request_no), None)
            if earlier is not None:          # a repeat: no money moves again
                if earlier["refund_fen"] != amount:
                    result.append(_biz_error("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                                             "退款金额与原退款请求不一致"))
                else:
                    result.append(self._refund_answer(t, "N", earlier["at"]))
                return
            if t.state not in ("paid", "refunded") or t.extra.get("finished"):
                result.append(_biz_error("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"))
                return
            asked = sum(r["refund_fen"] for r in t.refunds)
            if asked + amount > total:
                result.append(_biz_error("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"))
                return
            at = self._state.now()
            t.refunds.append({"out_request_no": request_no, "refund_fen": amount,
                              "reason": reason, "at": at, "done": False})
            made.append(True)
            if self.refunds_pending:         # taken, not done: no money moved yet
                self._pending.add(t.out_trade_no)
                result.append(self._refund_answer(t, "N", at))
                return
            self._finish_refunds(t)
            result.append(self._refund_answer(t, "Y", at))

        self._state.update(trade, refund)
        if made:
            self._state.refund_seen(request_no, "effect")
        self._state.hold_refund(Channel.ALIPAY, request_no, "after_effect")
        return result[0]

    def _refund_answer(self, trade: SimTrade, fund_change: str, at: datetime) -> Inner:
        return _ok(trade_no=trade.transaction_id or "", out_trade_no=trade.out_trade_no,
                   **self._buyer(trade), fund_change=fund_change,
                   refund_fee=_yuan(trade.refunded_fen), gmt_refund_pay=_bj(at))

    def _refund_query(self, biz: dict[str, Any], params: dict[str, str]) -> Inner:
        trade = self._trade(biz)
        if trade is None:
            return _biz_error("ACQ.TRADE_NOT_EXIST", "交易不存在")
        request_no = biz.get("out_request_no")
        if isinstance(request_no, str):
            self._state.refund_seen(request_no, "query")
        found = next((r for r in trade.refunds if r["out_request_no"] == request_no), None)
        if found is None:                    # Alipay answers success with no refund data
            return _ok(out_trade_no=trade.out_trade_no)
        total = trade.paid_fen if trade.paid_fen is not None else trade.amount_fen
        answer = _ok(trade_no=trade.transaction_id or "", out_trade_no=trade.out_trade_no,
                     out_request_no=request_no, total_amount=_yuan(total),
                     refund_amount=_yuan(found["refund_fen"]))
        if not found["done"]:                # taken, not done: no refund_status
            return answer
        return {**answer, "refund_status": "REFUND_SUCCESS", "gmt_refund_pay": _bj(found["at"])}

    # ------------------------------------------------------------------ bills
    def _bill_url(self, biz: dict[str, Any], here: str) -> Inner:
        invalid = _biz_error("isv.invalid_arguments", "入参不合法")
        if biz.get("bill_type") != "trade":
            return {**invalid, "sub_msg": "入参不合法: 沙箱仅提供bill_type=trade的日账单"}
        try:
            day = date.fromisoformat(str(biz.get("bill_date", "")))
        except ValueError:
            return {**invalid, "sub_msg": "入参不合法: bill_date应为yyyy-MM-dd"}
        now = self._state.now()
        if day >= now.astimezone(_BEIJING).date():        # today's bill: not yet
            return invalid
        made_at = datetime.combine(day + timedelta(days=1), BILL_MADE_AT, tzinfo=_BEIJING)
        trades = self._state.trades(Channel.ALIPAY)
        if now < made_at or not active_on(trades, day):
            return _biz_error("isp.bill_not_exist", "账单不存在")
        # imported here: the statements module may use this one's helpers
        from payment_adapters.sandbox.statements import render_statement

        content = render_statement(Channel.ALIPAY, trades, day, fee_rate=self.fee_rate)
        token = self.bill_links.issue(content)
        stamp, seller = f"{day:%Y%m%d}", self._config.seller_id
        query = urlencode({
            "bizType": "trade", "userId": seller, "fileType": "csv.zip", "bizDates": stamp,
            "downloadFileName": f"{seller}_{stamp}.csv.zip",
            "fileId": f"/trade/{seller}/{stamp}.csv.zip",
            "timestamp": str(int(datetime.now(UTC).timestamp())), "token": token})
        return _ok(bill_download_url=f"{here}/downloadBillFile.resource?{query}")

    def _download_bill(self, token: str) -> Response:
        content, why = self.bill_links.redeem(token)
        if content is None:
            # What Alipay's file server answers for a dead link is not documented.
            return Response(f"链接地址已失效（{why}），请重新获取账单下载地址", status_code=403,
                            media_type="text/plain;charset=utf-8")
        if self._state.faults[Channel.ALIPAY].corrupt_statement:
            content = damaged(content)
        return Response(content, media_type="application/octet-stream")

    # ------------------------------------------------------------------ notifications
    def payment_notification(self, trade: SimTrade, opts: PayOptions) -> OutgoingNotification:
        """``trade_status_sync``; ``opts.event`` TRADE_FINISHED / TRADE_CLOSED sends those."""
        status = opts.event or "TRADE_SUCCESS"
        if status not in _NOTIFY_EVENTS:
            raise ValueError(f"Alipay notifies {', '.join(_NOTIFY_EVENTS)}, not {status!r}")
        fields = self._trade_fields(trade, status)
        now = self._state.now()
        if status == "TRADE_FINISHED":
            self._state.update(trade, lambda t: t.extra.__setitem__("finished", True))
            fields["gmt_close"] = _bj(now)
        elif status == "TRADE_CLOSED":
            fields["gmt_close"] = _bj(trade.extra.get("gmt_close") or now)
        return self._note(trade.notify_url, fields, bad_signature=opts.bad_signature)

    def refund_notification(self, trade: SimTrade,
                            refund: dict[str, Any]) -> OutgoingNotification | None:
        """The notification Alipay sends after a refund of a 当面付 trade: the trade's status
        (TRADE_SUCCESS after a partial refund, TRADE_CLOSED after a full one) plus
        ``refund_fee`` (all refunded so far), ``gmt_refund`` and ``out_biz_no``. Which refunds
        notify by default is not confirmed by Alipay's docs; the format is."""
        total = trade.paid_fen if trade.paid_fen is not None else trade.amount_fen
        upto: list[dict[str, Any]] = []
        for r in trade.refunds:
            upto.append(r)
            if r["out_request_no"] == refund["out_request_no"]:
                break
        refunded = sum(r["refund_fen"] for r in upto)
        status = "TRADE_CLOSED" if refunded >= total else "TRADE_SUCCESS"
        at = refund.get("at") or self._state.now()
        fields = self._trade_fields(trade, status, extra_id=refund["out_request_no"])
        fields.update(out_biz_no=refund["out_request_no"], refund_fee=_yuan(refunded),
                      gmt_refund=_bj(at))
        if status == "TRADE_CLOSED":
            fields["gmt_close"] = _bj(at)
        return self._note(trade.notify_url, fields, bad_signature=False)

    def _trade_fields(self, trade: SimTrade, status: str, extra_id: str = "") -> dict[str, str]:
        paid_at = trade.paid_at or self._state.now()
        trade_no = trade.transaction_id or sim_transaction_id(
            Channel.ALIPAY, self._state.next_seq(), paid_at)
        total = _yuan(trade.paid_fen if trade.paid_fen is not None else trade.amount_fen)
        # The same event always gets the same notify_id: Alipay resends it unchanged.
        digest = hashlib.sha256(f"{trade_no}|{status}|{extra_id}".encode()).hexdigest()
        notify_id = (paid_at.astimezone(_BEIJING).strftime("%Y%m%d") + "00222"
                     + paid_at.astimezone(_BEIJING).strftime("%H%M%S")
                     + str(int(digest, 16) % 10**15).rjust(15, "0"))
        return {
            "gmt_create": _bj(trade.created_at),
            "charset": "utf-8",
            "gmt_payment": _bj(paid_at),
            "notify_time": _bj(self._state.now()),
            "subject": trade.description,
            "sign_type": "RSA2",
            **{k: v for k, v in self._buyer(trade).items() if k != "buyer_user_id"},
            "invoice_amount": total,
            "version": "1.0",
            "notify_id": notify_id,
            "fund_bill_list": json.dumps([{"amount": total, "fundChannel": "ALIPAYACCOUNT"}],
                                         separators=(",", ":")),
            "notify_type": "trade_status_sync",
            "out_trade_no": trade.out_trade_no,
            "total_amount": total,
            "trade_status": status,
            "trade_no": trade_no,
            "auth_app_id": self._config.appid,
            "receipt_amount": total,
            "point_amount": "0.00",
            "buyer_pay_amount": total,
            "app_id": self._config.appid,
            "seller_id": self._config.seller_id,
        }

    def _note(self, url: str, fields: dict[str, str], *,
              bad_signature: bool) -> OutgoingNotification:
        key = self._forger_key() if bad_signature else self._alipay_key
        content = _sign_content(fields, exclude=("sign", "sign_type"))
        fields["sign"] = base64.b64encode(key.sign(
            content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()
        return OutgoingNotification(url=url, headers={"Content-Type": _FORM},
                                    body=urlencode(fields).encode("ascii"))

    def _forger_key(self) -> rsa.RSAPrivateKey:
        if self._forger is None:
            self._forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._forger

    @staticmethod
    def _buyer(trade: SimTrade) -> dict[str, str]:
        digits = str(int(hashlib.sha256(trade.out_trade_no.encode()).hexdigest(), 16))[-12:]
        return {"buyer_id": "2088" + digits, "buyer_user_id": "2088" + digits,
                "buyer_logon_id": f"159****{digits[-4:]}"}


def _rsa_private(pem: str) -> rsa.RSAPrivateKey:
    return rsa_private_key(pem, "an Alipay key")
