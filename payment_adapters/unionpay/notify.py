"""ChinaUMS (银联商务) bills QR payment notifications (支付结果通知) to our notifyUrl.

A form POST (``application/x-www-form-urlencoded``) whose ``sign`` covers every received
field but ``sign`` itself, including the random two-letter fields ChinaUMS adds, with the
通讯密钥 appended; ``signType`` SHA256, or MD5 when it says so or is absent. We answer the
plain text ``SUCCESS``, or ``FAILED`` to have it sent again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from payment_adapters.base import (
    Channel,
    HttpAnswer,
    Notification,
    UnionpayConfig,
    VerificationFailed,
)
from payment_adapters.unionpay.client import (
    bill_amount,
    bill_payment,
    parse_beijing,
    sign_matches,
)

MAX_BODY = 64 * 1024


class UnionpayNotificationVerifier:
    """:class:`~payment_adapters.base.NotificationVerifier` for ChinaUMS bills QR."""

    channel = Channel.UNIONPAY

    def __init__(self, config: UnionpayConfig) -> None:
        self._config = config

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        fields = _form(body)
        if not sign_matches(fields, self._config.key, default_sign_type="MD5"):
            raise VerificationFailed("bad signature (sign does not match the 通讯密钥)")
        cfg = self._config
        if fields.get("mid") != cfg.mid:
            raise VerificationFailed(f"mid {fields.get('mid')!r} is not ours")
        if fields.get("tid") != cfg.tid:
            raise VerificationFailed(f"tid {fields.get('tid')!r} is not ours")
        bill_no = fields.get("billNo", "")
        if not bill_no.startswith(cfg.msg_src_id) or len(bill_no) <= len(cfg.msg_src_id):
            raise VerificationFailed(f"billNo {bill_no!r} is not of source {cfg.msg_src_id}")
        status = fields.get("billStatus", "")
        try:
            payment = bill_payment(fields.get("billPayment"))
            amount = bill_amount(fields, payment)
            pay_time = payment.get("payTime")
            paid_at = parse_beijing(pay_time) if pay_time else None
        except ValueError as exc:
            raise VerificationFailed(f"malformed notification: {exc}") from exc
        txn = _text(payment.get("targetOrderId"))
        if status == "PAID":
            # billNo is paid at most once; retries of its notification repeat paySeqId
            seq = _text(payment.get("paySeqId")) or fields.get("seqId") or txn or ""
            return Notification(
                channel=Channel.UNIONPAY, kind="payment",
                dedupe_key=f"{bill_no}:PAID:{seq}", out_trade_no=bill_no,
                trade_state=status, succeeded=payment.get("status") == "TRADE_SUCCESS",
                amount_fen=amount, transaction_id=txn, paid_at=paid_at,
                merchant_id=fields["mid"], raw=fields)
        # UNPAID / CLOSED / REFUND: the notes give no refund notification fields (no
        # refundOrderId), so refunds are confirmed by bills.refund's answer and bills.query.
        return Notification(
            channel=Channel.UNIONPAY, kind="other",
            dedupe_key=f"{bill_no}:{status}:{fields.get('notifyId', '')}",
            out_trade_no=bill_no, trade_state=status, succeeded=False, amount_fen=amount,
            transaction_id=txn, paid_at=paid_at, merchant_id=fields["mid"], raw=fields)

    def success_answer(self) -> HttpAnswer:
        return HttpAnswer(status=200, body=b"SUCCESS")

    def failure_answer(self, reason: str) -> HttpAnswer:
        return HttpAnswer(status=200, body=b"FAILED")


def _form(body: bytes) -> dict[str, str]:
    if len(body) > MAX_BODY:
        raise VerificationFailed(f"body of {len(body)} bytes is too large")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                          encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationFailed(f"not a UTF-8 form: {exc}") from exc
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise VerificationFailed(f"field {name!r} appears twice")
        fields[name] = value
    if not fields.get("sign"):
        raise VerificationFailed("no sign field")
    return fields


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
