"""Simulated ChinaUMS (银联商务) bills QR gateway, the "银商二维码", in its real wire format.

One JSON POST endpoint dispatching on ``msgType`` like ``netpay-route-server/api/``: served at
``/sandbox/unionpay/netpay-route-server/api/`` (the real path under our prefix) and at
``/sandbox/unionpay/``. Requests are checked as ChinaUMS does (sign with the 通讯密钥, mid,
tid, msgSrc, instMid, the billNo's 来源编号 prefix); every answer is signed. Notifications are
form POSTs signed over all fields, a random two-letter field included, like the real ones.

The signing here is written again on purpose, apart from the client's, so that one
misreading of the rule does not pass on both sides. errCodes other than SUCCESS are the
simulator's choice (the notes list none): BAD_REQUEST, NO_ORDER, INVALID_ORDER.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
import threading
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from payment_adapters.base import Channel, UnionpayConfig
from payment_adapters.sandbox.core import (
    OutgoingNotification,
    PayOptions,
    SandboxState,
    SimState,
    SimTrade,
)

BEIJING = ZoneInfo("Asia/Shanghai")
INST_MID = "QRPAYDEFAULT"
QR_URL = "https://qr.chinaums.com/bills/qrCode.do?id="
MER_NAME = "某区社会保险事业管理中心"
_TIME = "%Y-%m-%d %H:%M:%S"
_BILL_NO_RE = re.compile(r"[0-9A-Za-z]{6,31}")
_STATUS: dict[SimState, str] = {
    "pending": "UNPAID", "paid": "PAID", "closed": "CLOSED", "refunded": "REFUND",
}


class _Refused(Exception):
    def __init__(self, err: str, msg: str) -> None:
        super().__init__(f"{err}: {msg}")
        self.err = err
        self.msg = msg


def _ums_sign(fields: dict[str, Any], key: str, sign_type: str) -> str:
    parts = []
    for name in sorted(fields):
        value = fields[name]
        if name == "sign" or value is None or value == "":
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif isinstance(value, bool):
            value = "true" if value else "false"
        parts.append(f"{name}={value}")
    data = ("&".join(parts) + key).encode("utf-8")
    digest = hashlib.sha256(data) if sign_type == "SHA256" else hashlib.md5(data)
    return digest.hexdigest().upper()


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _fen(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        fen = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        fen = int(value)
    else:
        raise _Refused("BAD_REQUEST", f"{name} 格式错误")
    if fen <= 0:
        raise _Refused("BAD_REQUEST", f"{name} 必须大于0")
    return fen


def _now() -> datetime:
    return datetime.now(BEIJING).replace(microsecond=0)


class UnionpaySimulator:
    """:class:`~payment_adapters.sandbox.core.ChannelSimulator` for ChinaUMS bills QR."""

    channel = Channel.UNIONPAY

    def __init__(self, state: SandboxState, config: UnionpayConfig) -> None:
        self._state = state
        self._config = config
        self._lock = threading.Lock()
        self._qr_codes: dict[str, str] = {}      # qrCodeId -> billNo

    # ----------------------------------------------------------------------- HTTP
    def router(self) -> APIRouter:
        # control_router() mounts this under its own "/sandbox" prefix
        router = APIRouter(prefix="/unionpay", tags=["sandbox-unionpay"])

        async def api(request: Request) -> Response:
            body = await request.body()
            # before_call sleeps on the timeout switch: keep that off the event loop
            return await run_in_threadpool(self.handle, body)

        for path in ("/", "/netpay-route-server/api/"):
            router.add_api_route(path, api, methods=["POST"], include_in_schema=False)
        return router

    def handle(self, body: bytes) -> Response:
        self._state.before_call(self.channel)
        if self._state.faults[self.channel].garbage:
            return Response(b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                            status_code=200, media_type="text/html")
        req: dict[str, Any] = {}
        sign_type = "MD5"
        try:
            try:
                parsed = json.loads(body)
            except ValueError:
                raise _Refused("BAD_REQUEST", "报文格式错误") from None
            if not isinstance(parsed, dict):
                raise _Refused("BAD_REQUEST", "报文格式错误")
            req = parsed
            declared = req.get("signType") or "MD5"
            if declared not in ("SHA256", "MD5"):
                raise _Refused("BAD_REQUEST", "signType 不支持")
            sign_type = declared
            self._check_request(req, sign_type)
            fields = self._dispatch(req)
            return self._answer(req, sign_type, "SUCCESS", "", fields)
        except _Refused as exc:
            return self._answer(req, sign_type, exc.err, exc.msg, {})

    def _answer(self, req: dict[str, Any], sign_type: str, err: str, msg: str,
                fields: dict[str, Any]) -> Response:
        cfg = self._config
        answer: dict[str, Any] = {
            "errCode": err, "errMsg": msg or None,
            "msgId": req.get("msgId"), "msgType": req.get("msgType"),
            "msgSrc": req.get("msgSrc"), "mid": req.get("mid", cfg.mid),
            "tid": req.get("tid", cfg.tid), "instMid": INST_MID,
            "responseTimestamp": _now().strftime(_TIME), **fields,
        }
        answer = {k: v for k, v in answer.items() if v is not None}
        answer["sign"] = _ums_sign(answer, cfg.key, sign_type)
        return Response(json.dumps(answer, ensure_ascii=False).encode("utf-8"),
                        status_code=200, media_type="application/json;charset=UTF-8")

    def _check_request(self, req: dict[str, Any], sign_type: str) -> None:
        cfg = self._config
        sign = req.get("sign")
        if not isinstance(sign, str) or sign.upper() != _ums_sign(req, cfg.key, sign_type):
            raise _Refused("BAD_REQUEST", "签名验证失败")
        for name, expected in (("msgSrc", cfg.msg_src), ("mid", cfg.mid), ("tid", cfg.tid),
                               ("instMid", INST_MID)):
            if req.get(name) != expected:
                raise _Refused("BAD_REQUEST", f"{name} 不正确")
        if not isinstance(req.get("requestTimestamp"), str):
            raise _Refused("BAD_REQUEST", "requestTimestamp 为空")

    def _dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        msg_type = req.get("msgType")
        if msg_type == "bills.getQRCode":
            return self._get_qr_code(req)
        if msg_type == "bills.query":
            return self._query(req)
        if msg_type == "bills.closeQRCode":
            return self._close(req)
        if msg_type == "bills.refund":
            return self._refund(req)
        raise _Refused("BAD_REQUEST", f"不支持的 msgType {msg_type!r}")

    # ----------------------------------------------------------------------- msgTypes
    def _bill_no(self, req: dict[str, Any], name: str = "billNo") -> str:
        bill_no = req.get(name)
        if not isinstance(bill_no, str) or not _BILL_NO_RE.fullmatch(bill_no):
            raise _Refused("BAD_REQUEST", f"{name} 格式错误")
        if not bill_no.startswith(self._config.msg_src_id):
            raise _Refused("BAD_REQUEST", f"{name} 须以来源编号开头")
        return bill_no

    @staticmethod
    def _bill_date(req: dict[str, Any]) -> str:
        value = req.get("billDate")
        try:
            return date.fromisoformat(value).isoformat() if isinstance(value, str) else ""
        except ValueError:
            return ""

    def _trade(self, req: dict[str, Any]) -> SimTrade:
        bill_no = self._bill_no(req)
        bill_date = self._bill_date(req)
        if not bill_date:
            raise _Refused("BAD_REQUEST", "billDate 格式错误")
        trade = self._state.get(self.channel, bill_no)
        if trade is None or trade.extra.get("billDate") != bill_date:
            raise _Refused("NO_ORDER", "账单不存在")
        return trade

    def _get_qr_code(self, req: dict[str, Any]) -> dict[str, Any]:
        bill_no = self._bill_no(req)
        bill_date = self._bill_date(req)
        if not bill_date:
            raise _Refused("BAD_REQUEST", "billDate 格式错误")
        amount = _fen(req.get("totalAmount"), "totalAmount")
        notify_url = req.get("notifyUrl")
        if not isinstance(notify_url, str) or not notify_url:
            raise _Refused("BAD_REQUEST", "notifyUrl 为空")
        expires_at = None
        if req.get("expireTime"):
            try:
                expires_at = datetime.strptime(str(req["expireTime"]), _TIME).replace(
                    tzinfo=BEIJING)
            except ValueError:
                raise _Refused("BAD_REQUEST", "expireTime 格式错误") from None
        now = self._state.now().astimezone(BEIJING)
        qr_code_id = (f"{self._config.msg_src_id}{now:%y%m%d}"
                      f"{self._state.next_seq():016d}")
        trade = self._state.put(SimTrade(
            channel=self.channel, out_trade_no=bill_no, amount_fen=amount,
            notify_url=notify_url, kind="qr", description=str(req.get("billDesc") or ""),
            expires_at=expires_at, created_at=now,
            extra={"billDate": bill_date, "qrCodeId": qr_code_id,
                   "billQRCode": QR_URL + qr_code_id, "createTime": now.strftime(_TIME)}))
        if trade.amount_fen != amount or trade.extra["billDate"] != bill_date:
            raise _Refused("BAD_REQUEST", "账单号重复")
        with self._lock:
            self._qr_codes[trade.extra["qrCodeId"]] = bill_no
        return {"billNo": bill_no, "billDate": bill_date, "qrCodeId": trade.extra["qrCodeId"],
                "billQRCode": trade.extra["billQRCode"]}

    def _query(self, req: dict[str, Any]) -> dict[str, Any]:
        if self._state.faults[self.channel].query_not_found:
            raise _Refused("NO_ORDER", "账单不存在")
        return self._bill_fields(self._trade(req))

    def _close(self, req: dict[str, Any]) -> dict[str, Any]:
        qr_code_id = req.get("qrCodeId")
        with self._lock:
            bill_no = self._qr_codes.get(qr_code_id) if isinstance(qr_code_id, str) else None
        trade = self._state.get(self.channel, bill_no) if bill_no else None
        if trade is None:
            raise _Refused("NO_ORDER", "二维码不存在")

        def close(t: SimTrade) -> None:
            if t.state == "pending":
                t.state = "closed"
            elif t.state != "closed":
                raise _Refused("INVALID_ORDER", "账单已支付，不能关闭")

        self._state.update(trade, close)
        return {"qrCodeId": qr_code_id, "billNo": trade.out_trade_no,
                "billStatus": _STATUS[trade.state]}

    def _refund(self, req: dict[str, Any]) -> dict[str, Any]:
        trade = self._trade(req)
        refund_order_id = self._bill_no(req, "refundOrderId")
        amount = _fen(req.get("refundAmount"), "refundAmount")
        found: list[dict[str, Any]] = []

        def refund(t: SimTrade) -> None:
            for done in t.refunds:
                if done["refundOrderId"] == refund_order_id:
                    if done["refundAmount"] != amount:
                        raise _Refused("BAD_REQUEST", "退款订单号重复")
                    found.append(done)
                    return
            if t.state not in ("paid", "refunded"):
                raise _Refused("INVALID_ORDER", "账单未支付，不能退款")
            paid = t.paid_fen if t.paid_fen is not None else t.amount_fen
            if amount > paid - t.refunded_fen:
                raise _Refused("INVALID_ORDER", "退款金额超过可退金额")
            record = {"refundOrderId": refund_order_id, "refundAmount": amount,
                      "refundTargetOrderId": f"{t.transaction_id}R{len(t.refunds) + 1}",
                      "refundPayTime": self._state.now().astimezone(BEIJING).strftime(_TIME),
                      "refundDesc": str(req.get("refundDesc") or "")}
            t.refunds.append(record)
            t.refunded_fen += amount
            if t.refunded_fen == paid:
                t.state = "refunded"
            found.append(record)

        self._state.update(trade, refund)
        done = found[0]
        return {"billNo": trade.out_trade_no, "billDate": trade.extra["billDate"],
                "billStatus": _STATUS[trade.state], "refundOrderId": refund_order_id,
                "refundAmount": done["refundAmount"], "refundStatus": "SUCCESS",
                "refundTargetOrderId": done["refundTargetOrderId"],
                "refundPayTime": done["refundPayTime"],
                "merOrderId": trade.out_trade_no + "0", "targetSys": "UAC",
                "totalAmount": self._paid_fen(trade)}

    # ----------------------------------------------------------------------- shapes
    @staticmethod
    def _paid_fen(trade: SimTrade) -> int:
        return trade.paid_fen if trade.paid_fen is not None else trade.amount_fen

    def _payment(self, trade: SimTrade, status: str) -> dict[str, Any]:
        fen = self._paid_fen(trade)
        paid_at = (trade.paid_at or self._state.now()).astimezone(BEIJING)
        txn = trade.transaction_id or ""
        return {
            "payTime": paid_at.strftime(_TIME), "buyerCashPayAmt": fen,
            "connectSys": "UNIONPAY", "paySeqId": txn[-11:] + "N",
            "invoiceAmount": fen, "settleDate": paid_at.date().isoformat(),
            "buyerId": trade.payer or "sandbox-buyer", "receiptAmount": fen,
            "totalAmount": fen, "couponAmount": 0, "billBizType": "bills",
            "buyerPayAmount": fen, "targetOrderId": txn,
            "payDetail": f"云闪付支付{_yuan(fen)}元。", "merOrderId": trade.out_trade_no + "0",
            "status": status, "targetSys": "UAC",
        }

    def _bill_fields(self, trade: SimTrade) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "billNo": trade.out_trade_no, "billDate": trade.extra["billDate"],
            "billStatus": _STATUS[trade.state], "billDesc": trade.description or None,
            "totalAmount": (self._paid_fen(trade) if trade.state in ("paid", "refunded")
                            else trade.amount_fen),
            "billQRCode": trade.extra["billQRCode"], "qrCodeId": trade.extra["qrCodeId"],
            "createTime": trade.extra["createTime"], "merName": MER_NAME,
        }
        if trade.state in ("paid", "refunded"):
            status = "TRADE_SUCCESS" if trade.state == "paid" else "TRADE_REFUND"
            fields["billPayment"] = self._payment(trade, status)
            fields["cardAttr"] = "BALANCE"
        return fields

    # ----------------------------------------------------------------------- notifications
    def payment_notification(self, trade: SimTrade, opts: PayOptions) -> OutgoingNotification:
        """``opts.event``: ``MD5`` signs with signType MD5; ``REFUND`` sends billStatus REFUND."""
        cfg = self._config
        fen = self._paid_fen(trade)
        refund = opts.event == "REFUND"
        payment = self._payment(trade, "TRADE_REFUND" if refund else "TRADE_SUCCESS")
        fields: dict[str, Any] = {
            "mid": cfg.mid, "tid": cfg.tid, "instMid": INST_MID, "billNo": trade.out_trade_no,
            "billQRCode": trade.extra.get("billQRCode", ""),
            "billDate": trade.extra.get("billDate", ""),
            "createTime": trade.extra.get("createTime", ""),
            "billStatus": "REFUND" if refund else "PAID", "billDesc": trade.description,
            "totalAmount": str(fen), "receiptAmount": str(fen), "merName": MER_NAME,
            "notifyId": f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}"
                        f"-{secrets.token_hex(2)}-{secrets.token_hex(6)}",
            "qrCodeId": trade.extra.get("qrCodeId", ""), "qrCodeType": "BILLPAY",
            "seqId": payment["paySeqId"], "subInst": "100200", "cardAttr": "BALANCE",
            "billPayment": json.dumps(payment, ensure_ascii=False, separators=(",", ":")),
            "signType": "MD5" if opts.event == "MD5" else "SHA256",
        }
        if refund:
            fields["refundAmount"] = str(trade.refunded_fen or fen)
        # real notifications carry a random two-letter field (e.g. aI=EZkv), signed too
        letters = string.ascii_letters
        extra = "".join(secrets.choice(letters) for _ in range(2))
        fields[extra] = "".join(secrets.choice(letters) for _ in range(4))
        fields = {k: v for k, v in fields.items() if v != ""}
        key = cfg.key + "-not-the-key" if opts.bad_signature else cfg.key
        fields["sign"] = _ums_sign(fields, key, fields["signType"])
        return OutgoingNotification(
            url=trade.notify_url,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
            body=urlencode(fields).encode("ascii"))

    def refund_notification(self, trade: SimTrade, refund: dict[str, Any]) -> (
            OutgoingNotification | None):
        # the notes describe no refund notification; bills.refund answers synchronously
        return None
