"""Property-based: after any sequence of payments, duplicates, late payments, repeats, cash
collections, remittances and refunds, the ledger's invariants hold (钱表相符)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import date, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from backend.agents import service as agents
from backend.agents.schemas import CollectionIn, RemittanceIn
from backend.auth.service import create_staff_user
from backend.clock import SHANGHAI
from backend.db import unit_of_work
from backend.errors import AppError
from backend.ledger.models import LedgerAccount, Posting
from backend.orders import service as orders
from backend.orders.models import BillLine, Payment, PaymentLine, Refund
from backend.orders.payment_flow import ChannelConfirmation, confirm_channel_payment
from backend.orders.schemas import OrderItemIn
from backend.refunds.service import complete_refund
from backend.runtime import Runtime
from backend.security.tokens import Principal, RefCodec
from payment_adapters.base import Channel
from tests.factories import TOWN, VILLAGE, add_regions, add_resident

_serial = itertools.count(1)
DAY0 = datetime.fromisoformat("2020-11-02T00:00:00+08:00")

op = st.one_of(
    st.tuples(st.just("pay"), st.integers(0, 3), st.sampled_from(["pension", "medical"]),
              st.sampled_from(list(Channel)), st.integers(0, 3 * 86400 - 1)),
    st.tuples(st.just("race"), st.integers(0, 3), st.sampled_from(["pension", "medical"]),
              st.sampled_from(list(Channel)), st.integers(0, 3 * 86400 - 1)),
    st.tuples(st.just("cash"), st.integers(0, 3), st.sampled_from(["pension", "medical"]),
              st.sampled_from(["cash", "pos"]), st.integers(0, 0)),
    st.tuples(st.just("remit"), st.integers(1, 4), st.just(""), st.just(""), st.integers(0, 0)),
    st.tuples(st.just("refund"), st.integers(0, 5), st.just(""), st.just(""),
              st.integers(0, 3 * 86400 - 1)),
)


def _setup(rt: Runtime) -> tuple[Principal, Principal, list[str]]:
    with unit_of_work(rt.sessions) as s:
        if s.get(__import__("backend.residents.models", fromlist=["Village"]).Village,
                 VILLAGE) is None:
            add_regions(s)
        people = []
        for _ in range(4):
            k = next(_serial)
            r, _ = add_resident(s, rt.pii, f"居民{k}", date(1970, 1, 1) + timedelta(days=k),
                                seq=k % 1000)
            people.append(r.id)
        agent = create_staff_user(s, username=f"agent{next(_serial)}", password="agent-pass",
                                  role="agent", village_code=VILLAGE)
    payer = Principal(sub=f"wx:p{next(_serial)}", role="resident")
    field = Principal(sub=f"staff:{agent.id}", role="agent", village_code=VILLAGE,
                      town_code=TOWN)
    refs = RefCodec(rt.pii.ref_key)
    return payer, field, [refs.make(pid, payer.sub) + "|" + refs.make(pid, field.sub)
                          for pid in people]


def _item(ref: str, insurance: str) -> OrderItemIn:
    return OrderItemIn(resident_ref=ref, insurance=insurance,  # type: ignore[arg-type]
                       tier_yuan=300 if insurance == "pension" else None)


def _order(rt: Runtime, payer: Principal, ref: str, insurance: str, channel: Channel) -> tuple[
        str, int]:
    with unit_of_work(rt.sessions) as s:
        order, _ = orders.write_lines(rt, s, payer, 2021, [_item(ref, insurance)],
                                      channel=f"{channel.value}_qr"
                                      if channel is not Channel.WECHAT else "wechat_native")
        attempt = orders._new_attempt(rt, s, order, channel, "qr")
        return attempt.out_trade_no, attempt.amount_fen


def _pay(rt: Runtime, channel: Channel, out_trade_no: str, amount: int, at: datetime) -> None:
    with unit_of_work(rt.sessions) as s:
        confirm_channel_payment(s, ChannelConfirmation(
            channel=channel.value, out_trade_no=out_trade_no,
            transaction_id=f"T{out_trade_no}", amount_fen=amount, paid_at=at,
            source="notification"))


def _run(rt: Runtime, ops: list[tuple[str, int, str, object, int]]) -> None:
    payer, field, refs = _setup(rt)
    for kind, who, insurance, channel, offset in ops:
        at = DAY0 + timedelta(seconds=offset)
        try:
            if kind == "pay":
                no, amount = _order(rt, payer, refs[who].split("|")[0], insurance, channel)  # type: ignore[arg-type]
                _pay(rt, channel, no, amount, at)  # type: ignore[arg-type]
                _pay(rt, channel, no, amount, at)  # a repeat changes nothing  # type: ignore[arg-type]
            elif kind == "race":
                # two live orders of one payer for the same item, both paid (late or not)
                a = _order(rt, payer, refs[who].split("|")[0], insurance, channel)  # type: ignore[arg-type]
                b = _order(rt, payer, refs[who].split("|")[0], insurance, Channel.ALIPAY)
                _pay(rt, Channel.ALIPAY, *b, at + timedelta(hours=30))
                _pay(rt, channel, *a, at)  # type: ignore[arg-type]
            elif kind == "cash":
                agents.record_collection(rt, field, CollectionIn(
                    year=2021, items=[_item(refs[who].split("|")[1], insurance)],
                    method=channel, receipt_no=f"R{next(_serial)}",  # type: ignore[arg-type]
                    pos_reference="slip" if channel == "pos" else None))
            elif kind == "remit":
                today = rt.clock.today()
                with unit_of_work(rt.sessions) as s:
                    from backend.ledger.service import agent_cash, balance
                    aid = int(field.sub.removeprefix("staff:"))
                    on_hand = balance(s, agent_cash(aid), business_date=today)
                amount = max(1, on_hand * who // 3)   # who=4: more than on hand, refused
                agents.record_remittance(rt, field, RemittanceIn(
                    business_date=today, amount_fen=amount, bank_receipt_no=f"B{next(_serial)}"))
            elif kind == "refund":
                with unit_of_work(rt.sessions) as s:
                    queued = list(s.scalars(select(Refund.id).where(Refund.status == "queued")
                                            .order_by(Refund.id)))
                    if queued:
                        complete_refund(s, queued[who % len(queued)], channel_refund_id="RF",
                                        refunded_at=at)
        except AppError as exc:
            assert exc.code in ("item_already_paid", "item_in_pending_order",
                                "remittance_exceeds_cash"), exc.message


def _check(rt: Runtime) -> None:
    with unit_of_work(rt.sessions) as s:
        # every entry balances
        unbalanced = s.execute(select(Posting.entry_id).group_by(Posting.entry_id)
                               .having(func.sum(Posting.amount_fen) != 0)).all()
        assert unbalanced == []
        # a bill line is paid by at most one payment, and is paid iff one applies
        applied = dict(s.execute(select(PaymentLine.bill_line_id, func.count())
                                 .where(PaymentLine.applied)
                                 .group_by(PaymentLine.bill_line_id)).all())
        assert all(n == 1 for n in applied.values())
        for line_id, status in s.execute(select(BillLine.id, BillLine.status)):
            assert (status == "paid") == (line_id in applied)
        # money and table agree per day (钱表相符): collected = payments, refunded = refunds
        collected: dict[date, int] = defaultdict(int)
        refunded: dict[date, int] = defaultdict(int)
        for day, measure, fen in s.execute(select(Posting.business_date, Posting.measure,
                                                  Posting.amount_fen)
                                           .where(Posting.measure.in_(("collected", "duplicate",
                                                                       "refunded")))):
            if measure == "refunded":
                refunded[day] -= fen
            else:
                collected[day] += fen
        paid: dict[date, int] = defaultdict(int)
        for day, fen in s.execute(select(Payment.business_date, Payment.amount_fen)):
            paid[day] += fen
        returned: dict[date, int] = defaultdict(int)
        for at, fen in s.execute(select(Refund.refunded_at, Refund.amount_fen)
                                 .where(Refund.status == "succeeded")):
            returned[at.astimezone(SHANGHAI).date()] += fen
        assert dict(collected) == dict(paid)
        assert dict(refunded) == dict(returned)
        # account balances follow from the facts
        balances = dict(s.execute(select(LedgerAccount.code, func.sum(Posting.amount_fen))
                                  .join(Posting, Posting.account_id == LedgerAccount.id)
                                  .group_by(LedgerAccount.code)).all())
        owed = sum(fen for (fen,) in s.execute(select(Refund.amount_fen)
                                               .where(Refund.status != "succeeded")))
        assert balances.get("refunds_payable", 0) == -owed
        contributions = sum(v for k, v in balances.items() if k.startswith("contributions:"))
        assert contributions == -sum(fen for (fen,) in s.execute(
            select(PaymentLine.amount_fen).where(PaymentLine.applied)))
        assert all(v >= 0 for k, v in balances.items() if k.startswith("agent_cash:"))
        assert sum(balances.values()) == 0


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=12))
def test_ledger_invariants_hold(rt: Runtime, ops: list[tuple[str, int, str, object, int]]) -> None:
    _run(rt, ops)
    _check(rt)
