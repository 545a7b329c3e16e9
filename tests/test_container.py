"""The Dockerfile (no Docker engine here: it is linted, read, and its health check run)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ServedApp, free_port

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in rows if line and not line.startswith("#")]


def runtime_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    r = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    # the binary really runs here and really checks (a clean answer is not a no-op)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\n")
    r = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "DL3007" in r.stdout and "DL3002" in r.stdout


def test_multi_stage_runtime_is_unprivileged_and_runs_the_cli() -> None:
    steps = instructions()
    assert sum(op == "FROM" for op, _ in steps) >= 2
    stage = runtime_stage()
    assert any(op == "COPY" and arg.startswith("--from=build ") for op, arg in stage)
    users = [arg for op, arg in stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entry = [json.loads(arg) for op, arg in stage if op == "ENTRYPOINT"]
    assert entry == [["python", "-m", "backend"]]
    cmd = [json.loads(arg) for op, arg in stage if op == "CMD"]
    assert cmd == [["serve", "--host", "0.0.0.0", "--port", "8000"]]
    # the commands it runs are the CLI's
    from backend.__main__ import build_parser

    for command in (["migrate"], ["worker"], cmd[0]):
        assert build_parser().parse_args(command).func


def _healthcheck() -> list[str]:
    (arg,) = [arg for op, arg in runtime_stage() if op == "HEALTHCHECK"]
    exec_form = json.loads(arg[arg.index("CMD") + 3:].strip())
    assert exec_form[0] == "python" and "/healthz" in " ".join(exec_form)
    return [sys.executable, *exec_form[1:]]


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_the_health_check_command_asks_healthz(served: ServedApp) -> None:
    # the image's own command, pointed at the test server's port instead of 8000
    command = [part.replace("127.0.0.1:8000", f"127.0.0.1:{served.port}")
               for part in _healthcheck()]
    healthy = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    closed = [part.replace("127.0.0.1:8000", f"127.0.0.1:{free_port()}")
              for part in _healthcheck()]
    assert subprocess.run(closed, capture_output=True, timeout=30).returncode != 0


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "start from nothing, then let the code in"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    copied = {part.removeprefix("./") for op, arg in instructions()
              if op == "COPY" and not arg.startswith("--from")
              for part in arg.split()[:-1]}
    assert copied == allowed
    assert not allowed & {".venv", "data", ".git", "tests", "bench"}
