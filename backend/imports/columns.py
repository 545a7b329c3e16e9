"""The columns of each import kind and the values they allow (what ``import --help`` shows).

Kept apart from the import itself so that the command line can describe the files without
loading the database layer.
"""

from __future__ import annotations

import textwrap

from backend.policy import CATEGORIES, DEPARTMENTS, HUKOU_TYPES, INSURANCES, Policy

COLUMNS: dict[str, tuple[str, ...]] = {
    "regions": ("town_code", "town_name", "village_code", "village_name"),
    "residents": ("id_number", "name", "village_code", "hukou_type", "employee_pension",
                  "employee_medical", "categories", "phone", "last_pension_tier_yuan",
                  "student"),
    "departments": ("department", "id_number", "name", "insurance", "year"),
    "deaths": ("id_number", "name", "died_on"),
}
KINDS = tuple(COLUMNS)

FLAG_VALUES = ("0", "1")
RESIDENT_FLAGS = ("employee_pension", "employee_medical", "student")
CATEGORY_SEPARATOR = ";"
MAX_NAME = 64
MAX_CODE = 32


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``1,000 rows``: a count with its noun in the right number."""
    return f"{n:,} {noun if n == 1 else (nouns or noun + 's')}"


def _allowed(policy: Policy | None) -> list[tuple[str, str]]:
    if policy is None:
        tiers = "a pension tier of the policy (POLICY)"
        year = "the coverage year of the policy (POLICY)"
    else:
        tiers = (f"a pension tier of policy {policy.id}: "
                 + ", ".join(str(t) for t in policy.tiers_yuan))
        year = f"{policy.coverage_year} (the coverage year of policy {policy.id})"
    return [
        ("town_code, village_code", f"1–{MAX_CODE} digits"),
        ("town_name, village_name, name", f"1–{MAX_NAME} characters"),
        ("id_number", "18 characters: 17 digits, then a digit or X (format an XLSX column "
                      "as text)"),
        ("hukou_type", " | ".join(sorted(HUKOU_TYPES))),
        (", ".join(RESIDENT_FLAGS), " or ".join(FLAG_VALUES)),
        ("categories", f"empty, or '{CATEGORY_SEPARATOR}'-separated from: "
                       + ", ".join(sorted(CATEGORIES))),
        ("phone", "empty, or 11 digits starting with 1"),
        ("last_pension_tier_yuan", f"empty, or {tiers}"),
        ("department", " | ".join(DEPARTMENTS)),
        ("insurance", " | ".join(INSURANCES)),
        ("year", year),
        ("died_on", "a date, YYYY-MM-DD"),
    ]


def describe(policy: Policy | None) -> str:
    """The columns of every kind and the values each column allows, for ``import --help``."""
    width = max(map(len, KINDS)) + 1
    lines = ["A CSV file (UTF-8, header row) or an XLSX file with the same header; the "
             "columns in any order.", "", "columns of each kind:"]
    lines += [f"  {kind + ':':<{width}} {','.join(cols)}" for kind, cols in COLUMNS.items()]
    lines += ["", "allowed values:"]
    for columns, allowed in _allowed(policy):
        lines.append(f"  {columns}:")
        lines.append(textwrap.fill(allowed, 88, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6, break_on_hyphens=False))
    return "\n".join(lines)
