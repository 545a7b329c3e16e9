"""Money is integer fen everywhere; yuan exist only as text at the edges (files, pages,
messages). One formatter, so no edge ever divides by 100 into a float."""

from __future__ import annotations

import re
import unicodedata


def yuan(fen: int, *, thousands: bool = False) -> str:
    """Integer fen as yuan with two decimals: -28000 → "-280.00" (``thousands``:
    -123456789 → "-1,234,567.89")."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{whole:,}.{cents:02d}" if thousands else f"{sign}{whole}.{cents:02d}"


_YUAN = re.compile(r"(\d{1,9})(?:\.(\d{1,2}))?")


def parse_yuan(text: str) -> int:
    """Yuan as a person types them, to integer fen, exactly (no float on the way): "380" →
    38000, "380.5" → 38050, "380.50" → 38050, "1,380.00" → 138000; full-width digits and a
    leading ¥ or trailing 元 are taken. Anything else — a third decimal, a sign, an
    exponent, nothing at all — is a ``ValueError``."""
    value = unicodedata.normalize("NFKC", text).strip()
    value = value.removeprefix("¥").removeprefix("￥").removesuffix("元").strip()
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d*)?", value):
        value = value.replace(",", "")
    m = _YUAN.fullmatch(value)
    if m is None:
        raise ValueError(f"not an amount in yuan with at most two decimals: {text[:40]!r}")
    whole, decimals = m.group(1), (m.group(2) or "").ljust(2, "0")
    return int(whole) * 100 + int(decimals)
