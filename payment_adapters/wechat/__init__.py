"""WeChat Pay (微信支付) APIv3 in public-key mode: the client and the notification verifier."""

from payment_adapters.wechat.client import WechatPayClient
from payment_adapters.wechat.notify import WechatNotificationVerifier

__all__ = ["WechatNotificationVerifier", "WechatPayClient"]
