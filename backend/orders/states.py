"""The declared transition tables of attempts and orders (Kill Bill's PaymentStates).

Each entry is ``target: states it may be entered from``. A paid attempt or order never goes
back; money that arrives for a closed one is still applied (or refunded).
"""

from __future__ import annotations

ATTEMPT_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("creating",),                # the channel accepted the trade
    "unknown": ("creating",),                # the channel did not answer in time
    "failed": ("creating",),                 # the channel refused the trade
    "closed": ("creating", "pending", "unknown"),
    "anomaly": ("pending", "unknown", "closed"),  # the channel says paid, another amount
    "paid": ("creating", "pending", "unknown", "closed", "failed"),
}

ORDER_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "closed": ("pending",),
    "paid": ("pending", "closed"),
    "partially_refunded": ("paid",),
    "refunded": ("paid", "partially_refunded"),
}

LIVE_ATTEMPT_STATES = ("creating", "pending", "unknown")
