"""Every table, imported once so metadata (and Alembic) sees them all."""

from sqlmodel import SQLModel

from backend.agents.models import AgentCollection
from backend.audit.models import AuditEvent
from backend.auth.models import StaffUser
from backend.departments.models import (
    DepartmentBill,
    DepartmentBillLine,
    DepartmentCreditLine,
    DepartmentCreditNote,
    DepartmentListing,
    DepartmentTransfer,
)
from backend.idempotency.models import IdempotencyKey
from backend.ledger.models import (
    ClosedDay,
    EntryCheck,
    JournalEntry,
    LedgerAccount,
    Posting,
    Remittance,
)
from backend.notifications.models import InboxNotification, NotificationRejection
from backend.orders.models import (
    Attempt,
    BillLine,
    Order,
    OrderLine,
    Payment,
    PaymentLine,
    Refund,
    RefundLine,
)
from backend.outbox.models import OutboxJob
from backend.publications.models import PublicationVersion
from backend.receipts.models import Receipt
from backend.receipts.report_models import ReceiptReport
from backend.reconciliation.models import (
    Discrepancy,
    ReconciliationRun,
    Statement,
    StatementLine,
)
from backend.residents.models import Death, Resident, Town, Village

metadata = SQLModel.metadata

__all__ = ["metadata", "StaffUser", "DepartmentListing", "Death", "Resident", "Town", "Village",
           "BillLine", "Order", "OrderLine", "Attempt", "Payment", "PaymentLine", "Refund",
           "RefundLine", "InboxNotification", "IdempotencyKey", "AgentCollection",
           "JournalEntry", "LedgerAccount", "Posting", "Remittance", "OutboxJob", "ClosedDay",
           "EntryCheck", "Statement", "StatementLine", "ReconciliationRun", "Discrepancy",
           "AuditEvent", "DepartmentBill", "DepartmentBillLine", "DepartmentTransfer",
           "DepartmentCreditNote", "DepartmentCreditLine", "PublicationVersion",
           "NotificationRejection", "Receipt", "ReceiptReport"]
