"""WeChat Pay APIv3 notifications (支付/退款结果回调通知).

Verified with ``cryptography`` through :class:`~payment_adapters.wechat.keys.WechatPayKeys`
(the key chosen by ``Wechatpay-Serial``, as for API answers) rather than
``wechatpayv3.callback``: the library has no timestamp window, raises on a missing
Wechatpay-Signature-Type and goes to the network for an unknown Wechatpay-Serial. The tests
also run the real library on the simulator's output.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from payment_adapters.base import (
    Channel,
    HttpAnswer,
    Notification,
    NotificationKind,
    VerificationFailed,
    WechatConfig,
)
from payment_adapters.wechat.client import parse_rfc3339
from payment_adapters.wechat.keys import WechatPayKeys

REFUND_EVENTS = frozenset({"REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED"})
REFUND_STATUSES = frozenset({"SUCCESS", "ABNORMAL", "CLOSED", "CLOSE"})   # both spellings seen


def _fen(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _text(doc: Mapping[str, Any], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise VerificationFailed(f"decrypted resource lacks {field}")
    return value


class WechatNotificationVerifier:
    """``NotificationVerifier`` for WeChat Pay APIv3 (public key and/or platform certificates)."""

    channel = Channel.WECHAT

    def __init__(self, config: WechatConfig) -> None:
        apiv3_key = config.apiv3_key.encode("utf-8")
        if len(apiv3_key) != 32:
            raise ValueError("the APIv3 key must be 32 bytes")
        self.config = config
        self.keys = WechatPayKeys.from_config(config)
        self._aead = AESGCM(apiv3_key)

    # ------------------------------------------------------------------ verify
    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        """``now`` is real time: the timestamp window and certificate validity use it."""
        self.keys.verify(headers, body, now)
        event = self._parse_event(body)
        plain = self._decrypt(event["resource"])
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise VerificationFailed("notification without id")
        event_type = event.get("event_type")
        raw = {**event, "resource": plain}
        if event_type == "TRANSACTION.SUCCESS":
            return self._payment(event_id, plain, raw)
        if event_type in REFUND_EVENTS:
            return self._refund(event_id, event_type, plain, raw)
        return self._other(event_id, plain, raw)

    def _parse_event(self, body: bytes) -> dict[str, Any]:
        try:
            event = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise VerificationFailed("body is not UTF-8 JSON") from exc
        if not isinstance(event, dict) or event.get("resource_type") != "encrypt-resource":
            raise VerificationFailed("resource_type is not encrypt-resource")
        resource = event.get("resource")
        if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise VerificationFailed("resource is not AEAD_AES_256_GCM")
        return event

    def _decrypt(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        nonce, ciphertext = resource.get("nonce"), resource.get("ciphertext")
        associated = resource.get("associated_data") or ""
        if not (isinstance(nonce, str) and nonce and isinstance(ciphertext, str)
                and isinstance(associated, str)):
            raise VerificationFailed("resource lacks nonce/ciphertext")
        try:
            clear = self._aead.decrypt(nonce.encode(), base64.b64decode(ciphertext, validate=True),
                                       associated.encode())
            plain = json.loads(clear.decode("utf-8"))
        except (InvalidTag, binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise VerificationFailed("resource does not decrypt with our APIv3 key") from exc
        if not isinstance(plain, dict):
            raise VerificationFailed("decrypted resource is not a JSON object")
        return plain

    def _check_merchant(self, plain: Mapping[str, Any], *, appid_required: bool) -> None:
        if plain.get("mchid") != self.config.mchid:
            raise VerificationFailed(f"mchid {plain.get('mchid')!r} is not ours")
        if (appid_required or "appid" in plain) and plain.get("appid") != self.config.appid:
            raise VerificationFailed(f"appid {plain.get('appid')!r} is not ours")

    def _payment(self, event_id: str, plain: dict[str, Any], raw: dict[str, Any]) -> Notification:
        self._check_merchant(plain, appid_required=True)
        out_trade_no = _text(plain, "out_trade_no")
        trade_state = _text(plain, "trade_state")
        amount = plain.get("amount")
        total = _fen(amount.get("total")) if isinstance(amount, Mapping) else None
        if total is None:
            raise VerificationFailed("decrypted resource lacks amount.total")
        succeeded = trade_state == "SUCCESS"
        paid_at = parse_rfc3339(plain.get("success_time"))
        transaction_id = plain.get("transaction_id")
        if succeeded and (paid_at is None or not isinstance(transaction_id, str)
                          or not transaction_id):
            raise VerificationFailed("a SUCCESS payment without transaction_id or success_time")
        return Notification(
            channel=Channel.WECHAT, kind="payment", dedupe_key=event_id,
            out_trade_no=out_trade_no, trade_state=trade_state, succeeded=succeeded,
            amount_fen=total,
            transaction_id=transaction_id if isinstance(transaction_id, str) else None,
            paid_at=paid_at, app_id=plain["appid"], merchant_id=plain["mchid"], raw=raw)

    def _refund(self, event_id: str, event_type: str, plain: dict[str, Any],
                raw: dict[str, Any]) -> Notification:
        # Refund resources carry mchid but no appid.
        self._check_merchant(plain, appid_required=False)
        out_trade_no = _text(plain, "out_trade_no")
        out_refund_no = _text(plain, "out_refund_no")
        # WeChat's refund id (微信退款单号): what its bills show, so what reconciliation matches.
        refund_id = _text(plain, "refund_id")
        status = _text(plain, "refund_status")
        if status not in REFUND_STATUSES:
            raise VerificationFailed(f"unknown refund_status {status!r}")
        succeeded = status == "SUCCESS"
        if succeeded != (event_type == "REFUND.SUCCESS"):
            raise VerificationFailed(f"{event_type} with refund_status {status}")
        amount = plain.get("amount")
        total = _fen(amount.get("total")) if isinstance(amount, Mapping) else None
        refund = _fen(amount.get("refund")) if isinstance(amount, Mapping) else None
        if total is None or refund is None:
            raise VerificationFailed("decrypted refund lacks amount.total/amount.refund")
        transaction_id = plain.get("transaction_id")
        return Notification(
            channel=Channel.WECHAT, kind="refund", dedupe_key=event_id,
            out_trade_no=out_trade_no, trade_state=status, succeeded=succeeded,
            amount_fen=total,
            transaction_id=transaction_id if isinstance(transaction_id, str) else None,
            paid_at=parse_rfc3339(plain.get("success_time")), app_id=plain.get("appid"),
            merchant_id=plain["mchid"], out_refund_no=out_refund_no, refund_fen=refund,
            refund_id=refund_id, raw=raw)

    def _other(self, event_id: str, plain: dict[str, Any], raw: dict[str, Any]) -> Notification:
        """A genuine event of a type we do not act on: acknowledged, changes nothing."""
        self._check_merchant(plain, appid_required=False)
        kind: NotificationKind = "other"
        out_trade_no = plain.get("out_trade_no")
        return Notification(
            channel=Channel.WECHAT, kind=kind, dedupe_key=event_id,
            out_trade_no=out_trade_no if isinstance(out_trade_no, str) else "",
            trade_state=str(raw.get("event_type")), succeeded=False, amount_fen=0,
            merchant_id=plain["mchid"], raw=raw)

    # ------------------------------------------------------------------ answers
    def success_answer(self) -> HttpAnswer:
        """验签通过: HTTP 204, no body."""
        return HttpAnswer(status=204, body=b"", media_type="application/json")

    def failure_answer(self, reason: str) -> HttpAnswer:
        body = json.dumps({"code": "FAIL", "message": reason[:200]}, ensure_ascii=False)
        return HttpAnswer(status=400, body=body.encode("utf-8"), media_type="application/json")
