"""Access tokens: a token checked once is not checked again while it lasts (read_token's
cache), and nothing a full check would refuse gets through the cache."""

from __future__ import annotations

import time

import jwt
import pytest

from backend.errors import Unauthorized
from backend.security import tokens
from backend.security.tokens import Principal, issue_token, read_token

SECRET = "token-test-secret-" + "y" * 32


def test_a_known_token_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    token = issue_token(SECRET, Principal(sub="wx:cached", role="resident"), 600)
    first = read_token(SECRET, token)
    decoded: list[str] = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decoded.append("x") or real(*a, **k))
    assert read_token(SECRET, token) == first == Principal(sub="wx:cached", role="resident")
    assert decoded == []


def test_a_known_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = issue_token(SECRET, Principal(sub="wx:short", role="resident"), 60)
    read_token(SECRET, token)
    later = time.time() + 61
    monkeypatch.setattr(tokens.time, "time", lambda: later)
    with pytest.raises(Unauthorized, match="expired"):
        read_token(SECRET, token)


def test_the_cache_answers_only_for_the_secret_that_checked_it() -> None:
    token = issue_token(SECRET, Principal(sub="wx:mine", role="resident"), 600)
    read_token(SECRET, token)
    with pytest.raises(Unauthorized, match="not valid"):
        read_token("another-secret-" + "z" * 32, token)


def test_a_changed_token_is_checked_in_full() -> None:
    token = issue_token(SECRET, Principal(sub="wx:mine", role="resident"), 600)
    read_token(SECRET, token)
    head, body, signature = token.split(".")
    forged = issue_token("forger-" + "f" * 32, Principal(sub="wx:mine", role="admin"), 600)
    with pytest.raises(Unauthorized):
        read_token(SECRET, f"{head}.{forged.split('.')[1]}.{signature}")


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_VERIFIED_MAX", 3)
    monkeypatch.setattr(tokens, "_VERIFIED", {})
    for n in range(10):
        read_token(SECRET, issue_token(SECRET, Principal(sub=f"wx:{n}", role="resident"), 600))
        assert len(tokens._VERIFIED) <= 3
