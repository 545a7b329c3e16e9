"""An agent's money (代办员): cash and POS taken in person, and the day's cash handed over."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from backend.agents.models import AgentCollection
from backend.agents.schemas import CollectionIn, CollectionOut, RemittanceIn, RemittanceOut
from backend.audit import service as audit
from backend.clock import business_date
from backend.db import unit_of_work
from backend.errors import Conflict, Forbidden, ValidationFailed
from backend.ledger import service as ledger
from backend.ledger.models import REMITTED, LedgerAccount, Remittance
from backend.orders import service as orders
from backend.orders.models import Order, Payment
from backend.orders.payment_flow import AlreadyPaid, OrderFacts, PaymentFacts, apply_payment
from backend.receipts import reports as receipt_reports
from backend.receipts import service as receipts
from backend.receipts.schemas import receipt_out
from backend.residents.models import Village
from backend.runtime import Runtime
from backend.security.tokens import Principal, RefCodec


def agent_id(principal: Principal) -> int:
    if principal.role != "agent" or not principal.sub.startswith("staff:"):
        raise Forbidden("only a village agent records collections and remittances")
    return int(principal.sub.removeprefix("staff:"))


def record_collection(rt: Runtime, principal: Principal, body: CollectionIn) -> CollectionOut:
    """One receipt (收据) is one payment: the items are marked paid at once, all or nothing."""
    aid = agent_id(principal)
    try:
        with unit_of_work(rt.sessions) as s:
            taken = s.scalar(select(col(Order.order_no)).join(
                AgentCollection, col(AgentCollection.order_id) == col(Order.id)).where(
                col(AgentCollection.agent_id) == aid,
                col(AgentCollection.receipt_no) == body.receipt_no))
            if taken:
                raise _receipt_taken(body.receipt_no, taken)
            order, lines = orders.write_lines(rt, s, principal, body.year, body.items,
                                              channel=body.method,
                                              village_code=principal.village_code)
            now = rt.clock.now()
            payment = Payment(order_id=order.id, channel=body.method,  # type: ignore[arg-type]
                              transaction_id=f"{aid}:{body.receipt_no}",
                              amount_fen=order.amount_fen, paid_at=now,
                              business_date=business_date(now), source="agent")
            s.add(payment)
            s.flush()
            collection = AgentCollection(agent_id=aid, receipt_no=body.receipt_no,
                                         method=body.method, pos_reference=body.pos_reference,
                                         order_id=order.id,  # type: ignore[arg-type]
                                         payment_id=payment.id)  # type: ignore[arg-type]
            s.add(collection)
            s.flush()
            debit = (ledger.agent_cash(aid) if body.method == "cash"
                     else ledger.channel_clearing("pos"))
            try:
                apply_payment(s, OrderFacts(order.id, order.order_no, order.status,  # type: ignore[arg-type]
                                            order.year),
                              PaymentFacts(payment.id, payment.channel,  # type: ignore[arg-type]
                                           payment.transaction_id, payment.amount_fen,
                                           payment.paid_at, payment.business_date),
                              debit=debit,
                              entry_kind=f"{body.method}_collection", refundable=False)
            except AlreadyPaid:
                raise Conflict("an item was paid meanwhile; collect nothing for it",
                               code="item_already_paid") from None
            # a resident who checked this paper receipt before it was recorded: now it is
            receipt_reports.match_collection(
                s, rt, principal, village_code=principal.village_code,
                paper_receipt_no=body.receipt_no, collection_id=collection.id,  # type: ignore[arg-type]
                amount_fen=order.amount_fen, now=now)
            audit.record(s, rt, principal, "collection.record", "order", order.order_no,
                         details={"receipt_no": body.receipt_no, "method": body.method,
                                  "amount_fen": order.amount_fen,
                                  "pos_reference": body.pos_reference,
                                  "items": len(lines)})
            refs = RefCodec(rt.pii.ref_key)
            # issued with the payment: the agent shows or prints it on the spot
            receipt = receipts.issue(s, rt.receipt_key, payment.id, now)  # type: ignore[arg-type]
            assert receipt is not None
            view = receipts.view_of(s, receipt, rt.settings.public_base_url)
            files = f"{rt.settings.public_base_url.rstrip('/')}/api/v1/receipts/{view.receipt_no}"
            return CollectionOut(
                order_no=order.order_no, receipt_no=body.receipt_no, method=body.method,
                amount_fen=order.amount_fen, paid_at=now, business_date=payment.business_date,
                items=[{"resident_ref": refs.make(line.resident_id, principal.sub),
                        "insurance": line.insurance, "tier_yuan": line.tier_yuan,
                        "amount_fen": line.amount_fen} for line in lines],
                receipt=receipt_out(view), receipt_url=view.verify_url,
                receipt_png_url=files + ".png", receipt_pdf_url=files + ".pdf")
    except IntegrityError as exc:
        if "uq_agent_receipt" in str(exc) or "agent_collections" in str(exc):
            raise _receipt_taken(body.receipt_no, None) from None
        raise


def _receipt_taken(receipt_no: str, order_no: str | None) -> Conflict:
    where = f" (order {order_no})" if order_no else ""
    return Conflict(f"receipt {receipt_no} is already recorded{where}; a new payment needs a new "
                    "receipt number", code="receipt_no_taken")


def record_remittance(rt: Runtime, principal: Principal, body: RemittanceIn) -> RemittanceOut:
    aid = agent_id(principal)
    today = rt.clock.today()
    if body.business_date > today:
        raise ValidationFailed(f"business_date: {body.business_date} is in the future")
    try:
        with unit_of_work(rt.sessions) as s:
            village = s.get(Village, principal.village_code)
            if village is None:
                raise Forbidden("this agent has no village")
            cash = ledger.agent_cash(aid)
            ids = ledger.account_ids(s, [cash])
            # The agent's own account row serialises their remittances (no global hot row).
            s.execute(select(col(LedgerAccount.id)).where(col(LedgerAccount.id) == ids[cash.code])
                      .with_for_update())
            on_hand = ledger.balance(s, cash, business_date=body.business_date)
            if body.amount_fen > on_hand:
                raise Conflict(f"remittance of {body.amount_fen} fen is more than the "
                               f"{on_hand} fen of cash collected on {body.business_date} and "
                               "not yet remitted", code="remittance_exceeds_cash",
                               on_hand_fen=on_hand)
            remittance = Remittance(agent_id=aid, village_code=village.code,
                                    business_date=body.business_date,
                                    amount_fen=body.amount_fen,
                                    bank_receipt_no=body.bank_receipt_no)
            s.add(remittance)
            s.flush()
            where = {"village_code": village.code, "town_code": village.town_code,
                     "channel": "cash"}
            ledger.post_entry(
                s, kind="remittance",
                reason=f"agent {aid} remitted cash of {body.business_date}, bank receipt "
                       f"{body.bank_receipt_no}",
                business_date=body.business_date, occurred_at=rt.clock.now(),
                legs=[ledger.Leg(ledger.town_collection(village.town_code), body.amount_fen,
                                 **where),
                      ledger.Leg(cash, -body.amount_fen, measure=REMITTED, **where)],
                remittance_id=remittance.id)
            audit.record(s, rt, principal, "remittance.record", "remittance", remittance.id,
                         details={"business_date": body.business_date,
                                  "amount_fen": body.amount_fen,
                                  "bank_receipt_no": body.bank_receipt_no,
                                  "village_code": village.code})
            return RemittanceOut(id=remittance.id, business_date=body.business_date,  # type: ignore[arg-type]
                                 amount_fen=body.amount_fen,
                                 bank_receipt_no=body.bank_receipt_no,
                                 outstanding_fen=on_hand - body.amount_fen)
    except IntegrityError as exc:
        if "uq_remittance_bank_receipt" in str(exc) or "remittances" in str(exc):
            raise Conflict(f"bank receipt {body.bank_receipt_no} is already recorded",
                           code="bank_receipt_taken") from None
        raise


