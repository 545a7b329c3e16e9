"""The one yuan formatter: integer fen in, text out, never a float on the way."""

from __future__ import annotations

import pytest

from backend.money import parse_yuan, yuan


@pytest.mark.parametrize(("fen", "plain", "grouped"), [
    (0, "0.00", "0.00"), (5, "0.05", "0.05"), (-5, "-0.05", "-0.05"),
    (28000, "280.00", "280.00"), (-123456789, "-1234567.89", "-1,234,567.89"),
    # beyond a float's exact integers: still exact
    (2**63 - 1, "92233720368547758.07", "92,233,720,368,547,758.07"),
])
def test_yuan_is_exact_for_every_integer_of_fen(fen: int, plain: str, grouped: str) -> None:
    assert yuan(fen) == plain
    assert yuan(fen, thousands=True) == grouped


@pytest.mark.parametrize(("text", "fen"), [
    ("380", 38000), ("380.5", 38050), ("380.50", 38050), ("0.01", 1), (" 380 ", 38000),
    ("1,380.00", 138000), ("¥380", 38000), ("380元", 38000), ("３８０．５", 38050),
    # beyond a float's exact decimals: still exact
    ("999999999.99", 99999999999), ("0.29", 29), ("1.15", 115),
])
def test_yuan_as_typed_is_exact_fen(text: str, fen: int) -> None:
    assert parse_yuan(text) == fen


@pytest.mark.parametrize("text", ["", "380.555", "-1", "+1", "1e3", ".5", "380.", "1,38",
                                  "三百八", "380 50", "nan", "1000000000"])
def test_what_is_not_yuan_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_yuan(text)
