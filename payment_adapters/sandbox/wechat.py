"""WeChat Pay APIv3 server simulator (微信支付 APIv3 模拟器), public-key mode.

Serves, under ``/sandbox/wechat``, the real paths and JSON of:
``POST /v3/pay/transactions/jsapi`` and ``/native``, ``GET /v3/pay/transactions/out-trade-no/{no}
?mchid=…``, ``POST …/out-trade-no/{no}/close`` and ``POST /v3/refund/domestic/refunds``.
Requests must carry a valid ``WECHATPAY2-SHA256-RSA2048`` Authorization by the merchant key;
answers are signed by the "WeChat Pay" key under ``config.public_key_id``, so ``wechatpayv3``
works against it with only its gateway changed to ``http://host/sandbox/wechat``.

The signed request path is what the client appended to its gateway, so the ``/sandbox/wechat``
prefix is stripped before verifying, as WeChat sees ``/v3/…`` behind its own host.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from payment_adapters.base import Channel, WechatConfig
from payment_adapters.sandbox.core import (
    OutgoingNotification,
    PayOptions,
    SandboxState,
    SimTrade,
)

# control_router() includes this router under its own "/sandbox": the API is at /sandbox/wechat.
PREFIX = "/wechat"
CST = timezone(timedelta(hours=8))
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
_ALNUM = string.ascii_letters + string.digits
_OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
_OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
_AUTH_FIELD = re.compile(r'(\w+)="([^"]*)"')
# Notification ids are stable per event so that re-deliveries of one event share their id.
_EVENT_NS = uuid.UUID("6f1c1d2e-3a4b-5c6d-8e9f-0a1b2c3d4e5f")
_TRADE_STATES = {
    "pending": ("NOTPAY", "订单未支付"),
    "paid": ("SUCCESS", "支付成功"),
    "closed": ("CLOSED", "订单已关闭"),
    "refunded": ("REFUND", "订单发生过退款"),
}
_GARBAGE = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(CST).replace(microsecond=0).isoformat()


def _private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("WeChat Pay keys are RSA")
    return key


def _sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Refusal(400, "PARAM_ERROR", "请求体不是合法的JSON") from None
    if not isinstance(data, dict):
        raise _Refusal(400, "PARAM_ERROR", "请求体不是JSON对象")
    return data


def _positive_fen(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _Refusal(400, "PARAM_ERROR", f"{field}必须为正整数（单位：分）")
    return value


class WechatSimulator:
    """``ChannelSimulator`` for WeChat Pay; ``platform_private_key_pem`` is the private half of
    ``config.public_key_pem`` (the 微信支付公钥)."""

    channel = Channel.WECHAT

    def __init__(self, state: SandboxState, config: WechatConfig,
                 platform_private_key_pem: str) -> None:
        self.state = state
        self.config = config
        self._platform_key = _private_key(platform_private_key_pem)
        configured = serialization.load_pem_public_key(config.public_key_pem.encode())
        if not isinstance(configured, rsa.RSAPublicKey) or (
                configured.public_numbers() != self._platform_key.public_key().public_numbers()):
            raise ValueError("platform_private_key_pem is not the private half of "
                             "config.public_key_pem: no notification would verify")
        self._merchant_public = _private_key(config.mch_private_key_pem).public_key()
        self._aead = AESGCM(config.apiv3_key.encode("utf-8"))
        self._stranger: rsa.RSAPrivateKey | None = None

    # ================================================================== HTTP API
    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["sandbox-wechat"])

        @router.post("/v3/pay/transactions/jsapi")
        async def jsapi(request: Request) -> Response:
            return await self._serve(request, lambda body: self._create(body, "jsapi"))

        @router.post("/v3/pay/transactions/native")
        async def native(request: Request) -> Response:
            return await self._serve(request, lambda body: self._create(body, "native"))

        @router.get("/v3/pay/transactions/out-trade-no/{out_trade_no}")
        async def query(request: Request, out_trade_no: str) -> Response:
            mchid = request.query_params.get("mchid")
            return await self._serve(request, lambda body: self._query(out_trade_no, mchid))

        @router.post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close")
        async def close(request: Request, out_trade_no: str) -> Response:
            return await self._serve(request, lambda body: self._close(out_trade_no, body))

        @router.post("/v3/refund/domestic/refunds")
        async def refund(request: Request) -> Response:
            return await self._serve(request, self._refund)

        return router

    async def _serve(self, request: Request,
                     handle: Callable[[bytes], tuple[int, Mapping[str, Any] | None]]) -> Response:
        body = await request.body()
        await run_in_threadpool(self.state.before_call, Channel.WECHAT)
        problem = self._authorization_problem(request, body)
        if problem is not None:
            # WeChat does not sign an answer to a request it could not authenticate.
            refused = {"code": "SIGN_ERROR", "message": problem}
            return Response(json.dumps(refused, ensure_ascii=False), status_code=401,
                            media_type="application/json; charset=utf-8")
        if self.state.faults[Channel.WECHAT].garbage:
            return self._signed(200, _GARBAGE, "text/html")
        payload: Mapping[str, Any] | None
        try:
            status, payload = handle(body)
        except _Refusal as refusal:
            status, payload = refusal.status, {"code": refusal.code, "message": refusal.message}
        if payload is None:
            return self._signed(status, b"", None)
        content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        return self._signed(status, content, "application/json; charset=utf-8")

    def _signed(self, status: int, content: bytes, media_type: str | None) -> Response:
        headers = self.signature_headers(content)
        headers["Request-ID"] = f"08{secrets.token_hex(15).upper()}-0"
        return Response(content, status_code=status, headers=headers, media_type=media_type)

    def signature_headers(self, content: bytes, *, timestamp: int | None = None,
                          key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
        """Wechatpay-* headers over ``ts\\nnonce\\ncontent\\n`` (answers and notifications)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = secrets.token_hex(16)
        message = ts.encode() + b"\n" + nonce.encode() + b"\n" + content + b"\n"
        return {
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": self.config.public_key_id,
            "Wechatpay-Signature": _sign(key or self._platform_key, message),
            "Wechatpay-Signature-Type": SIGNATURE_TYPE,
            "Wechatpay-Timestamp": ts,
        }

    def _authorization_problem(self, request: Request, body: bytes) -> str | None:
        scheme, _, params = request.headers.get("authorization", "").partition(" ")
        if scheme != SIGNATURE_TYPE:
            return "Authorization 认证类型错误，应为 WECHATPAY2-SHA256-RSA2048"
        fields = dict(_AUTH_FIELD.findall(params))
        missing = [n for n in ("mchid", "nonce_str", "timestamp", "serial_no", "signature")
                   if not fields.get(n)]
        if missing:
            return f"Authorization 缺少 {','.join(missing)}"
        if fields["mchid"] != self.config.mchid:
            return "商户号不存在或与签名不匹配"
        if fields["serial_no"] != self.config.mch_serial:
            return "商户API证书序列号错误"
        ts = fields["timestamp"]
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return "timestamp 与系统时间相差超过5分钟"
        # The client signed what it appended to its gateway (…/sandbox/wechat): /v3/….
        path = request.scope["path"]
        at = path.find("/v3/")
        signed_path = path[at:] if at >= 0 else path
        query = request.scope.get("query_string", b"").decode("latin-1")
        if query:
            signed_path += "?" + query
        message = (f"{request.method}\n{signed_path}\n{ts}\n{fields['nonce_str']}\n".encode()
                   + body + b"\n")
        try:
            self._merchant_public.verify(base64.b64decode(fields["signature"]), message,
                                         padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return "错误的签名，验签失败"
        return None

    # ------------------------------------------------------------------ orders
    def _create(self, body: bytes, kind: str) -> tuple[int, Mapping[str, Any]]:
        data = _json_object(body)
        if data.get("mchid") != self.config.mchid:
            raise _Refusal(400, "MCH_NOT_EXISTS", "商户号不存在")
        if data.get("appid") != self.config.appid:
            raise _Refusal(400, "APPID_MCHID_NOT_MATCH", "AppID和mch_id不匹配")
        no = data.get("out_trade_no")
        if not isinstance(no, str) or not _OUT_TRADE_NO.fullmatch(no):
            raise _Refusal(400, "PARAM_ERROR", "out_trade_no应为6-32位数字、大小写字母_-|*")
        description = data.get("description")
        if not isinstance(description, str) or not 0 < len(description) <= 127:
            raise _Refusal(400, "PARAM_ERROR", "description为必填，最长127个字符")
        notify_url = data.get("notify_url")
        if (not isinstance(notify_url, str) or not notify_url.startswith(("http://", "https://"))
                or "?" in notify_url or len(notify_url) > 255):
            raise _Refusal(400, "PARAM_ERROR", "notify_url应为不带参数的完整URL")
        amount = data.get("amount")
        if not isinstance(amount, dict):
            raise _Refusal(400, "PARAM_ERROR", "amount为必填")
        total = _positive_fen(amount.get("total"), "amount.total")
        if amount.get("currency", "CNY") != "CNY":
            raise _Refusal(400, "PARAM_ERROR", "currency仅支持CNY")
        payer = data.get("payer")
        openid = payer.get("openid") if isinstance(payer, dict) else None
        if kind == "jsapi" and (not isinstance(openid, str) or not openid):
            raise _Refusal(400, "PARAM_ERROR", "JSAPI下单payer.openid为必填")
        expires_at = None
        if "time_expire" in data:
            try:
                expires_at = datetime.fromisoformat(str(data["time_expire"]))
            except ValueError:
                raise _Refusal(400, "PARAM_ERROR", "time_expire应为RFC3339格式") from None
            if expires_at.utcoffset() is None:
                raise _Refusal(400, "PARAM_ERROR", "time_expire须带时区")
        # Past time_expire values are accepted on purpose: demos run on a business clock
        # (COLLECT_NOW) in 2020, while the real WeChat would reject them.
        trade = SimTrade(channel=Channel.WECHAT, out_trade_no=no, amount_fen=total,
                         notify_url=notify_url, kind=kind, description=description,
                         payer=openid if kind == "jsapi" else None, expires_at=expires_at,
                         created_at=self.state.now(),
                         extra={"appid": self.config.appid, "attach": data.get("attach")})
        stored = self.state.put(trade)
        if stored is not trade:
            if stored.state in ("paid", "refunded"):
                raise _Refusal(400, "ORDERPAID", "该订单已支付")
            if stored.state == "closed":
                raise _Refusal(400, "ORDER_CLOSED", "订单已关闭")
            if ((stored.amount_fen, stored.kind, stored.description, stored.payer)
                    != (total, kind, description, trade.payer)):
                raise _Refusal(403, "OUT_TRADE_NO_USED", "商户订单号重复")
        seq = self.state.next_seq()
        if kind == "native":
            # Re-ordering with the same parameters returns the same QR.
            code_url = stored.extra.setdefault(
                "code_url", f"weixin://wxpay/bizpayurl/up?pr={seq:x}{secrets.token_hex(3)}"
                            "&groupid=00")
            return 200, {"code_url": code_url}
        now = self.state.now().astimezone(CST)
        prepay_id = f"wx{now:%Y%m%d%H%M%S}{seq:010d}{secrets.token_hex(5)}"
        stored.extra["prepay_id"] = prepay_id
        return 200, {"prepay_id": prepay_id}

    def _query(self, out_trade_no: str, mchid: str | None) -> tuple[int, Mapping[str, Any]]:
        if mchid != self.config.mchid:
            raise _Refusal(400, "PARAM_ERROR", "mchid与请求签名中的商户号不一致")
        trade = self.state.get(Channel.WECHAT, out_trade_no)
        if self.state.faults[Channel.WECHAT].query_not_found or trade is None:
            raise _Refusal(404, "ORDER_NOT_EXIST", "订单不存在")
        return 200, self.transaction(trade)

    def _close(self, out_trade_no: str, body: bytes) -> tuple[int, None]:
        if _json_object(body).get("mchid") != self.config.mchid:
            raise _Refusal(400, "PARAM_ERROR", "mchid与请求签名中的商户号不一致")
        trade = self.state.get(Channel.WECHAT, out_trade_no)
        if trade is None:
            raise _Refusal(404, "ORDER_NOT_EXIST", "订单不存在")
        before: list[str] = []

        def close(t: SimTrade) -> None:
            before.append(t.state)
            if t.state == "pending":
                t.state = "closed"

        self.state.update(trade, close)
        if before[0] in ("paid", "refunded"):
            raise _Refusal(400, "ORDERPAID", "订单已支付，不能关闭")
        if before[0] == "closed":
            raise _Refusal(400, "ORDER_CLOSED", "订单已关闭")
        return 204, None

    def transaction(self, trade: SimTrade, *, as_paid: bool = False) -> dict[str, Any]:
        """The transaction JSON of a query answer (or, ``as_paid``, of a payment notification)."""
        state = "paid" if as_paid else trade.state
        word, desc = _TRADE_STATES[state]
        paid = trade.transaction_id is not None and trade.paid_at is not None
        total = trade.paid_fen if paid and trade.paid_fen is not None else trade.amount_fen
        doc: dict[str, Any] = {
            "appid": self.config.appid, "mchid": self.config.mchid,
            "out_trade_no": trade.out_trade_no,
        }
        if paid and state in ("paid", "refunded"):
            assert trade.paid_at is not None
            doc.update({
                "transaction_id": trade.transaction_id,
                "trade_type": "NATIVE" if trade.kind == "native" else "JSAPI",
                "trade_state": word, "trade_state_desc": desc, "bank_type": "OTHERS",
                "success_time": _rfc3339(trade.paid_at),
                "payer": {"openid": trade.payer or self._scanner_openid(trade)},
                "amount": {"total": total, "payer_total": total, "currency": "CNY",
                           "payer_currency": "CNY"},
            })
            if trade.extra.get("attach"):
                doc["attach"] = trade.extra["attach"]
        else:
            doc.update({"trade_state": word, "trade_state_desc": desc,
                        "amount": {"total": total, "currency": "CNY", "payer_currency": "CNY"},
                        "promotion_detail": []})
        return doc

    @staticmethod
    def _scanner_openid(trade: SimTrade) -> str:
        return "oSbx" + uuid.uuid5(_EVENT_NS, "payer:" + trade.out_trade_no).hex[:24]

    # ------------------------------------------------------------------ refunds
    def _refund(self, body: bytes) -> tuple[int, Mapping[str, Any]]:
        data = _json_object(body)
        out_refund_no = data.get("out_refund_no")
        if not isinstance(out_refund_no, str) or not _OUT_REFUND_NO.fullmatch(out_refund_no):
            raise _Refusal(400, "PARAM_ERROR", "out_refund_no应为1-64位数字、大小写字母_-|*@")
        no = data.get("out_trade_no")
        if not isinstance(no, str):
            raise _Refusal(400, "PARAM_ERROR", "沙箱仅支持按out_trade_no退款")
        amount = data.get("amount")
        if not isinstance(amount, dict) or amount.get("currency") != "CNY":
            raise _Refusal(400, "PARAM_ERROR", "amount需包含refund、total、currency(CNY)")
        refund_fen = _positive_fen(amount.get("refund"), "amount.refund")
        total_fen = _positive_fen(amount.get("total"), "amount.total")
        notify_url = data.get("notify_url")
        trade = self.state.get(Channel.WECHAT, no)
        if trade is None:
            raise _Refusal(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        record: dict[str, Any] = {}
        refund_id = f"5030{self.state.next_seq():025d}"   # not inside update(): same lock

        def apply(t: SimTrade) -> None:
            if t.state not in ("paid", "refunded"):
                raise _Refusal(400, "INVALID_REQUEST", "订单未支付，不能退款")
            paid = t.paid_fen if t.paid_fen is not None else t.amount_fen
            if total_fen != paid:
                raise _Refusal(400, "INVALID_REQUEST", "订单金额total与原订单不一致")
            for r in t.refunds:
                if r["out_refund_no"] == out_refund_no:
                    if r["refund_fen"] != refund_fen:
                        raise _Refusal(400, "INVALID_REQUEST", "退款单号已存在，请求参数不一致")
                    record.update(r)
                    return
            if refund_fen > paid - t.refunded_fen:
                raise _Refusal(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            now = self.state.now()
            record.update({
                "out_refund_no": out_refund_no,
                "refund_id": refund_id,
                "refund_fen": refund_fen, "total_fen": paid,
                "reason": data.get("reason"), "notify_url": notify_url,
                "status": "SUCCESS", "create_time": now, "success_time": now,
            })
            t.refunds.append(dict(record))
            t.refunded_fen += refund_fen
            t.state = "refunded"

        self.state.update(trade, apply)
        return 200, self._refund_json(trade, record)

    def _refund_json(self, trade: SimTrade, r: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "refund_id": r["refund_id"], "out_refund_no": r["out_refund_no"],
            "transaction_id": trade.transaction_id, "out_trade_no": trade.out_trade_no,
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "success_time": _rfc3339(r["success_time"]),
            "create_time": _rfc3339(r["create_time"]),
            "status": r["status"], "funds_account": "AVAILABLE",
            "amount": {"total": r["total_fen"], "refund": r["refund_fen"],
                       "payer_total": r["total_fen"], "payer_refund": r["refund_fen"],
                       "settlement_refund": r["refund_fen"], "settlement_total": r["total_fen"],
                       "discount_refund": 0, "currency": "CNY", "from": []},
        }

    # ================================================================== notifications
    def payment_notification(self, trade: SimTrade, opts: PayOptions) -> OutgoingNotification:
        return self.build_notification(trade, opts)

    def build_notification(self, trade: SimTrade, opts: PayOptions,
                           timestamp: int | None = None) -> OutgoingNotification:
        """TRANSACTION.SUCCESS for a paid trade. ``opts.event``: None/"TRANSACTION.SUCCESS",
        or "SIGNTEST" for a signature probe; ``timestamp`` overrides Wechatpay-Timestamp
        (still correctly signed) to make stale notifications."""
        if trade.transaction_id is None or trade.paid_at is None:
            raise ValueError(f"trade {trade.out_trade_no} is not paid")
        event = opts.event or "TRANSACTION.SUCCESS"
        if event not in ("TRANSACTION.SUCCESS", "SIGNTEST"):
            raise ValueError(f"WeChat payment events: TRANSACTION.SUCCESS or SIGNTEST, not {event}")
        return self.build_event(
            trade.notify_url, "TRANSACTION.SUCCESS", "支付成功", "transaction",
            self.transaction(trade, as_paid=True),
            event_id=str(uuid.uuid5(_EVENT_NS, f"TRANSACTION.SUCCESS:{trade.transaction_id}")),
            create_time=trade.paid_at, timestamp=timestamp,
            bad_signature=opts.bad_signature, probe=event == "SIGNTEST")

    def refund_notification(self, trade: SimTrade, refund: dict[str, Any]) -> (
            OutgoingNotification | None):
        """REFUND.SUCCESS (or ABNORMAL/CLOSED, from ``refund["status"]``) to the refund's
        notify_url; None when the refund was asked without one, as WeChat then sends none."""
        url = refund.get("notify_url")
        if not url:
            return None
        status = refund.get("status", "SUCCESS")
        plain: dict[str, Any] = {
            "mchid": self.config.mchid, "transaction_id": trade.transaction_id,
            "out_trade_no": trade.out_trade_no, "refund_id": refund["refund_id"],
            "out_refund_no": refund["out_refund_no"], "refund_status": status,
            "user_received_account": "支付用户零钱",
            "amount": {"total": refund["total_fen"], "refund": refund["refund_fen"],
                       "payer_total": refund["total_fen"], "payer_refund": refund["refund_fen"]},
        }
        if status == "SUCCESS":
            plain["success_time"] = _rfc3339(refund["success_time"])
        event_type, summary = {
            "SUCCESS": ("REFUND.SUCCESS", "退款成功"),
            "ABNORMAL": ("REFUND.ABNORMAL", "退款异常"),
        }.get(status, ("REFUND.CLOSED", "退款关闭"))
        return self.build_event(
            url, event_type, summary, "refund", plain,
            event_id=str(uuid.uuid5(_EVENT_NS, f"{event_type}:{refund['refund_id']}")))

    def build_event(self, url: str, event_type: str, summary: str, original_type: str,
                    resource: Mapping[str, Any], *, event_id: str | None = None,
                    create_time: datetime | None = None, timestamp: int | None = None,
                    bad_signature: bool = False, probe: bool = False) -> OutgoingNotification:
        """Any APIv3 notification: the resource encrypted with AEAD_AES_256_GCM under the APIv3
        key (associated_data = original_type, 12-character nonce), the body signed."""
        nonce = "".join(secrets.choice(_ALNUM) for _ in range(12))
        clear = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        ciphertext = self._aead.encrypt(nonce.encode(), clear, original_type.encode())
        doc = {
            "id": event_id or str(uuid.uuid4()),
            "create_time": _rfc3339(create_time or self.state.now()),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {
                "original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "associated_data": original_type, "nonce": nonce,
            },
        }
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        headers = self.signature_headers(
            body, timestamp=timestamp, key=self._stranger_key() if bad_signature else None)
        if probe:
            headers["Wechatpay-Signature"] = (
                SIGNTEST_PREFIX + base64.b64encode(secrets.token_bytes(256)).decode())
        headers["Content-Type"] = "application/json"
        headers["Request-ID"] = f"08{secrets.token_hex(15).upper()}-0"
        return OutgoingNotification(url=url, headers=headers, body=body)

    def _stranger_key(self) -> rsa.RSAPrivateKey:
        if self._stranger is None:
            self._stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._stranger
