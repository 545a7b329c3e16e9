"""WeChat Pay APIv3 server simulator (微信支付 APIv3 模拟器).

Serves, under ``/sandbox/wechat``, the real paths and JSON of:
``POST /v3/pay/transactions/jsapi`` and ``/native``, ``GET /v3/pay/transactions/out-trade-no/{no}
?mchid=…``, ``POST …/out-trade-no/{no}/close``, ``POST /v3/refund/domestic/refunds`` and
``GET /v3/refund/domestic/refunds/{out_refund_no}``. Requests must carry a valid
``WECHATPAY2-SHA256-RSA2048`` Authorization by the merchant key. Answers and notifications are
signed as WeChat Pay signs them for the merchant: with the WeChat Pay public key's private half
(``Wechatpay-Serial: PUB_KEY_ID_…``, 公钥模式) or with a platform certificate's (平台证书模式,
the certificate's serial) — switchable at run time, as a merchant migrating between the two
sees WeChat sign with either.

The signed request path is the raw path the client appended to its gateway, so the
``/sandbox/wechat`` prefix is stripped before verifying, as WeChat sees ``/v3/…`` behind its
own host.

The daily trade bill: ``GET /v3/bill/tradebill?bill_date=…&bill_type=ALL&tar_type=GZIP`` answers
(signed) a ``download_url`` valid 30 s (real time) and the SHA1 of the decompressed bill, from
10:00 Beijing the next day (business clock) and for the last three months;
``GET /v3/billdownload/file?token=…`` (Authorization signed over that path and query) serves
the file, unsigned, built from the simulator's own trades of that day.

Besides the API, ``POST /sandbox/wechat/switches`` (which key signs; answers signed badly, as
WeChat's signature probes are; refunds left PROCESSING) and
``POST /sandbox/wechat/refunds/{out_refund_no}/settle`` (a PROCESSING refund's end, with its
notification) drive what only WeChat could do.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import json
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from payment_adapters.base import Channel, WechatConfig
from payment_adapters.pem import rsa_private_key
from payment_adapters.sandbox.bills import DownloadLinks, active_on, damaged
from payment_adapters.sandbox.core import (
    OutgoingNotification,
    PayOptions,
    SandboxState,
    SimTrade,
    deliver,
)
from payment_adapters.wechat.client import bill_published_at, oldest_bill_day
from payment_adapters.wechat.keys import certificate_serial

# control_router() includes this router under its own "/sandbox": the API is at /sandbox/wechat.
PREFIX = "/wechat"
CST = timezone(timedelta(hours=8))
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
_ALNUM = string.ascii_letters + string.digits
_OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
_OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
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
# WeChat's limits on an order (JSAPI/Native 下单): string(n) is n characters.
DESCRIPTION_MAX = 127
ATTACH_MAX = 128
OPENID_MAX = 128
NOTIFY_URL_MAX = 255            # 下单 notify_url string(255)
REFUND_NOTIFY_URL_MAX = 256     # 退款 notify_url string(256)
REFUND_REASON_MAX_BYTES = 80    # 退款原因: "不可超过80个字节"
EXPIRE_MIN = timedelta(minutes=1)    # an earlier time_expire is moved to order time + 1 min
EXPIRE_MAX = timedelta(days=90)      # a later one to order time + 90 days
REFUND_WINDOW = timedelta(days=365)  # 交易完成后的一年内
Signing = Literal["public_key", "certificate"]


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> Response:
    return Response(json.dumps({"code": code, "message": message}, ensure_ascii=False),
                    status_code=status, media_type="application/json; charset=utf-8")


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(CST).replace(microsecond=0).isoformat()


def _private_key(pem: str) -> rsa.RSAPrivateKey:
    return rsa_private_key(pem, "a WeChat Pay key")


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


def _digits(seq: int, width: int) -> str:
    """``seq`` as exactly ``width`` digits (its last ones if longer): ids keep WeChat's length
    whatever the sequence's size."""
    return f"{seq:0{width}d}"[-width:]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_notify_url(value: Any, field: str, max_length: int) -> str:
    """WeChat's rule for a notify_url: a full HTTPS URL without query string. The sandbox
    runs on http://127.0.0.1, so plain http is accepted for loopback hosts only — an http URL
    the real channel would refuse still fails here."""
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise _Refusal(400, "PARAM_ERROR", f"{field}为必填，最长{max_length}个字符")
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.scheme == "http" and not _is_loopback(host):
        raise _Refusal(400, "PARAM_ERROR", f"{field}必须为https地址")
    if parts.scheme not in ("https", "http") or not host:
        raise _Refusal(400, "PARAM_ERROR", f"{field}应为完整的https URL")
    if parts.query or parts.fragment or "?" in value:
        raise _Refusal(400, "PARAM_ERROR", f"{field}不能携带参数")
    return value


def make_platform_certificate(private_key_pem: str, *, not_before: datetime,
                              not_after: datetime, serial: int | None = None) -> str:
    """A self-signed stand-in for a WeChat Pay platform certificate (PEM) over the given key.
    Real ones are issued by Tenpay's CA; a merchant's side only reads the serial, the validity
    and the public key, which this carries the same way."""
    key = _private_key(private_key_pem)
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com (sandbox)"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com sandbox platform certificate"),
    ])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class _Signer:
    serial: str                  # what goes in Wechatpay-Serial
    key: rsa.RSAPrivateKey


class SwitchCommand(BaseModel):
    signing: Signing | None = Field(default=None, description="which key signs from now on")
    bad_answer_signature: bool | None = Field(
        default=None, description="sign every API answer with a probe signature "
                                  "(WECHATPAY/SIGNTEST/…), as WeChat does to a few on purpose")
    refunds_processing: bool | None = Field(
        default=None, description="refunds answer PROCESSING until settled")


class SettleCommand(BaseModel):
    status: Literal["SUCCESS", "ABNORMAL", "CLOSED"] = "SUCCESS"
    deliver: bool = Field(default=True, description="send the refund notification")


class WechatSimulator:
    """``ChannelSimulator`` for WeChat Pay.

    ``platform_private_key_pem`` is the private half of the WeChat Pay public key (of
    ``config.public_key_pem`` when the config has one), under ``public_key_id`` (default
    ``config.public_key_id``); ``certificate`` is a platform certificate and its private key
    (PEM, PEM). Either or both; ``signing`` picks which signs first.
    """

    channel = Channel.WECHAT

    def __init__(self, state: SandboxState, config: WechatConfig,
                 platform_private_key_pem: str | None = None, *,
                 certificate: tuple[str, str] | None = None, public_key_id: str | None = None,
                 signing: Signing | None = None, fee_rate: Decimal = Decimal(0)) -> None:
        self.state = state
        self.config = config
        self.fee_rate = fee_rate             # 费率 charged on the bill's payments
        self.bill_links = DownloadLinks()    # validity / real_clock / single_use: tests set
        self._signers: dict[Signing, _Signer] = {}
        if platform_private_key_pem:
            key = _private_key(platform_private_key_pem)
            if config.public_key_pem:
                configured = serialization.load_pem_public_key(config.public_key_pem.encode())
                if not isinstance(configured, rsa.RSAPublicKey) or (
                        configured.public_numbers() != key.public_key().public_numbers()):
                    raise ValueError("platform_private_key_pem is not the private half of "
                                     "config.public_key_pem: no notification would verify")
            key_id = public_key_id or config.public_key_id
            if not key_id:
                raise ValueError("signing in public-key mode needs a PUB_KEY_ID_…")
            self._signers["public_key"] = _Signer(key_id, key)
        if certificate is not None:
            cert = x509.load_pem_x509_certificate(certificate[0].encode())
            key = _private_key(certificate[1])
            if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
                raise ValueError("the certificate's key is not the private key given with it")
            self._signers["certificate"] = _Signer(certificate_serial(cert), key)
        if not self._signers:
            raise ValueError("the simulator needs a key to sign with: the WeChat Pay public "
                             "key's private half, a platform certificate, or both")
        first: Signing = signing if signing is not None else next(iter(self._signers))
        self.signing = first
        self.set_signing(first)
        self.bad_answer_signature = False
        self.refunds_processing = False
        self._merchant_public = _private_key(config.mch_private_key_pem).public_key()
        self._aead = AESGCM(config.apiv3_key.encode("utf-8"))
        self._stranger: rsa.RSAPrivateKey | None = None
        self._refund_lock = threading.Lock()
        self._refund_trades: dict[str, str] = {}      # out_refund_no → out_trade_no

    def set_signing(self, mode: Signing) -> None:
        if mode not in self._signers:
            raise ValueError(f"the simulator has no {mode.replace('_', ' ')} to sign with")
        self.signing = mode

    @property
    def serial(self) -> str:
        """The Wechatpay-Serial of what the simulator signs now."""
        return self._signers[self.signing].serial

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

        @router.get("/v3/refund/domestic/refunds/{out_refund_no}")
        async def query_refund(request: Request, out_refund_no: str) -> Response:
            return await self._serve(request, lambda body: self._query_refund(out_refund_no))

        @router.get("/v3/bill/tradebill")
        async def tradebill(request: Request) -> Response:
            here = str(request.url).split("/v3/bill/tradebill", 1)[0]
            params = dict(request.query_params)
            return await self._serve(request, lambda body: self._tradebill(params, here))

        @router.get("/v3/billdownload/file")
        async def billdownload(request: Request) -> Response:
            await run_in_threadpool(self.state.before_call, Channel.WECHAT)
            problem = self._authorization_problem(request, b"")
            if problem is not None:
                return _error(401, "SIGN_ERROR", problem)
            return await run_in_threadpool(self._billdownload,
                                           request.query_params.get("token", ""))

        # ---- the simulator's own controls (not WeChat's API)
        @router.post("/switches")
        def switches(cmd: SwitchCommand) -> dict[str, Any]:
            if cmd.signing is not None:
                try:
                    self.set_signing(cmd.signing)
                except ValueError as exc:
                    raise HTTPException(409, str(exc)) from None
            if cmd.bad_answer_signature is not None:
                self.bad_answer_signature = cmd.bad_answer_signature
            if cmd.refunds_processing is not None:
                self.refunds_processing = cmd.refunds_processing
            return {"signing": self.signing, "serial": self.serial,
                    "bad_answer_signature": self.bad_answer_signature,
                    "refunds_processing": self.refunds_processing}

        @router.post("/refunds/{out_refund_no}/settle")
        def settle(out_refund_no: str, cmd: SettleCommand) -> dict[str, Any]:
            try:
                trade, record = self.settle_refund(out_refund_no, cmd.status)
            except LookupError as exc:
                raise HTTPException(404, str(exc)) from None
            except ValueError as exc:
                raise HTTPException(409, str(exc)) from None
            note = self.refund_notification(trade, record)
            deliveries = []
            if note is not None and cmd.deliver:
                status, text = deliver(note)
                deliveries.append({"status": status, "body": text[:500]})
            return {"refund": self._refund_json(trade, record), "deliveries": deliveries}

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
            status, payload = await run_in_threadpool(handle, body)
        except _Refusal as refusal:
            status, payload = refusal.status, {"code": refusal.code, "message": refusal.message}
        if payload is None:
            return self._signed(status, b"", None)
        content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        return self._signed(status, content, "application/json; charset=utf-8")

    def _signed(self, status: int, content: bytes, media_type: str | None) -> Response:
        headers = self.signature_headers(content, probe=self.bad_answer_signature)
        headers["Request-ID"] = f"08{secrets.token_hex(15).upper()}-0"
        return Response(content, status_code=status, headers=headers, media_type=media_type)

    def signature_headers(self, content: bytes, *, timestamp: int | None = None,
                          key: rsa.RSAPrivateKey | None = None,
                          probe: bool = False) -> dict[str, str]:
        """Wechatpay-* headers over ``ts\\nnonce\\ncontent\\n`` (answers and notifications),
        under the serial of the key that signs now; ``key`` signs instead (a forgery), and
        ``probe`` writes a WECHATPAY/SIGNTEST/ signature, as WeChat's signature probes."""
        signer = self._signers[self.signing]
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = secrets.token_hex(16)
        message = ts.encode() + b"\n" + nonce.encode() + b"\n" + content + b"\n"
        signature = (SIGNTEST_PREFIX + base64.b64encode(secrets.token_bytes(256)).decode()
                     if probe else _sign(key or signer.key, message))
        return {
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": signer.serial,
            "Wechatpay-Signature": signature,
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
        # The client signed the raw path (as sent, percent-escapes kept) it appended to its
        # gateway (…/sandbox/wechat): /v3/….
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw_path.decode("latin-1")
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
        if not isinstance(description, str) or not 0 < len(description) <= DESCRIPTION_MAX:
            raise _Refusal(400, "PARAM_ERROR", f"description为必填，最长{DESCRIPTION_MAX}个字符")
        attach = data.get("attach")
        if attach is not None and (not isinstance(attach, str) or len(attach) > ATTACH_MAX):
            raise _Refusal(400, "PARAM_ERROR", f"attach最长{ATTACH_MAX}个字符")
        notify_url = check_notify_url(data.get("notify_url"), "notify_url", NOTIFY_URL_MAX)
        amount = data.get("amount")
        if not isinstance(amount, dict):
            raise _Refusal(400, "PARAM_ERROR", "amount为必填")
        total = _positive_fen(amount.get("total"), "amount.total")
        if amount.get("currency", "CNY") != "CNY":
            raise _Refusal(400, "PARAM_ERROR", "currency仅支持CNY")
        payer = data.get("payer")
        openid = payer.get("openid") if isinstance(payer, dict) else None
        if kind == "jsapi" and (not isinstance(openid, str) or not 0 < len(openid) <= OPENID_MAX):
            raise _Refusal(400, "PARAM_ERROR", "JSAPI下单payer.openid为必填，最长128个字符")
        now = self.state.now()
        asked_expiry = self._time_expire(data, now)
        expires_at = None
        if asked_expiry is not None:
            # WeChat moves a time_expire under a minute away, or beyond 90 days, to those bounds.
            expires_at = min(max(asked_expiry, now + EXPIRE_MIN), now + EXPIRE_MAX)
        trade = SimTrade(channel=Channel.WECHAT, out_trade_no=no, amount_fen=total,
                         notify_url=notify_url, kind=kind, description=description,
                         payer=openid if kind == "jsapi" else None, expires_at=expires_at,
                         created_at=now,
                         extra={"appid": self.config.appid, "attach": attach,
                                "time_expire": asked_expiry})
        stored = self.state.put(trade)
        if stored is not trade:
            if stored.state in ("paid", "refunded"):
                raise _Refusal(400, "ORDERPAID", "该订单已支付")
            if stored.state == "closed":
                raise _Refusal(400, "ORDER_CLOSED", "订单已关闭")
            if ((stored.amount_fen, stored.kind, stored.description, stored.payer)
                    != (total, kind, description, trade.payer)):
                raise _Refusal(403, "OUT_TRADE_NO_USED", "商户订单号重复")
            # time_expire is set by the first order only and may not change after.
            if stored.extra.get("time_expire") != asked_expiry:
                raise _Refusal(400, "INVALID_REQUEST",
                               "time_expire仅在首次下单时可设置，不允许修改")
        seq = self.state.next_seq()
        if kind == "native":
            # Re-ordering with the same parameters returns the same QR.
            code_url = stored.extra.setdefault(
                "code_url", f"weixin://wxpay/bizpayurl/up?pr={seq:x}{secrets.token_hex(3)}"
                            "&groupid=00")
            return 200, {"code_url": code_url}
        prepay_id = f"wx{now.astimezone(CST):%Y%m%d%H%M%S}{_digits(seq, 10)}{secrets.token_hex(5)}"
        stored.extra["prepay_id"] = prepay_id
        return 200, {"prepay_id": prepay_id}

    @staticmethod
    def _time_expire(data: Mapping[str, Any], now: datetime) -> datetime | None:
        """time_expire as asked: RFC3339 with an offset, not already past (the business
        clock's now, the simulator's only now)."""
        if "time_expire" not in data:
            return None
        text = data["time_expire"]
        if not isinstance(text, str) or not _RFC3339.fullmatch(text):
            raise _Refusal(400, "PARAM_ERROR", "time_expire字符串必须是符合RFC3339的日期时间格式，"
                                               "如2015-05-20T13:29:35+08:00")
        moment = datetime.fromisoformat(text)
        if moment <= now:
            raise _Refusal(400, "PARAM_ERROR",
                           f"time_expire {text} 已过，支付结束时间须晚于当前时间 {_rfc3339(now)}")
        return moment

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
        reason = data.get("reason")
        if reason is not None and (not isinstance(reason, str)
                                   or len(reason.encode("utf-8")) > REFUND_REASON_MAX_BYTES):
            raise _Refusal(400, "PARAM_ERROR",
                           f"reason不可超过{REFUND_REASON_MAX_BYTES}个字节")
        notify_url = data.get("notify_url")
        if notify_url is not None:
            check_notify_url(notify_url, "notify_url", REFUND_NOTIFY_URL_MAX)
        amount = data.get("amount")
        if not isinstance(amount, dict) or amount.get("currency") != "CNY":
            raise _Refusal(400, "PARAM_ERROR", "amount需包含refund、total、currency(CNY)")
        refund_fen = _positive_fen(amount.get("refund"), "amount.refund")
        total_fen = _positive_fen(amount.get("total"), "amount.total")
        trade = self.state.get(Channel.WECHAT, no)
        if trade is None:
            raise _Refusal(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        self.state.refund_seen(out_refund_no, "call")
        if self.state.hold_refund(Channel.WECHAT, out_refund_no, "before_effect"):
            raise _Refusal(500, "SYSTEM_ERROR", "系统错误")     # lost on its way in: not done
        record: dict[str, Any] = {}
        made: list[bool] = []
        refund_id = f"5030{_digits(self.state.next_seq(), 25)}"   # not inside update(): same lock
        status = "PROCESSING" if self.refunds_processing else "SUCCESS"

        def apply(t: SimTrade) -> None:
            for r in t.refunds:
                if r["out_refund_no"] == out_refund_no:
                    if r["refund_fen"] != refund_fen:
                        raise _Refusal(400, "INVALID_REQUEST", "退款单号已存在，请求参数不一致")
                    record.update(r)
                    return
            if t.state not in ("paid", "refunded"):
                raise _Refusal(400, "INVALID_REQUEST", "订单未支付，不能退款")
            paid = t.paid_fen if t.paid_fen is not None else t.amount_fen
            if total_fen != paid:
                raise _Refusal(400, "INVALID_REQUEST", "订单金额total与原订单不一致")
            now = self.state.now()
            if t.paid_at is not None and now > t.paid_at + REFUND_WINDOW:
                raise _Refusal(400, "INVALID_REQUEST", "订单已超过退款期限（支付成功后一年内）")
            if refund_fen > paid - t.refunded_fen:
                raise _Refusal(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            record.update({
                "out_refund_no": out_refund_no,
                "refund_id": refund_id,
                "refund_fen": refund_fen, "total_fen": paid,
                "reason": reason, "notify_url": notify_url,
                "status": status, "create_time": now,
                "success_time": now if status == "SUCCESS" else None,
            })
            t.refunds.append(dict(record))
            t.refunded_fen += refund_fen
            t.state = "refunded"
            made.append(True)

        with self._refund_lock:
            # 商户退款单号 is unique per merchant, not per trade.
            owner = self._refund_trades.get(out_refund_no)
            if owner is not None and owner != no:
                raise _Refusal(400, "INVALID_REQUEST", "退款单号已用于其他订单")
            self.state.update(trade, apply)
            self._refund_trades[out_refund_no] = no
        if made:
            self.state.refund_seen(out_refund_no, "effect")
        self.state.hold_refund(Channel.WECHAT, out_refund_no, "after_effect")
        return 200, self._refund_json(trade, record)

    def _find_refund(self, out_refund_no: str) -> tuple[SimTrade, dict[str, Any]] | None:
        with self._refund_lock:
            no = self._refund_trades.get(out_refund_no)
        trade = self.state.get(Channel.WECHAT, no) if no is not None else None
        if trade is None:
            return None
        found: list[dict[str, Any]] = []
        self.state.update(trade, lambda t: found.extend(
            dict(r) for r in t.refunds if r["out_refund_no"] == out_refund_no))
        return (trade, found[0]) if found else None

    def _query_refund(self, out_refund_no: str) -> tuple[int, Mapping[str, Any]]:
        self.state.refund_seen(out_refund_no, "query")
        found = self._find_refund(out_refund_no)
        if found is None:
            raise _Refusal(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return 200, self._refund_json(*found)

    def settle_refund(self, out_refund_no: str, status: str) -> tuple[SimTrade, dict[str, Any]]:
        """End a PROCESSING refund: SUCCESS, ABNORMAL (the money could not reach the payer)
        or CLOSED (given back to the refundable amount)."""
        found = self._find_refund(out_refund_no)
        if found is None:
            raise LookupError(f"the simulator has no WeChat refund {out_refund_no}")
        trade = found[0]
        settled: dict[str, Any] = {}

        def apply(t: SimTrade) -> None:
            r = next(r for r in t.refunds if r["out_refund_no"] == out_refund_no)
            if r["status"] != "PROCESSING":
                raise ValueError(f"refund {out_refund_no} is {r['status']}, not PROCESSING")
            r["status"] = status
            if status == "SUCCESS":
                r["success_time"] = self.state.now()
            elif status == "CLOSED":
                t.refunded_fen -= r["refund_fen"]
                if t.refunded_fen == 0:
                    t.state = "paid"
            settled.update(r)

        self.state.update(trade, apply)
        return trade, settled

    def _refund_json(self, trade: SimTrade, r: Mapping[str, Any]) -> dict[str, Any]:
        doc = {
            "refund_id": r["refund_id"], "out_refund_no": r["out_refund_no"],
            "transaction_id": trade.transaction_id, "out_trade_no": trade.out_trade_no,
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "create_time": _rfc3339(r["create_time"]),
            "status": r["status"], "funds_account": "AVAILABLE",
            "amount": {"total": r["total_fen"], "refund": r["refund_fen"],
                       "payer_total": r["total_fen"], "payer_refund": r["refund_fen"],
                       "settlement_refund": r["refund_fen"], "settlement_total": r["total_fen"],
                       "discount_refund": 0, "currency": "CNY", "from": []},
        }
        if r.get("success_time") is not None:
            doc["success_time"] = _rfc3339(r["success_time"])
        return doc

    # ------------------------------------------------------------------ bills
    def _tradebill(self, params: Mapping[str, str], here: str) -> tuple[int, Mapping[str, Any]]:
        text = params.get("bill_date", "")
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise _Refusal(400, "PARAM_ERROR", "bill_date格式应为yyyy-MM-DD") from None
        if params.get("bill_type", "ALL") != "ALL":
            raise _Refusal(400, "PARAM_ERROR", "沙箱仅提供bill_type=ALL的交易账单")
        tar_type = params.get("tar_type")
        if tar_type not in (None, "GZIP"):
            raise _Refusal(400, "PARAM_ERROR", "tar_type仅支持GZIP")
        now = self.state.now()
        today = now.astimezone(CST).date()
        if day >= today:
            raise _Refusal(400, "INVALID_REQUEST", "bill_date只能是今天之前的日期")
        if day < oldest_bill_day(today):
            raise _Refusal(400, "INVALID_REQUEST", "仅支持三个月内的账单下载申请，请检查bill_date")
        if now < bill_published_at(day):
            raise _Refusal(400, "STATEMENT_CREATING", "账单生成中")
        trades = self.state.trades(Channel.WECHAT)
        if not active_on(trades, day):
            raise _Refusal(400, "NO_STATEMENT_EXIST", "请求的账单文件不存在")
        # imported here: the statements module may use this one's helpers
        from payment_adapters.sandbox.statements import render_statement

        content = render_statement(Channel.WECHAT, trades, day, fee_rate=self.fee_rate)
        if content[:2] == b"\x1f\x8b":           # rendered already compressed
            content = gzip.decompress(content)
        token = self.bill_links.issue({"content": content, "gzip": tar_type == "GZIP"})
        url = f"{here}/v3/billdownload/file?token={token}"
        if tar_type == "GZIP":
            url += "&tartype=gzip"
        return 200, {"hash_type": "SHA1",
                     # of the bill itself (a gzip must be decompressed first), as WeChat's
                     # 原始账单（gzip需要解压缩）的摘要值
                     "hash_value": hashlib.sha1(content).hexdigest(),  # noqa: S324
                     "download_url": url}

    def _billdownload(self, token: str) -> Response:
        link, why = self.bill_links.redeem(token)
        if link is None:
            return _error(400, "INVALID_REQUEST",
                          f"账单地址无效（{why}），请按第一步申请账单的API指引，重新获取账单地址后再请求")
        content: bytes = link["content"]
        if self.state.faults[Channel.WECHAT].corrupt_statement:
            content = damaged(content)
        if link["gzip"]:
            body = gzip.compress(content, mtime=0)
            media_type = "application/x-gzip"
        else:
            body, media_type = content, "text/plain; charset=utf-8"
        # The file is not signed (no Wechatpay-Signature): its SHA1 is the check.
        return Response(body, status_code=200, media_type=media_type,
                        headers={"Request-ID": f"08{secrets.token_hex(15).upper()}-0"})

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
        if status == "PROCESSING":
            raise ValueError(f"refund {refund['out_refund_no']} is still PROCESSING: WeChat "
                             "notifies a refund's end")
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
            body, timestamp=timestamp, key=self._stranger_key() if bad_signature else None,
            probe=probe)
        headers["Content-Type"] = "application/json"
        headers["Request-ID"] = f"08{secrets.token_hex(15).upper()}-0"
        return OutgoingNotification(url=url, headers=headers, body=body)

    def _stranger_key(self) -> rsa.RSAPrivateKey:
        if self._stranger is None:
            self._stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._stranger
