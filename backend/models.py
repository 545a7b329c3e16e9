"""Every table, imported once so metadata (and Alembic) sees them all."""

from sqlmodel import SQLModel

from backend.auth.models import StaffUser
from backend.departments.models import DepartmentListing
from backend.residents.models import Death, Resident, Town, Village

metadata = SQLModel.metadata

__all__ = ["metadata", "StaffUser", "DepartmentListing", "Death", "Resident", "Town", "Village"]
