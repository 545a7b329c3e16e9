"""Money is integer fen everywhere; yuan exist only as text at the edges (files, pages,
messages). One formatter, so no edge ever divides by 100 into a float."""

from __future__ import annotations


def yuan(fen: int, *, thousands: bool = False) -> str:
    """Integer fen as yuan with two decimals: -28000 → "-280.00" (``thousands``:
    -123456789 → "-1,234,567.89")."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{whole:,}.{cents:02d}" if thousands else f"{sign}{whole}.{cents:02d}"
