"""The agent's roster (清册): every resident of the agent's village, what each owes and who
paid it — the lookup's assessment for a whole village, read in a handful of queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import cast, get_args

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from backend.agents.schemas import RosterItem, RosterOut, RosterRow
from backend.errors import Forbidden, ValidationFailed
from backend.orders.models import BillLine, Order, OrderLine, Payment
from backend.policy import assess
from backend.residents import repository as residents_repo
from backend.residents.models import Death, Resident
from backend.residents.schemas import ItemStatus
from backend.residents.service import facts_of, item_statuses, policy_for
from backend.runtime import Runtime
from backend.security.pii import mask_name
from backend.security.tokens import Principal, RefCodec

STATUSES: tuple[str, ...] = get_args(ItemStatus)
AGENT_CHANNELS = ("cash", "pos")


def paid_by(channel: str | None, source: str | None) -> str | None:
    """Who paid a bill line, from its applied payment's channel."""
    if channel is None:
        return None
    if channel in AGENT_CHANNELS or source == "agent":
        return "agent"
    if channel == "department" or source == "department":
        return "department"
    return "resident"


def _village_residents(village_code: str):  # type: ignore[no-untyped-def]
    return select(col(Resident.id)).where(col(Resident.village_code) == village_code)


def _read(session: Session, village_code: str, year: int, now: datetime) -> tuple[
        list[tuple[Resident, date | None]], dict[int, set[tuple[str, str]]],
        dict[int, dict[str, tuple[str, int | None, str | None]]], set[tuple[int, str]]]:
    """Four queries for the whole village: residents with deaths, department listings, bill
    lines with their applied payment, and items in an unexpired pending order."""
    ids = _village_residents(village_code)
    residents: list[tuple[Resident, date | None]] = [(r, died) for r, died in session.execute(
        select(Resident, col(Death.died_on))
        .outerjoin(Death, col(Death.id_hash) == col(Resident.id_hash))
        .where(col(Resident.village_code) == village_code).order_by(col(Resident.id))).all()]
    listed = residents_repo.listings_of(session, ids, year)
    lines: dict[int, dict[str, tuple[str, int | None, str | None]]] = {}
    for rid, insurance, status, paid_fen, claim, channel, source in session.execute(
            select(col(BillLine.resident_id), col(BillLine.insurance), col(BillLine.status),
                   col(BillLine.paid_fen), col(BillLine.claim_bill_id), col(Payment.channel),
                   col(Payment.source))
            .outerjoin(Payment, col(Payment.id) == col(BillLine.paid_payment_id))
            .where(col(BillLine.resident_id).in_(ids), col(BillLine.year) == year)):
        if claim is not None and status in ("claimed", "paid"):
            # a department bill claims it (pending transfer: paid_fen is null) or has paid it
            lines.setdefault(rid, {})[insurance] = ("government_paid", paid_fen, "department")
        elif status == "paid":
            lines.setdefault(rid, {})[insurance] = (status, paid_fen,
                                                    paid_by(channel, source))
    pending = {(rid, insurance) for rid, insurance in session.execute(
        select(col(OrderLine.resident_id), col(OrderLine.insurance))
        .join(Order, col(Order.id) == col(OrderLine.order_id))
        .where(col(OrderLine.resident_id).in_(ids), col(Order.year) == year,
               col(Order.status) == "pending", col(Order.expires_at) > now))}
    return residents, listed, lines, pending


@dataclass(frozen=True)
class VillageRow:
    """One resident of a village on the roster: masked name and ID number, and the items."""

    resident_id: int
    name: str                 # masked (张*)
    id_number_masked: str
    items: list[RosterItem]


def village_rows(rt: Runtime, session: Session, village_code: str, year: int,
                 status: str | None = None, *, paid_only: bool = False) -> list[VillageRow]:
    """Every resident of ``village_code`` with each item's state, what it owes and who paid
    it, in resident order; with ``status``, only those items (and residents having one);
    ``paid_only`` (the paid list, 已缴费名单): only the items money has paid — the resident's,
    or a covered department bill's, not one a department has yet to pay.
    The one assessment of a village: the agent's roster and the publications both read it."""
    if status is not None and status not in STATUSES:
        raise ValidationFailed(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    policy = policy_for(rt, year)
    now = rt.clock.now()
    residents, listed, lines, pending = _read(session, village_code, year, now)
    rows: list[VillageRow] = []
    for resident, died in residents:
        rid = cast(int, resident.id)
        paid = lines.get(rid, {})
        # the same states the lookup reads (orders.repository.item_states): paid wins
        states = {ins: state for ins, (state, _, _) in paid.items()}
        for ins in ("pension", "medical"):
            if (rid, ins) in pending:
                states.setdefault(ins, "pending")
        a = assess(policy, facts_of(resident, died, frozenset(listed.get(rid, ()))), now)
        items = []
        for insurance, (item_status, due, reason) in item_statuses(a, states).items():
            _, paid_fen, payer = paid.get(insurance, ("", None, None))
            if (status is not None and item_status != status) or (
                    paid_only and paid_fen is None):
                continue
            if item_status == "government_paid":
                payer = "department"
            items.append(RosterItem(
                insurance=insurance, status=item_status,  # type: ignore[arg-type]
                amount_due_fen=paid_fen if paid_fen is not None else due, paid_by=payer,  # type: ignore[arg-type]
                reason=reason if item_status == "not_eligible" else None))
        if items:
            rows.append(VillageRow(resident_id=rid, name=mask_name(resident.name),
                                   id_number_masked=resident.id_masked, items=items))
    return rows


def roster(rt: Runtime, session: Session, principal: Principal, year: int,
           status: str | None = None) -> RosterOut:
    if principal.role != "agent" or not principal.village_code:
        raise Forbidden("only a village agent reads the village roster")
    refs = RefCodec(rt.pii.ref_key)
    rows = [RosterRow(resident_ref=refs.make(row.resident_id, principal.sub), name=row.name,
                      id_number_masked=row.id_number_masked, items=row.items)
            for row in village_rows(rt, session, principal.village_code, year, status)]
    return RosterOut(year=year, village_code=principal.village_code, rows=rows)
