"""UnionPay as the ChinaUMS (银联商务) bills QR code, the "银商二维码" (instMid QRPAYDEFAULT)."""

from payment_adapters.unionpay.client import (
    UnionpayClient,
    bill_date_of,
    make_bill_no,
    refund_order_id,
)
from payment_adapters.unionpay.notify import UnionpayNotificationVerifier

__all__ = ["UnionpayClient", "UnionpayNotificationVerifier", "bill_date_of", "make_bill_no",
           "refund_order_id"]
