"""The wheel is all a deployment gets: it must carry the migrations and migrate on its own."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from backend.migrate import alembic_config

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "backend" / "migrations"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the sources (setuptools writes build/)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("backend", "payment_adapters"):
        shutil.copytree(REPO / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (whl,) = out.glob("*.whl")
    return whl


def test_the_wheel_carries_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"backend/migrations/env.py", "backend/migrations/script.py.mako"} | {
        f"backend/migrations/versions/{p.name}" for p in (MIGRATIONS / "versions").glob("*.py")}
    assert len(expected) > 2
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    desk = {f"backend/desk/{folder}/{p.name}" for folder in ("templates", "static")
            for p in (REPO / "backend" / "desk" / folder).iterdir() if p.is_file()}
    assert any(n.endswith(".html") for n in desk) and "backend/desk/static/desk.css" in desk
    assert desk <= names, f"the finance desk's files missing from the wheel: {desk - names}"


def test_the_installed_package_migrates_from_inside_itself(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    work = tmp_path / "elsewhere"   # not the source tree, so `backend` is the installed one
    work.mkdir()
    db = tmp_path / "db" / "installed.sqlite3"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site),
           "DATABASE_URL": f"sqlite:///{db}", "DATA_DIR": str(tmp_path / "data")}

    where = subprocess.run(
        [sys.executable, "-c", "import backend.migrate as m; "
         "print(m.alembic_config().get_main_option('script_location'))"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == (site / "backend" / "migrations").resolve()

    migrate = subprocess.run([sys.executable, "-m", "backend", "migrate"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "the newest migration" in migrate.stdout, migrate.stdout
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert version == head
    assert {"orders", "residents"} <= tables
