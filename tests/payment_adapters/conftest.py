"""Fixtures for channel tests: keys made once, and the simulator served on a real port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from tests.servers import ServedApp


@cache
def rsa_pem_pair(name: str) -> tuple[str, str]:
    """(private PEM, public PEM) — one RSA-2048 pair per name per test session."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture
def serve() -> Iterator[Callable[[FastAPI], ServedApp]]:
    started: list[ServedApp] = []

    def _serve(app: FastAPI) -> ServedApp:
        served = ServedApp(app).start()
        started.append(served)
        return served

    yield _serve
    for s in started:
        s.stop()
