"""Alipay open platform (支付宝开放平台), RSA2, 当面付 QR: client and notification verifier."""

from payment_adapters.alipay.client import AlipayClient
from payment_adapters.alipay.notify import AlipayNotificationVerifier

__all__ = ["AlipayClient", "AlipayNotificationVerifier"]
