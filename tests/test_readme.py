"""The README is the operator's manual: every setting and the deployment are in it."""

from __future__ import annotations

import re
from pathlib import Path

from backend.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_every_setting_is_documented() -> None:
    text = _section("Configuration")
    families = set(re.findall(r"`([A-Z]+)_\*`", text))   # `WECHAT_*` covers WECHAT_APPID
    missing = [name.upper() for name in Settings.model_fields
               if f"`{name.upper()}`" not in text and name.upper().split("_")[0] not in families]
    assert not missing, f"README's configuration does not mention {missing}"


def test_deploy_section_covers_what_an_operator_needs() -> None:
    text = _section("Deploy")
    for needed in ("PostgreSQL", "Redis", "HTTPS reverse proxy", "RUN_WORKER_IN_SERVE",
                   "APP_SECRET", "PII_KEY", "PEM", "PUBLIC_BASE_URL", "TRUSTED_PROXIES",
                   "/healthz", "collection migrate", "collection worker", "WEB_CONCURRENCY"):
        assert needed in text, f"the Deploy section does not mention {needed}"
