"""Alipay asynchronous notifications (异步通知): verify the form POST and normalize it.

Alipay POSTs ``application/x-www-form-urlencoded`` fields to the ``notify_url`` and signs them
with its RSA2 key: every received field except ``sign`` and ``sign_type``, empty values skipped
(as the official Java SDK does), sorted by key, joined ``k=v&…`` with decoded values. It
resends until the body ``success`` comes back (8 times in about 25 h).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import parse_qsl

from alipay import AliPay
from alipay.exceptions import AliPayException
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from payment_adapters.alipay.client import parse_beijing, yuan_to_fen
from payment_adapters.base import (
    AlipayConfig,
    Channel,
    HttpAnswer,
    Notification,
    NotificationKind,
    VerificationFailed,
)

_TRADE_STATUSES = {"WAIT_BUYER_PAY", "TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED"}
# Alipay's charset names → the Python codec that reproduces the bytes it signed.
_CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gbk",
             "gb18030": "gb18030"}
_CHARSET_FIELD = re.compile(rb"(?:^|&)charset=([A-Za-z0-9_.-]{1,20})(?:&|$)")
_CHARSET_PARAM = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9_.-]{1,20})", re.IGNORECASE)
_MAX_FIELDS = 200


class AlipayNotificationVerifier:
    """``NotificationVerifier`` for Alipay ``trade_status_sync`` notifications.

    ``TRADE_SUCCESS`` and ``TRADE_FINISHED`` report the trade paid (``succeeded``): a trade
    that allows no refunds goes straight to ``TRADE_FINISHED``, so it may be the only word
    of the money. Neither is ever *new* money twice: the service keys a payment by the
    channel's ``trade_no``. ``TRADE_CLOSED`` (expired unpaid, or fully refunded) is verified
    and returned with ``succeeded=False``.
    """

    channel = Channel.ALIPAY

    def __init__(self, config: AlipayConfig) -> None:
        self._config = config
        self._sdk = AliPay(
            appid=config.appid,
            app_private_key_string=config.app_private_key_pem,
            alipay_public_key_string=config.alipay_public_key_pem,
            sign_type="RSA2",
        )
        public = serialization.load_pem_public_key(config.alipay_public_key_pem.encode())
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError("the Alipay public key is not an RSA key")
        self._public_key = public

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        charset = _charset(headers, body)
        fields = _parse_form(body, charset)
        if "charset" in fields and _CHARSETS.get(fields["charset"].lower()) != charset:
            raise VerificationFailed(f"charset field {fields['charset']!r} is not usable")
        self._check_signature(fields, charset)

        def need(name: str) -> str:
            value = fields.get(name, "")
            if not value:
                raise VerificationFailed(f"signed notification lacks {name}")
            return value

        if need("app_id") != self._config.appid:
            raise VerificationFailed(f"app_id {fields['app_id']!r} is not ours")
        if need("seller_id") != self._config.seller_id:
            raise VerificationFailed(f"seller_id {fields['seller_id']!r} is not ours")
        if need("notify_type") != "trade_status_sync":
            raise VerificationFailed(f"unexpected notify_type {fields['notify_type']!r}")
        status = need("trade_status")
        if status not in _TRADE_STATUSES:
            raise VerificationFailed(f"unknown trade_status {status!r}")
        notify_id, out_trade_no = need("notify_id"), need("out_trade_no")
        trade_no = need("trade_no")
        amount_fen = _fen(need("total_amount"), "total_amount")
        if amount_fen <= 0:
            raise VerificationFailed("total_amount must be positive")
        paid_at = _time(fields.get("gmt_payment", ""), "gmt_payment")

        # A refund shows up as refund fields on a trade_status_sync (TRADE_SUCCESS after a
        # partial refund, TRADE_CLOSED after a full one). refund_fee=0.00 alone is not one:
        # Alipay's own sample payment notification carries it.
        refund_fee = fields.get("refund_fee", "")
        refund_fen = _fen(refund_fee, "refund_fee") if refund_fee else None
        is_refund = bool(fields.get("gmt_refund") or fields.get("out_biz_no")
                         or (refund_fen or 0) > 0)
        kind: NotificationKind = "refund" if is_refund else "payment"
        succeeded = ((refund_fen or 0) > 0 if is_refund
                     else status in ("TRADE_SUCCESS", "TRADE_FINISHED"))

        return Notification(
            channel=Channel.ALIPAY,
            kind=kind,
            # notify_id is the same on every resend of one notification and differs between
            # events (TRADE_SUCCESS, later TRADE_FINISHED, a refund). The status is added so
            # that two statuses can never collapse into one even if an id were reused.
            dedupe_key=f"{notify_id}:{status}",
            out_trade_no=out_trade_no,
            trade_state=status,
            succeeded=succeeded,
            amount_fen=amount_fen,
            transaction_id=trade_no,
            paid_at=paid_at,
            app_id=fields["app_id"],
            merchant_id=fields["seller_id"],
            out_refund_no=(fields.get("out_biz_no") or None) if is_refund else None,
            refund_fen=refund_fen if is_refund else None,   # cumulative: Alipay's 总退款金额
            raw=dict(fields),
        )

    def success_answer(self) -> HttpAnswer:
        return HttpAnswer(status=200, body=b"success")

    def failure_answer(self, reason: str) -> HttpAnswer:
        # Anything but the exact body "success" makes Alipay resend; the reason is only logged.
        return HttpAnswer(status=200, body=b"fail")

    # ------------------------------------------------------------------ internals
    def _check_signature(self, fields: Mapping[str, str], charset: str) -> None:
        sign = fields.get("sign", "")
        if not sign:
            raise VerificationFailed("no sign")
        if fields.get("sign_type") != "RSA2":
            raise VerificationFailed(f"sign_type {fields.get('sign_type')!r} is not RSA2")
        try:
            raw_sign = base64.b64decode(sign, validate=True)
        except (binascii.Error, ValueError):
            raise VerificationFailed("sign is not base64 (a '+' decoded as a space?)") from None
        # Every received field but sign (the SDK drops sign_type itself), empties skipped.
        signed = {k: v for k, v in fields.items() if k != "sign" and v != ""}
        if charset == "utf-8":
            try:
                ok = bool(self._sdk.verify(dict(signed), sign))   # verify() mutates its input
            except (AliPayException, ValueError, TypeError) as exc:
                raise VerificationFailed(f"signature check failed: {exc}") from None
        else:
            # The SDK hashes the UTF-8 bytes; Alipay signs in the notification's charset.
            content = "&".join(f"{k}={v}" for k, v in sorted(signed.items())
                               if k != "sign_type")
            try:
                self._public_key.verify(raw_sign, content.encode(charset),
                                        padding.PKCS1v15(), hashes.SHA256())
                ok = True
            except (InvalidSignature, UnicodeEncodeError):
                ok = False
        if not ok:
            raise VerificationFailed("signature does not verify with the Alipay public key")


def _charset(headers: Mapping[str, str], body: bytes) -> str:
    """The ``charset`` field (what Alipay signs in), else the Content-Type's, else UTF-8."""
    found = _CHARSET_FIELD.findall(body)
    if len(found) > 1:
        raise VerificationFailed("charset given twice")
    name: str | None = found[0].decode("ascii") if found else None
    if name is None:
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        match = _CHARSET_PARAM.search(ctype)
        name = match.group(1) if match else "utf-8"
    codec = _CHARSETS.get(name.lower())
    if codec is None:
        raise VerificationFailed(f"unsupported charset {name!r}")
    return codec


def _parse_form(body: bytes, charset: str) -> dict[str, str]:
    """Decode the form exactly once, one value per key, nothing trimmed."""
    try:
        pairs = parse_qsl(body.decode(charset), keep_blank_values=True, strict_parsing=True,
                          encoding=charset, errors="strict", max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationFailed(f"body is not a {charset} form: {exc}") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise VerificationFailed(f"field {key!r} given twice")
        fields[key] = value
    if not fields:
        raise VerificationFailed("empty body")
    return fields


def _fen(value: str, name: str) -> int:
    try:
        return yuan_to_fen(value)
    except ValueError:
        raise VerificationFailed(f"{name} {value!r} is not a yuan amount with 2 decimals") from None


def _time(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return parse_beijing(value)
    except ValueError:
        raise VerificationFailed(f"{name} {value!r} is not yyyy-MM-dd HH:mm:ss") from None
