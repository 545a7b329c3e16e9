"""Receipt views of every kind, as the receipts service builds them (masked by
backend.security.pii), with a verify URL as long as a real token's: the render tests and
bench/receipt_render.py draw these."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import date, datetime

from backend.clock import SHANGHAI
from backend.receipts.view import ReceiptItem, ReceiptRefund, ReceiptView
from backend.security.pii import mask_id_number, mask_name

BASE_URL = "https://jiaofei.example.gov.cn"
PAID_AT = datetime(2021, 10, 15, 14, 3, 22, tzinfo=SHANGHAI)
BUSINESS_DATE = date(2021, 10, 15)
# full identity numbers (valid check digits); only their masked forms may be printed
FULL_IDS = ("370406195802151234", "37040619600312562X", "370406198507223415",
            "370406201203180026")
NAMES = ("张三丰", "李梅", "王小芳", "欧阳娜娜")
KINDS = ("household", "cash", "department", "refunded")


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def verify_url(receipt_no: str, channel: str, items: tuple[ReceiptItem, ...],
               amount_fen: int, payer: str, payer_id: str | None, agent: str | None = None,
               paper: str | None = None, order_no: str = "") -> str:
    """A URL shaped like the service's: the canonical JSON (design: notes/receipts.md) and
    64 bytes standing in for the Ed25519 signature, so the QR code is as dense as a real
    one."""
    canonical = json.dumps(
        [1, receipt_no, channel, BUSINESS_DATE.isoformat(), PAID_AT.isoformat(), amount_fen,
         payer, payer_id,
         [[i.insurance, i.amount_fen, i.name, i.id_number_masked, i.count] for i in items],
         agent, paper, order_no], ensure_ascii=False, separators=(",", ":")).encode()
    signature = hashlib.sha512(canonical).digest()
    return f"{BASE_URL}/r/{_b64(canonical)}.{_b64(signature)}"


def view(kind: str = "household", n: int = 123, *, amount_fen: int | None = None,
         refunded_fen: int = 0) -> ReceiptView:
    """A receipt of ``kind`` (household: an online payment for 4 items of 2 residents;
    cash: an agent's collection, one resident; department: a bill's cover; refunded: the
    household one with a refund beside it), ``n`` making the numbers (and the QR) differ."""
    receipt_no = f"R{BUSINESS_DATE:%Y%m%d}{n:08d}"
    order_no = f"O{BUSINESS_DATE:%Y%m%d}{n:010d}"
    agent = paper = None
    payer_id: str | None
    if kind in ("household", "refunded"):
        people = [(mask_name(NAMES[i]), mask_id_number(FULL_IDS[i])) for i in (0, 1)]
        items = tuple(ReceiptItem(ins, fen, name, idm)
                      for name, idm in people
                      for ins, fen in (("pension", 38_000), ("medical", 35_000)))
        payer, payer_id, channel, k = people[0][0], people[0][1], "wechat", "online"
    elif kind == "cash":
        payer, payer_id = mask_name(NAMES[3]), mask_id_number(FULL_IDS[3])
        items = (ReceiptItem("pension", 20_000, payer, payer_id),
                 ReceiptItem("medical", 35_000, payer, payer_id))
        channel, k, agent, paper = "cash", "agent", "东村代办员 王*", f"No.{n % 10**7:07d}"
    elif kind == "department":
        payer, payer_id = "店子镇人民政府民政办公室（低保、特困人员代缴）", None
        items = (ReceiptItem("pension", 10_000 * 126, count=126),
                 ReceiptItem("medical", 35_000 * 131, count=131))
        channel, k = "department", "department"
    else:
        raise ValueError(kind)
    if amount_fen is not None:
        items = (ReceiptItem(items[0].insurance, amount_fen, items[0].name,
                             items[0].id_number_masked, items[0].count),)
    total = sum(i.amount_fen for i in items)
    refunds: tuple[ReceiptRefund, ...] = ()
    if kind == "refunded" and not refunded_fen:
        refunded_fen = 35_000
    if refunded_fen:
        refunds = (ReceiptRefund(refunded_fen, datetime(2021, 10, 20, 9, 30, tzinfo=SHANGHAI),
                                 "重复缴费，原路退回"),)
    return ReceiptView(
        receipt_no=receipt_no, kind=k, payer_name=payer, payer_id_number_masked=payer_id,
        items=items, amount_fen=total, channel=channel, paid_at=PAID_AT,
        business_date=BUSINESS_DATE, year=2021, order_no=order_no, agent=agent,
        paper_receipt_no=paper,
        verify_url=verify_url(receipt_no, channel, items, total, payer, payer_id, agent,
                              paper, order_no),
        refunded_fen=refunded_fen, refunds=refunds)
