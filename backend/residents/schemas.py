from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, Field

ItemStatus = Literal["unpaid", "pending", "paid", "government_paid", "not_eligible"]


class LookupRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    id_number: str = Field(min_length=1, max_length=32)
    year: int = Field(ge=2000, le=2100)


class ResidentOut(BaseModel):
    ref: str
    name: str
    id_number_masked: str
    village_code: str
    age: int
    categories: list[str]
    deceased: bool


class TierOut(BaseModel):
    tier_yuan: int
    amount_due_fen: int
    government_pays_fen: int
    subsidy_fen: int


class DepartmentBillRef(BaseModel):
    bill_no: str
    status: Literal["issued", "partially_paid", "paid"]


class PensionItem(BaseModel):
    insurance: Literal["pension"] = "pension"
    status: ItemStatus
    eligible: bool
    reason: str | None = None
    tiers: list[TierOut]
    default_tier_yuan: int | None
    paying_department: str | None
    department_bill: DepartmentBillRef | None = Field(
        None, description="The department bill (代缴通知单) that claims the item, or null.")
    payable: bool
    not_payable_reason: str | None = None


class MedicalItem(BaseModel):
    insurance: Literal["medical"] = "medical"
    status: ItemStatus
    eligible: bool
    reason: str | None = None
    amount_due_fen: int
    government_pays_fen: int
    paying_department: str | None
    department_bill: DepartmentBillRef | None = Field(
        None, description="The department bill (代缴通知单) that claims the item, or null.")
    subsidy_fen: int
    benefit_start: date | None
    late: bool
    newborn: bool
    payable: bool
    not_payable_reason: str | None = None


class LookupResponse(BaseModel):
    resident: ResidentOut
    year: int
    late: bool
    items: list[PensionItem | MedicalItem]
