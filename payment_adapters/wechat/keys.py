"""Which key verifies what WeChat Pay signed — its API answers and its notifications alike.

WeChat Pay signs with the WeChat Pay public key (微信支付公钥, ``Wechatpay-Serial:
PUB_KEY_ID_…``) or with the private key of a platform certificate (平台证书, ``Wechatpay-Serial``
= the certificate's serial number in hex). A merchant holds one of them, the other, or both
while it migrates to the public key, and WeChat then signs with either. The key is chosen here,
by the serial, and only here: the client and the notification verifier both call
:meth:`WechatPayKeys.verify`.

An unknown serial fails verification. Nothing here goes to the network: certificates come
from a folder (``WECHAT_PLATFORM_CERTS_DIR``, as wechatpayv3's ``cert_dir``), re-read when the
folder changes so that a rotated certificate dropped into it is used without a restart.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from payment_adapters.base import VerificationFailed, WechatConfig

log = logging.getLogger(__name__)

PUB_KEY_PREFIX = "PUB_KEY_ID_"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"       # 签名探测: WeChat checks that we really verify
MAX_SKEW_S = 300
# A certificate serial is at most 20 bytes (RFC 5280): 40 hex digits.
_SERIAL = re.compile(r"[0-9A-Fa-f]{1,40}")


def certificate_serial(cert: x509.Certificate) -> str:
    """The serial as WeChat writes it in Wechatpay-Serial: upper-case hex of its bytes."""
    number = cert.serial_number
    return number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big").hex().upper()


def _rsa_public(pem: str, what: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ValueError(f"{what} is not a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{what} must be an RSA key")
    return key


class WechatPayKeys:
    """The WeChat Pay public key and/or the platform certificates of one merchant."""

    def __init__(self, *, public_key_pem: str = "", public_key_id: str = "",
                 platform_certs_dir: str = "") -> None:
        if bool(public_key_pem) != bool(public_key_id):
            raise ValueError("the WeChat Pay public key and its id (PUB_KEY_ID_…) go together: "
                             "set both or neither")
        if public_key_id and not public_key_id.startswith(PUB_KEY_PREFIX):
            raise ValueError(f"a WeChat Pay public key id starts with {PUB_KEY_PREFIX}, "
                             f"got {public_key_id!r}")
        if not public_key_pem and not platform_certs_dir:
            raise ValueError("no key to verify WeChat Pay with: configure the WeChat Pay public "
                             "key (WECHAT_PUBLIC_KEY + WECHAT_PUBLIC_KEY_ID), the platform "
                             "certificates (WECHAT_PLATFORM_CERTS_DIR), or both")
        self.public_key_id = public_key_id
        self._public_key = (_rsa_public(public_key_pem, "the WeChat Pay public key")
                            if public_key_pem else None)
        self._certs_dir = Path(platform_certs_dir) if platform_certs_dir else None
        self._lock = threading.Lock()
        self._certs: dict[int, x509.Certificate] = {}
        self._certs_seen: tuple[int, int] | None = None
        if self._certs_dir is not None:
            if not self._certs_dir.is_dir():
                raise ValueError(f"WECHAT_PLATFORM_CERTS_DIR {self._certs_dir} is not a folder")
            self._reload_if_changed()
            if self._public_key is None and not self._certs:
                raise ValueError(f"{self._certs_dir} holds no platform certificate (*.pem) and "
                                 "no WeChat Pay public key is configured")

    @classmethod
    def from_config(cls, config: WechatConfig) -> WechatPayKeys:
        return cls(public_key_pem=config.public_key_pem, public_key_id=config.public_key_id,
                   platform_certs_dir=config.platform_certs_dir)

    # ------------------------------------------------------------------ certificates
    def _reload_if_changed(self) -> None:
        assert self._certs_dir is not None
        try:
            stat = self._certs_dir.stat()
        except OSError as exc:
            log.error("cannot read WECHAT_PLATFORM_CERTS_DIR %s: %s", self._certs_dir, exc)
            return
        stamp = (stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            if stamp == self._certs_seen:
                return
            certs: dict[int, x509.Certificate] = {}
            for path in sorted(self._certs_dir.glob("*.pem")):
                try:
                    cert = x509.load_pem_x509_certificate(path.read_bytes())
                except (OSError, ValueError) as exc:
                    log.warning("%s is not a platform certificate: %s", path, exc)
                    continue
                if not isinstance(cert.public_key(), rsa.RSAPublicKey):
                    log.warning("%s: platform certificates are RSA; skipped", path)
                    continue
                certs[cert.serial_number] = cert
            self._certs, self._certs_seen = certs, stamp

    def _certificate(self, number: int) -> x509.Certificate | None:
        if self._certs_dir is None:
            return None
        # A serial not seen yet may be a rotated certificate just put in the folder.
        if number not in self._certs:
            self._reload_if_changed()
        return self._certs.get(number)

    def valid_certificates(self, now: datetime) -> list[x509.Certificate]:
        if self._certs_dir is not None:
            self._reload_if_changed()
        return [c for c in self._certs.values()
                if c.not_valid_before_utc <= now <= c.not_valid_after_utc]

    # ------------------------------------------------------------------ choosing the key
    def accept_serial(self, now: datetime) -> str | None:
        """What we can verify, for the ``Wechatpay-Serial`` request header: the public key id,
        else the newest valid platform certificate (as the official SDKs send)."""
        if self.public_key_id:
            return self.public_key_id
        valid = self.valid_certificates(now)
        if not valid:
            return None
        return certificate_serial(max(valid, key=lambda c: c.not_valid_before_utc))

    def key_for(self, serial: str, now: datetime) -> rsa.RSAPublicKey:
        """The key WeChat signed with under ``serial``; VerificationFailed if we hold none."""
        if serial.startswith(PUB_KEY_PREFIX):
            if self._public_key is None or serial != self.public_key_id:
                raise VerificationFailed(
                    f"Wechatpay-Serial {serial[:64]!r} is not our WeChat Pay public key id")
            return self._public_key
        cert = self._certificate(int(serial, 16)) if _SERIAL.fullmatch(serial) else None
        if cert is None:
            raise VerificationFailed(
                f"Wechatpay-Serial {serial[:64]!r} is neither our WeChat Pay public key id nor "
                "the serial of a platform certificate we hold")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerificationFailed(
                f"platform certificate {serial} is not valid now (valid "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)   # only RSA certificates are kept
        return key

    # ------------------------------------------------------------------ verifying
    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> str:
        """Check the ``Wechatpay-*`` headers and the signature over ``ts\\nnonce\\nbody\\n``
        (the raw bytes); ``now`` is real time. Returns the serial; VerificationFailed says why.
        """
        if now.utcoffset() is None:
            raise ValueError("now must be an aware datetime")
        h = {k.lower(): v for k, v in headers.items()}
        serial = h.get("wechatpay-serial", "")
        signature = h.get("wechatpay-signature", "")
        timestamp = h.get("wechatpay-timestamp", "")
        nonce = h.get("wechatpay-nonce", "")
        if not (serial and signature and timestamp and nonce):
            raise VerificationFailed("missing Wechatpay-Serial/Signature/Timestamp/Nonce header")
        key = self.key_for(serial, now)
        if signature.startswith(SIGNTEST_PREFIX):
            raise VerificationFailed("signature probe (WECHATPAY/SIGNTEST/)")
        # A missing type means RSA, as in the official Go SDK.
        if h.get("wechatpay-signature-type", SIGNATURE_TYPE) != SIGNATURE_TYPE:
            raise VerificationFailed("unsupported Wechatpay-Signature-Type")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            raise VerificationFailed("Wechatpay-Timestamp is not Unix seconds")
        if abs(now.timestamp() - int(timestamp)) >= MAX_SKEW_S:
            raise VerificationFailed("Wechatpay-Timestamp is 5 minutes or more away from now")
        try:
            key.verify(base64.b64decode(signature, validate=True),
                       timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n",
                       padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise VerificationFailed("signature does not verify") from exc
        return serial
