"""Receipts (缴费凭证): issued once per payment, signed, checkable by anyone.

- **The number** is derived from the payment: ``R`` + its business date (YYYYMMDD) + its id
  zero-padded to 8 digits (``R2020110200000123``). Parsing it back gives the payment; a
  date part that is not the payment's is an unknown receipt.
- **Issuing** fixes the content: when a payment's receipt is issued — by the worker seconds
  after a channel's payment (``receipts.sweep``), with the payment for an agent's or a
  department's, or the first time anything asks for it before that — its
  canonical content is built from the payment, signed with the service's Ed25519 key and
  inserted if absent (``ON CONFLICT DO NOTHING``), then read back — whoever inserted first,
  every caller gets the same row. Nothing changes it afterwards (the table refuses UPDATE
  and DELETE): a refund is shown beside it, a corrected name in the registry is not.
- **Canonical content**: a compact JSON array, UTF-8, fixed order (``FORMAT`` 1)::

      [1, receipt_no, channel, business_date, paid_at (+08:00), amount_fen,
       payer_name_masked, payer_id_masked | null,
       [[insurance, amount_fen, name_masked | null, id_masked | null, count], ...],
       agent | null, paper_receipt_no | null, order_no, year]

- **The token** (what the QR code's URL ends in) is ``base64url(canonical) "."
  base64url(signature)``, both without padding: it carries what it vouches for, so it can
  be checked offline with the public key alone (``python -m backend receipts verify``).
  Online, ``/r/<token>`` also requires the issued row to hold exactly that content, and adds
  the live refund state.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.clock import SHANGHAI
from backend.config import ConfigError
from backend.errors import NotFound
from backend.receipts.models import Receipt
from backend.receipts.view import ReceiptItem, ReceiptRefund, ReceiptView
from backend.security.pii import mask_name
from backend.security.tokens import Principal

if TYPE_CHECKING:
    from backend.runtime import Runtime

FORMAT = 1
#: The longest token looked at: a household's 20 items with the longest names, agent and
#: paper receipt number stay well under it; anything longer is not ours.
MAX_TOKEN_CHARS = 4096
_NUMBER = re.compile(r"R(\d{8})(\d{8,15})")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_INSURANCES = ("pension", "medical")
#: What a refund's reason is shown as beside a receipt: the known reasons only (finance's
#: free text may name people; the page shows no more than the publications do).
REFUND_REASONS = {"duplicate": "重复缴费，原路退回", "deceased": "参保人身故退费"}


# --------------------------------------------------------------------------- numbers
def receipt_no_for(payment_id: int, business_date: date) -> str:
    return f"R{business_date:%Y%m%d}{payment_id:08d}"


def parse_receipt_no(receipt_no: str) -> tuple[date, int] | None:
    """(business date, payment id) of a well-formed receipt number, else None."""
    m = _NUMBER.fullmatch(receipt_no)
    if m is None:
        return None
    try:
        day = datetime.strptime(m.group(1), "%Y%m%d").date()
    except ValueError:
        return None
    payment_id = int(m.group(2))
    if receipt_no != receipt_no_for(payment_id, day):     # R…000000123 vs R…0000000123
        return None
    return day, payment_id


# --------------------------------------------------------------------------- content
@dataclass(frozen=True)
class Content:
    """What a receipt says: its canonical content, parsed."""

    receipt_no: str
    channel: str
    business_date: date
    paid_at: datetime              # aware, Asia/Shanghai, whole seconds
    amount_fen: int
    payer_name: str
    payer_id_masked: str | None
    items: tuple[ReceiptItem, ...]
    agent: str | None
    paper_receipt_no: str | None
    order_no: str
    year: int

    def canonical(self) -> bytes:
        return json.dumps(
            [FORMAT, self.receipt_no, self.channel, self.business_date.isoformat(),
             self.paid_at.astimezone(SHANGHAI).replace(microsecond=0).isoformat(),
             self.amount_fen, self.payer_name, self.payer_id_masked,
             [[i.insurance, i.amount_fen, i.name, i.id_number_masked, i.count]
              for i in self.items],
             self.agent, self.paper_receipt_no, self.order_no, self.year],
            ensure_ascii=False, separators=(",", ":")).encode()

    @property
    def kind(self) -> str:
        return {"cash": "agent", "pos": "agent", "department": "department"}.get(self.channel,
                                                                                  "online")

    @classmethod
    def parse(cls, canonical: bytes) -> Content:
        """The content of canonical bytes; ValueError for anything that is not exactly
        what this service writes (the bytes must also be their own canonical form)."""
        try:
            data = json.loads(canonical.decode())
            (version, receipt_no, channel, day, paid_at, amount, payer_name, payer_id, items,
             agent, paper_no, order_no, year) = data
            if version != FORMAT:
                raise ValueError(f"format {version!r}")
            content = cls(
                receipt_no=_text(receipt_no), channel=_text(channel),
                business_date=date.fromisoformat(_text(day)),
                paid_at=datetime.fromisoformat(_text(paid_at)).astimezone(SHANGHAI),
                amount_fen=_int(amount), payer_name=_text(payer_name),
                payer_id_masked=_text_or_none(payer_id),
                items=tuple(ReceiptItem(insurance=_text(i), amount_fen=_int(fen),
                                        name=_text_or_none(name),
                                        id_number_masked=_text_or_none(masked),
                                        count=_int(n))
                            for i, fen, name, masked, n in items),
                agent=_text_or_none(agent), paper_receipt_no=_text_or_none(paper_no),
                order_no=_text(order_no), year=_int(year))
        except (UnicodeDecodeError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a receipt's canonical content ({exc})") from None
        if parse_receipt_no(content.receipt_no) is None or content.canonical() != canonical:
            raise ValueError("not a receipt's canonical content")
        return content


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string was expected")
    return value


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("an integer was expected")
    return value


def content_of_payment(session: Session, payment_id: int) -> Content | None:
    """What the receipt of a payment says, from the payment, its order and lines, and the
    registry as it is now (issued once: later changes do not reach an issued receipt)."""
    from backend.agents.models import AgentCollection
    from backend.auth.models import StaffUser
    from backend.departments.service import NAMES
    from backend.orders.models import Order, OrderLine, Payment, PaymentLine
    from backend.residents.models import Resident, Village

    payment = session.get(Payment, payment_id)
    if payment is None:
        return None
    order = session.get(Order, payment.order_id)
    assert order is not None
    items: list[ReceiptItem]
    if payment.channel == "department":
        sums = {str(i): (int(fen), int(n)) for i, fen, n in session.execute(
            select(col(OrderLine.insurance), func.sum(col(PaymentLine.amount_fen)),
                   func.count())
            .select_from(PaymentLine)
            .join(OrderLine, (col(OrderLine.order_id) == order.id)
                  & (col(OrderLine.bill_line_id) == col(PaymentLine.bill_line_id)))
            .where(col(PaymentLine.payment_id) == payment_id)
            .group_by(col(OrderLine.insurance)))}
        items = [ReceiptItem(insurance=i, amount_fen=fen, count=n)
                 for i, (fen, n) in sorted(sums.items(), key=lambda kv: _order(kv[0]))]
        department = order.payer_sub.removeprefix("department:")
        payer_name, payer_id = NAMES.get(department, department), None
    else:
        rows = session.execute(
            select(col(OrderLine.insurance), col(PaymentLine.amount_fen), col(Resident.name),
                   col(Resident.id_masked))
            .select_from(PaymentLine)
            .join(OrderLine, (col(OrderLine.order_id) == order.id)
                  & (col(OrderLine.bill_line_id) == col(PaymentLine.bill_line_id)))
            .join(Resident, col(Resident.id) == col(OrderLine.resident_id))
            .where(col(PaymentLine.payment_id) == payment_id)
            .order_by(col(OrderLine.id))).all()
        items = [ReceiptItem(insurance=str(i), amount_fen=int(fen), name=mask_name(str(name)),
                             id_number_masked=str(masked)) for i, fen, name, masked in rows]
        # the payer: the first resident of the order's lines
        first = session.execute(
            select(col(Resident.name), col(Resident.id_masked))
            .join(OrderLine, col(OrderLine.resident_id) == col(Resident.id))
            .where(col(OrderLine.order_id) == order.id).order_by(col(OrderLine.id))
            .limit(1)).first()
        payer_name, payer_id = (mask_name(str(first[0])), str(first[1])) if first else ("", None)
    agent = paper_no = None
    if payment.channel in ("cash", "pos"):
        collected = session.execute(
            select(col(StaffUser.id), col(Village.name), col(AgentCollection.receipt_no))
            .join(StaffUser, col(StaffUser.id) == col(AgentCollection.agent_id))
            .outerjoin(Village, col(Village.code) == col(StaffUser.village_code))
            .where(col(AgentCollection.payment_id) == payment_id)).first()
        if collected is not None:
            agent_id, village_name, paper = collected
            agent, paper_no = agent_label(village_name, int(agent_id or 0)), str(paper)
    return Content(
        receipt_no=receipt_no_for(payment_id, payment.business_date), channel=payment.channel,
        business_date=payment.business_date,
        paid_at=payment.paid_at.astimezone(SHANGHAI).replace(microsecond=0),
        amount_fen=payment.amount_fen, payer_name=payer_name, payer_id_masked=payer_id,
        items=tuple(items), agent=agent, paper_receipt_no=paper_no, order_no=order.order_no,
        year=order.year)


def agent_label(village_name: str | None, agent_id: int) -> str:
    """The agent as a receipt names them: their village's agent and staff number
    (店子村代办员 工号3) — never the login name, half of a credential."""
    return f"{village_name or ''}代办员 工号{agent_id}"


def _order(insurance: str) -> int:
    return _INSURANCES.index(insurance) if insurance in _INSURANCES else len(_INSURANCES)


# --------------------------------------------------------------------------- keys and tokens
def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"RECEIPT_SIGNING_KEY is not a PEM private key without a password "
                          f"({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("RECEIPT_SIGNING_KEY must be an Ed25519 key "
                          "(openssl genpkey -algorithm ed25519)")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """A PEM public key (SubjectPublicKeyInfo), or a private key's public half."""
    key: Any
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(pem, password=None).public_key()
        except (ValueError, TypeError):
            raise ConfigError("the receipts' key is not a PEM public key (nor a private key "
                              "without a password)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("the receipts' key must be an Ed25519 key")
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    # One text per byte string: the last character's unused bits could otherwise be
    # anything, and a token with its last character changed would still verify.
    if b64url(raw) != text:
        raise ValueError("not the canonical base64url of its bytes")
    return raw


def sign(key: Ed25519PrivateKey, canonical: bytes) -> str:
    return b64url(key.sign(canonical))


def token_of(receipt: Receipt) -> str:
    return b64url(receipt.canonical.encode()) + "." + receipt.signature


def verify_url(public_base_url: str, token: str) -> str:
    return f"{public_base_url.rstrip('/')}/r/{token}"


def token_from(token_or_url: str) -> str:
    """The token of ``…/r/<token>`` (a scanned URL, with or without a query), or the text."""
    text = token_or_url.strip()
    if "/r/" in text:
        text = text.rsplit("/r/", 1)[1]
    return text.split("?", 1)[0].split("#", 1)[0]


@dataclass(frozen=True)
class Checked:
    """A token whose signature the key vouches for."""

    content: Content
    canonical: bytes
    signature: str


def check_token(public_key: Ed25519PublicKey, token: str) -> Checked | None:
    """The content a token vouches for, or None: malformed, too long, a signature the key
    did not make, or content that is not a receipt's. Needs no database."""
    return explain_token(public_key, token)[0]


def explain_token(public_key: Ed25519PublicKey, token: str) -> tuple[Checked | None, str]:
    """``check_token``, with why not (for the command line; never shown on the page)."""
    if len(token) > MAX_TOKEN_CHARS:
        return None, f"longer than {MAX_TOKEN_CHARS} characters"
    if token.count(".") != 1:
        return None, "not <content>.<signature>"
    payload, signature = token.split(".")
    try:
        canonical, sig = unb64url(payload), unb64url(signature)
    except ValueError:
        return None, "not base64url"
    if len(sig) != 64:
        return None, "the signature is not an Ed25519 signature"
    try:
        public_key.verify(sig, canonical)
    except InvalidSignature:
        return None, "the signature does not verify with this public key (changed or made up)"
    try:
        return Checked(Content.parse(canonical), canonical, signature), "valid"
    except ValueError:
        return None, "signed, but not a receipt's content"


# --------------------------------------------------------------------------- issuing
def issue(session: Session, key: Ed25519PrivateKey, payment_id: int, now: datetime
          ) -> Receipt | None:
    """The payment's receipt: the one issued already, or issued now (in the caller's
    transaction). Two callers at once both get the row the first one wrote. None for a
    payment that does not exist."""
    receipt = _issued(session, payment_id)
    if receipt is not None:
        return receipt
    if write_receipt(session, key, payment_id, now) is None:
        return None
    receipt = _issued(session, payment_id)
    assert receipt is not None       # ours, or the one that got there first
    return receipt


def write_receipt(session: Session, key: Ed25519PrivateKey, payment_id: int, now: datetime
                  ) -> bool | None:
    """Insert the payment's receipt, as the payment and the registry are now, unless it has
    one (``ON CONFLICT DO NOTHING``: whoever is first, one row). True when this wrote it,
    False when one was there, None for a payment that does not exist."""
    content = content_of_payment(session, payment_id)
    if content is None:
        return None
    canonical = content.canonical()
    values = {"receipt_no": content.receipt_no, "payment_id": payment_id,
              "canonical": canonical.decode(), "signature": sign(key, canonical),
              "issued_at": now}
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    written = session.execute(insert(Receipt).values(**values).on_conflict_do_nothing())
    return bool(written.rowcount)  # type: ignore[attr-defined]


def _issued(session: Session, payment_id: int) -> Receipt | None:
    return session.scalar(select(Receipt).where(col(Receipt.payment_id) == payment_id))


def by_number(session: Session, receipt_no: str) -> tuple[Receipt | None, int | None]:
    """(the issued receipt or None, the payment id) of a receipt number; (None, None) when
    the number names no payment (malformed, no such payment, or a wrong date part)."""
    from backend.orders.models import Payment

    parsed = parse_receipt_no(receipt_no)
    if parsed is None:
        return None, None
    day, payment_id = parsed
    payment = session.get(Payment, payment_id)
    if payment is None or payment.business_date != day:
        return None, None
    return _issued(session, payment_id), payment_id


# --------------------------------------------------------------------------- viewing
def refunds_beside(session: Session, payment_id: int) -> tuple[ReceiptRefund, ...]:
    """What was given back of a payment since, as it stands now: refunds done, and what a
    department bill's credit notes owe back to the department."""
    from backend.departments.models import (
        DepartmentBill,
        DepartmentCreditLine,
        DepartmentCreditNote,
    )
    from backend.orders.models import Refund

    out = [ReceiptRefund(amount_fen=r.amount_fen,
                         refunded_at=(r.refunded_at or r.updated_at).astimezone(SHANGHAI),
                         reason=REFUND_REASONS.get(r.reason, "退费"))
           for r in session.scalars(select(Refund).where(col(Refund.payment_id) == payment_id,
                                                         col(Refund.status) == "succeeded")
                                    .order_by(col(Refund.id)))]
    for credit_no, issued_at, fen in session.execute(
            select(col(DepartmentCreditNote.credit_no), col(DepartmentCreditNote.issued_at),
                   func.sum(col(DepartmentCreditLine.refund_fen)))
            .join(DepartmentCreditLine,
                  col(DepartmentCreditLine.credit_note_id) == col(DepartmentCreditNote.id))
            .join(DepartmentBill, col(DepartmentBill.id) == col(DepartmentCreditNote.bill_id))
            .where(col(DepartmentBill.payment_id) == payment_id)
            .group_by(col(DepartmentCreditNote.id), col(DepartmentCreditNote.credit_no),
                      col(DepartmentCreditNote.issued_at))
            .order_by(col(DepartmentCreditNote.id))):
        if fen:
            out.append(ReceiptRefund(amount_fen=int(fen),
                                     refunded_at=issued_at.astimezone(SHANGHAI),
                                     reason=f"冲减单 {credit_no}，应退部门"))
    return tuple(out)


def view_of(session: Session, receipt: Receipt, public_base_url: str) -> ReceiptView:
    """The receipt as issued, with what was refunded of it since beside it."""
    content = Content.parse(receipt.canonical.encode())
    refunds = refunds_beside(session, receipt.payment_id)
    return ReceiptView(
        receipt_no=content.receipt_no, kind=content.kind, payer_name=content.payer_name,
        payer_id_number_masked=content.payer_id_masked, items=content.items,
        amount_fen=content.amount_fen, channel=content.channel, paid_at=content.paid_at,
        business_date=content.business_date, year=content.year, order_no=content.order_no,
        agent=content.agent, paper_receipt_no=content.paper_receipt_no,
        verify_url=verify_url(public_base_url, token_of(receipt)),
        refunded_fen=sum(r.amount_fen for r in refunds), refunds=refunds)


# --------------------------------------------------------------------------- who may read
DISTRICT_ROLES = ("finance", "auditor", "admin")


def readable(session: Session, principal: Principal, payment_id: int) -> bool:
    """The payer (whoever made the order: a resident, or the agent who took the money), and
    staff in scope: finance, auditors and admins all; town staff their town's; an agent
    their village's residents'; a department user its own bills'."""
    from backend.orders.models import Order, OrderLine, Payment

    row = session.execute(select(col(Order.id), col(Order.payer_sub), col(Order.channel))
                          .join(Payment, col(Payment.order_id) == col(Order.id))
                          .where(col(Payment.id) == payment_id)).first()
    if row is None:
        return False
    order_id, payer_sub, channel = row
    if payer_sub == principal.sub or principal.role in DISTRICT_ROLES:
        return True
    if principal.role == "department":
        return channel == "department" and payer_sub == f"department:{principal.department}"
    if principal.role == "town_staff" and principal.town_code:
        where = col(OrderLine.town_code) == principal.town_code
    elif principal.role == "agent" and principal.village_code and channel != "department":
        where = col(OrderLine.village_code) == principal.village_code
    else:
        return False
    return session.scalar(select(col(OrderLine.id)).where(
        col(OrderLine.order_id) == order_id, where).limit(1)) is not None


def receipt_for(rt: Runtime, session: Session, principal: Principal, receipt_no: str
                ) -> ReceiptView:
    """The receipt of that number for a caller who may read it (issued now if it was not
    yet); the same 404 for a number that names nothing and one the caller may not see."""
    receipt, payment_id = by_number(session, receipt_no)
    if payment_id is None or not readable(session, principal, payment_id):
        raise NotFound(f"no receipt {receipt_no[:32]} for this caller")   # not echoed in full
    if receipt is None:
        receipt = issue(session, rt.receipt_key, payment_id, rt.clock.now())
        assert receipt is not None
    return view_of(session, receipt, rt.settings.public_base_url)


def order_receipt(rt: Runtime, session: Session, order_id: int,
                  transaction_id: str | None) -> Receipt | None:
    """The receipt of the payment that paid an order (the one whose transaction the order
    names; else its first), issued if it was not yet; None while nothing is paid."""
    from backend.orders.models import Payment

    payments = list(session.execute(select(col(Payment.id), col(Payment.transaction_id))
                                    .where(col(Payment.order_id) == order_id)
                                    .order_by(col(Payment.id))))
    if not payments:
        return None
    payment_id = next((pid for pid, txn in payments if txn == transaction_id), payments[0][0])
    return issue(session, rt.receipt_key, payment_id, rt.clock.now())  # type: ignore[arg-type]


def check_online(rt: Runtime, token: str) -> ReceiptView | None:
    """A token as the public page checks it: the signature (the service's key), then the
    issued receipt of that number holding exactly that content. The view has the refunds
    as they stand now; None for anything else."""
    from backend.db import unit_of_work

    checked = check_token(rt.receipt_key.public_key(), token)
    if checked is None:
        return None
    with unit_of_work(rt.sessions) as s:
        receipt = s.get(Receipt, checked.content.receipt_no)
        if receipt is None or receipt.canonical.encode() != checked.canonical:
            return None
        return view_of(s, receipt, rt.settings.public_base_url)
