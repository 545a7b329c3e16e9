"""The one yuan formatter: integer fen in, text out, never a float on the way."""

from __future__ import annotations

import pytest

from backend.money import yuan


@pytest.mark.parametrize(("fen", "plain", "grouped"), [
    (0, "0.00", "0.00"), (5, "0.05", "0.05"), (-5, "-0.05", "-0.05"),
    (28000, "280.00", "280.00"), (-123456789, "-1234567.89", "-1,234,567.89"),
    # beyond a float's exact integers: still exact
    (2**63 - 1, "92233720368547758.07", "92,233,720,368,547,758.07"),
])
def test_yuan_is_exact_for_every_integer_of_fen(fen: int, plain: str, grouped: str) -> None:
    assert yuan(fen) == plain
    assert yuan(fen, thousands=True) == grouped
