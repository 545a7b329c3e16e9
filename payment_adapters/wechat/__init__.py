"""WeChat Pay (微信支付) APIv3 — public-key mode, platform-certificate mode, or both: the client
and the notification verifier; `keys` chooses the key that verifies WeChat Pay."""

from payment_adapters.wechat.client import WechatPayClient
from payment_adapters.wechat.notify import WechatNotificationVerifier

__all__ = ["WechatNotificationVerifier", "WechatPayClient"]
