"""Personal data (个人信息): keyed hashes for lookup, deterministic encryption, masks.

ID numbers and phone numbers are stored twice: an HMAC-SHA256 keyed hash, to find a row
without the plain value, and an AES-SIV ciphertext, readable only where an export for the tax
bureau needs it. AES-SIV is deterministic, so re-importing the same file rewrites nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _derive(key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


class PiiVault:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("PII key must be 32 bytes")
        self._hash_key = _derive(key, b"pii/hash/v1", 32)
        self._aead = AESSIV(_derive(key, b"pii/encrypt/v1", 64))
        self.ref_key = _derive(key, b"resident-ref/v1", 32)

    def hash(self, value: str, kind: str = "id") -> str:
        return hmac.new(self._hash_key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()

    def encrypt(self, value: str, kind: str = "id") -> str:
        ct = self._aead.encrypt(value.encode(), [kind.encode()])
        return base64.b64encode(ct).decode()

    def decrypt(self, token: str, kind: str = "id") -> str:
        return self._aead.decrypt(base64.b64decode(token), [kind.encode()]).decode()


def mask_id_number(number: str) -> str:
    """``370406********1234``: region kept, birth date and sequence hidden."""
    if len(number) < 10:
        return "*" * len(number)
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def mask_phone(phone: str) -> str:
    if len(phone) < 7:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def mask_name(name: str) -> str:
    """Names are shown with the surname only: 张三 → 张*, 欧阳娜娜 → 欧***."""
    if not name:
        return name
    return name[0] + "*" * max(1, len(name) - 1)
