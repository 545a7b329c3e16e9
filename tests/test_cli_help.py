"""``python -m backend --help`` and its commands' help: every command, column and value."""

from __future__ import annotations

import argparse
import re

import pytest

from backend.__main__ import build_parser, main
from backend.auth.models import STAFF_ROLES
from backend.config import get_settings
from backend.imports.columns import COLUMNS, FLAG_VALUES, RESIDENT_FLAGS
from backend.policy import CATEGORIES, DEPARTMENTS, HUKOU_TYPES, INSURANCES, load_policy


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(subparsers[0].choices)


def test_top_level_help_lists_every_command_with_a_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    overview = text.split("positional arguments:")[0]
    commands = _commands(build_parser())
    assert {"serve", "worker", "sandbox", "migrate", "import", "users", "demo"} <= set(commands)
    for name in commands:
        assert re.search(rf"^  {name}\s+\w", overview, re.M), f"no line for {name}:\n{overview}"


def test_import_help_lists_the_columns_and_allowed_values(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "import")
    for kind, columns in COLUMNS.items():
        assert f"{kind}:" in text and ",".join(columns) in text
    allowed = " ".join(text.split("allowed values:")[1].split("positional arguments:")[0]
                       .split())
    described = set(re.findall(r"^  ([\w, ]+):$", text.split("allowed values:")[1], re.M))
    described_columns = {c.strip() for line in described for c in line.split(",")}
    assert {c for cols in COLUMNS.values() for c in cols} <= described_columns
    for value in [*HUKOU_TYPES, *CATEGORIES, *DEPARTMENTS, *INSURANCES]:
        assert re.search(rf"\b{value}\b", allowed), value
    assert f"{', '.join(RESIDENT_FLAGS)}: {' or '.join(FLAG_VALUES)}" in allowed
    policy = load_policy(get_settings().policy)
    assert ", ".join(str(t) for t in policy.tiers_yuan) in allowed
    assert str(policy.coverage_year) in allowed


def test_users_create_offers_the_staff_roles(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "users", "create")
    assert "{" + ",".join(STAFF_ROLES) + "}" in text
    with pytest.raises(SystemExit) as exit_:
        main(["users", "create", "--username", "zhang", "--password", "long-enough",
              "--role", "boss"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'boss'" in err and all(role in err for role in STAFF_ROLES)
