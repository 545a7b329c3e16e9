"""Regions (镇街, 村居), the resident registry (参保人员) and the death list (死亡名单)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, String
from sqlmodel import Field, SQLModel

from backend.db import UTCDateTime, utcnow


class Town(SQLModel, table=True):
    __tablename__ = "towns"
    code: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=64)


class Village(SQLModel, table=True):
    __tablename__ = "villages"
    code: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=64)
    town_code: str = Field(foreign_key="towns.code", index=True, max_length=32)


def category_set(categories: str) -> frozenset[str]:
    """The categories column (``dibao;disabled_1``) as a set."""
    return frozenset(c for c in categories.split(";") if c)


class Resident(SQLModel, table=True):
    __tablename__ = "residents"
    id: int | None = Field(default=None, primary_key=True)
    id_hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    id_enc: str = Field(max_length=128)
    id_masked: str = Field(max_length=18)
    birth_date: date
    name: str = Field(max_length=64)
    village_code: str = Field(foreign_key="villages.code", index=True, max_length=32)
    hukou_type: str = Field(max_length=24)
    employee_pension: bool = False
    employee_medical: bool = False
    student: bool = False
    categories: str = Field(default="", max_length=200)  # sorted, ';'-joined
    phone_enc: str | None = Field(default=None, max_length=128)
    phone_masked: str | None = Field(default=None, max_length=16)
    last_pension_tier_yuan: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    @property
    def category_set(self) -> frozenset[str]:
        return category_set(self.categories)


class Death(SQLModel, table=True):
    """Keyed by the ID hash, so a death reported before registration still counts."""

    __tablename__ = "deaths"
    id_hash: str = Field(sa_column=Column(String(64), primary_key=True))
    id_masked: str = Field(max_length=18)
    name: str = Field(max_length=64)
    died_on: date
    imported_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
