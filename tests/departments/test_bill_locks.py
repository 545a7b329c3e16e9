"""Issuing a bill takes its bill lines' locks in the order orders take them."""

from __future__ import annotations

import threading
import time
from datetime import date
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlmodel import col

from backend.auth.service import create_staff_user
from backend.db import unit_of_work
from backend.orders.models import BillLine
from backend.orders.repository import bill_lines_for
from backend.residents.models import Resident
from tests.conftest import Live
from tests.departments.test_bills import issue, listed
from tests.factories import OTHER_VILLAGE, TOWN, VILLAGE, add_resident
from tests.orders.helpers import seed, staff_headers


def _someone_waits_on_a_lock(live: Live) -> bool:
    with live.rt.sessions() as s:
        return bool(s.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")))


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_issuing_makes_new_lines_in_the_order_orders_lock_them(live: Live) -> None:
    """An order (an agent's for a family, say) takes 赵甲's line and then 赵乙's, neither
    made yet; the bill, issued in between, makes and locks them too. Were the bill to make
    赵乙's first (the list's order), each would wait for the other: a deadlock, one of the
    two refused with a 500. In (resident, insurance) order, the bill waits its turn."""
    seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        for n, name in enumerate(("赵甲", "赵乙")):
            add_resident(s, live.rt.pii, name, date(1975, 1, 1 + n), seq=70 + n,
                         categories="disabled_severe")
        create_staff_user(s, username="town1", password="town-pass1", role="town_staff",
                          town_code=TOWN)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("赵乙", "赵甲"):           # the list's order is not the residents'
        listed(live, name, "disabled_federation", "pension")
    with unit_of_work(live.rt.sessions) as s:
        ids = dict(s.execute(select(col(Resident.name), col(Resident.id))
                             .where(col(Resident.name).in_(("赵甲", "赵乙")))).all())
    assert ids["赵甲"] < ids["赵乙"]
    # 赵甲 after 赵乙 in the table and its indexes too: a lookup by village finds 赵乙 first
    with unit_of_work(live.rt.sessions) as s:
        for village in (OTHER_VILLAGE, VILLAGE):
            s.execute(text("UPDATE residents SET village_code = :v WHERE id = :id"),
                      {"v": village, "id": ids["赵甲"]})
    answers: dict[str, Any] = {}

    def issuing() -> None:
        try:
            answers["bill"] = issue(live, town, "disabled_federation")
        except Exception as e:   # noqa: BLE001 - a 500 fails the contract check: kept
            answers["bill"] = e

    bill = threading.Thread(target=issuing)
    with unit_of_work(live.rt.sessions) as s:
        bill_lines_for(s, [(ids["赵甲"], 2021, "pension")])
        bill.start()
        deadline = time.monotonic() + 20
        while not _someone_waits_on_a_lock(live):
            assert time.monotonic() < deadline, "the bill never waited for the order's line"
            time.sleep(0.05)
        bill_lines_for(s, [(ids["赵乙"], 2021, "pension")])
    bill.join(30)
    assert not isinstance(answers["bill"], Exception), answers["bill"]
    assert answers["bill"].status_code == 201, answers["bill"].text
    assert len(answers["bill"].json()["lines"]) == 2
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalars(select(col(BillLine.status))).all() == ["claimed", "claimed"]


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_a_bill_beyond_the_range_of_a_32_bit_integer_is_paid(live: Live) -> None:
    """A bill's total goes into one payment, one order and a posting per insurance: a large
    town's bill (more than 21,474,836.47 yuan, some 77,000 medical lines) must fit. Two
    lines stand for them here, each of 15,000,000 yuan."""
    from backend.ledger import service as ledger
    from backend.orders.models import Payment
    from tests.departments.test_bills import town_setup, transfer

    town_setup(live)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("王芳", "李梅"):
        listed(live, name, "civil_affairs", "medical")
    no = issue(live, town, "civil_affairs").json()["bill_no"]
    big = 1_500_000_000
    with unit_of_work(live.rt.sessions) as s:
        s.execute(text("UPDATE department_bill_lines SET amount_fen = :f"), {"f": big})
        s.execute(text("UPDATE department_bills SET total_fen = :f"), {"f": 2 * big})
    first = transfer(live, town, no, big + 1, "BIG-1")
    assert first.status_code == 201, first.text
    done = transfer(live, town, no, big - 1, "BIG-2")
    assert done.status_code == 201, done.text
    assert done.json()["status"] == "paid"
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalar(select(col(Payment.amount_fen))
                        .where(col(Payment.channel) == "department")) == 2 * big
        assert ledger.balance(s, ledger.contributions("medical", 2021)) == -2 * big
        assert ledger.balance(s, ledger.town_collection(TOWN)) == 2 * big


@pytest.mark.parametrize("backend_name", ["postgres"])
def test_covering_a_bill_locks_its_lines_in_the_order_orders_lock_them(live: Live) -> None:
    """An agent's order for 赵甲 and 赵乙 (refused in the end: their pensions are claimed)
    holds 赵甲's line and wants 赵乙's, while the transfer that covers their bill marks the
    lines paid. Marked in the table's order (赵乙's first), the two deadlock and one is a
    500; in (resident, insurance) order the cover waits for the order and goes through."""
    from tests.departments.test_bills import transfer

    seed(live.rt)
    with unit_of_work(live.rt.sessions) as s:
        for n, name in enumerate(("赵甲", "赵乙")):
            add_resident(s, live.rt.pii, name, date(1975, 1, 1 + n), seq=70 + n,
                         categories="disabled_severe")
        create_staff_user(s, username="town1", password="town-pass1", role="town_staff",
                          town_code=TOWN)
    town = staff_headers(live, "town1", "town-pass1")
    for name in ("赵甲", "赵乙"):
        listed(live, name, "disabled_federation", "pension")
    bill = issue(live, town, "disabled_federation").json()
    with unit_of_work(live.rt.sessions) as s:
        ids = dict(s.execute(select(col(Resident.name), col(Resident.id))
                             .where(col(Resident.name).in_(("赵甲", "赵乙")))).all())
        # 赵甲's line after 赵乙's in the table: a scan finds 赵乙's first
        s.execute(text("UPDATE bill_lines SET created_at = created_at "
                       "WHERE resident_id = :id"), {"id": ids["赵甲"]})
    answers: dict[str, Any] = {}

    def covering() -> None:
        try:
            answers["cover"] = transfer(live, town, bill["bill_no"], bill["total_fen"], "L-1")
        except Exception as e:   # noqa: BLE001 - a 500 fails the contract check: kept
            answers["cover"] = e

    cover = threading.Thread(target=covering)
    with unit_of_work(live.rt.sessions) as s:
        bill_lines_for(s, [(ids["赵甲"], 2021, "pension")])
        cover.start()
        deadline = time.monotonic() + 20
        while not _someone_waits_on_a_lock(live):
            assert time.monotonic() < deadline, "the cover never waited for the order's line"
            time.sleep(0.05)
        bill_lines_for(s, [(ids["赵乙"], 2021, "pension")])
    cover.join(30)
    assert not isinstance(answers["cover"], Exception), answers["cover"]
    assert answers["cover"].status_code == 201, answers["cover"].text
    assert answers["cover"].json()["status"] == "paid"
    with unit_of_work(live.rt.sessions) as s:
        assert s.scalars(select(col(BillLine.status))).all() == ["paid", "paid"]
