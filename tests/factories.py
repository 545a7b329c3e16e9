"""Test data through the same code paths the product uses."""

from __future__ import annotations

from datetime import date

from sqlalchemy.orm import Session

from backend.residents.idnumber import make_id_number
from backend.residents.models import Resident, Town, Village
from backend.security.pii import PiiVault, mask_id_number

TOWN, VILLAGE, OTHER_TOWN, OTHER_VILLAGE = "370406100", "370406100201", "370406101", "370406101201"


def add_regions(session: Session) -> None:
    session.add_all([Town(code=TOWN, name="店子镇"), Town(code=OTHER_TOWN, name="西集镇")])
    session.flush()
    session.add_all([Village(code=VILLAGE, name="东村", town_code=TOWN),
                     Village(code=OTHER_VILLAGE, name="西村", town_code=OTHER_TOWN)])
    session.flush()


def add_resident(session: Session, pii: PiiVault, name: str, born: date, *, seq: int = 1,
                 village: str = VILLAGE, **kw: object) -> tuple[Resident, str]:
    number = make_id_number("370406", born, seq)
    r = Resident(id_hash=pii.hash(number), id_enc=pii.encrypt(number),
                 id_masked=mask_id_number(number), birth_date=born, name=name,
                 village_code=village, hukou_type=str(kw.pop("hukou_type", "local")), **kw)
    session.add(r)
    session.flush()
    return r, number
