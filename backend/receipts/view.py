"""What a receipt shows: the one shape the JSON answer, the public page and the PDF/PNG
renderings are made from.

Everything personal in it is masked already (``张*``, ``370406********1234``): a receipt is
handed around, printed and scanned, so it carries no more than the publications do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

#: The insurances' names as printed.
INSURANCE_LABELS = {"pension": "城乡居民基本养老保险", "medical": "城乡居民基本医疗保险"}
#: How each channel is printed.
CHANNEL_LABELS = {"wechat": "微信支付", "alipay": "支付宝", "unionpay": "银联(银商)",
                  "cash": "现金(代办员代收)", "pos": "POS刷卡(代办员代收)",
                  "department": "部门代缴"}


@dataclass(frozen=True)
class ReceiptItem:
    insurance: str                    # pension | medical
    amount_fen: int
    name: str | None = None           # masked: whose item it is (a household pays several)
    id_number_masked: str | None = None
    count: int = 1                    # a department receipt sums a bill's items per insurance


@dataclass(frozen=True)
class ReceiptRefund:
    amount_fen: int
    refunded_at: datetime             # aware, business clock
    reason: str | None = None


@dataclass(frozen=True)
class ReceiptView:
    receipt_no: str
    kind: str                         # online | agent | department
    payer_name: str                   # masked name, or the department's name
    payer_id_number_masked: str | None
    items: tuple[ReceiptItem, ...]
    amount_fen: int
    channel: str                      # wechat | alipay | unionpay | cash | pos | department
    paid_at: datetime                 # aware, Asia/Shanghai
    business_date: date
    year: int
    order_no: str
    agent: str | None = None          # cash and POS: the agent who took the money
    paper_receipt_no: str | None = None
    verify_url: str = ""              # PUBLIC_BASE_URL/r/<token>: what the QR code carries
    # shown beside the receipt, never part of what is signed
    refunded_fen: int = 0
    refunds: tuple[ReceiptRefund, ...] = field(default_factory=tuple)
