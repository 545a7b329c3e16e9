"""Private keys loaded from PEM text, once per process for each key.

Loading an RSA private key makes ``cryptography`` check the key's arithmetic, about 30 ms
for 2,048 bits. A process loads the same few keys (merchant, app, the simulator's) whenever
it builds a channel client or a simulator: once in ``serve``, but once per test in the
suite, where it came to a quarter of a second per app. Key objects are immutable and safe
to share between threads, so the same PEM text gives the same object.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


@lru_cache(maxsize=64)
def private_key(pem: str) -> PrivateKeyTypes:
    """The private key in ``pem`` (unencrypted PKCS#8 or PKCS#1)."""
    return serialization.load_pem_private_key(pem.encode(), password=None)


def rsa_private_key(pem: str, what: str) -> rsa.RSAPrivateKey:
    """The RSA private key in ``pem``; ``what`` names it in the error for any other kind."""
    key = private_key(pem)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{what} must be an RSA private key")
    return key
