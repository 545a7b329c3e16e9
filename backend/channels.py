"""The payment channels this service talks to, built once from Settings.

In sandbox mode (``PAYMENT_SANDBOX=1``, the default without live keys) every channel call
goes to the built-in simulator mounted at ``/sandbox``; its keys are generated into
``./data/sandbox/`` unless configured, so the simulator signs with real keys and our side
verifies with their public halves exactly as it would against the real channel.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter

from backend.config import Settings, write_once
from payment_adapters.base import (
    AlipayConfig,
    Channel,
    Clock,
    NotificationVerifier,
    PaymentClient,
    UnionpayConfig,
    WechatConfig,
    real_clock,
)
from payment_adapters.pem import private_key
from payment_adapters.sandbox.core import ChannelSimulator, SandboxState

# API channel name → (channel, trade kind); aggregate_qr picks its channel when scanned.
API_CHANNELS: dict[str, tuple[Channel, str] | None] = {
    "wechat_jsapi": (Channel.WECHAT, "jsapi"),
    "wechat_native": (Channel.WECHAT, "native"),
    "alipay_qr": (Channel.ALIPAY, "qr"),
    "unionpay_qr": (Channel.UNIONPAY, "qr"),
    "aggregate_qr": None,
}

SANDBOX_IDS = {
    "wechat_appid": "wx5a9e0c0d1e2f3a4b",
    "wechat_mchid": "1900000109",
    "wechat_mch_serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
    "wechat_public_key_id": "PUB_KEY_ID_0119000001092020110200000000000001",
    "alipay_appid": "2021000117600001",
    "alipay_seller_id": "2088102177000001",
    "unionpay_mid": "898340149000005",
    "unionpay_tid": "88880001",
    # ChinaUMS's public test set: the simulator's only, never a live fallback
    "unionpay_msg_src": "WWW.TEST.COM",
    "unionpay_msg_src_id": "3194",
}


def _private_pem(path: Path) -> str:
    def make() -> str:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    return write_once(path, make)


def public_pem_of(private_pem: str) -> str:
    return private_key(private_pem).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _secret(path: Path, length: int) -> str:
    return write_once(path, lambda: secrets.token_hex(length // 2)).strip()


def _read(path: str) -> str:
    return Path(path).read_text()


@dataclass
class Channels:
    settings: Settings
    # the business clock: the clients date order numbers, bill dates and expiry by it, and
    # the simulator its payments and refunds
    clock: Clock = field(default=real_clock)
    # the sandbox's control of a COLLECT_NOW clock (move it forward); None on real time
    move_clock: Callable[[datetime], datetime] | None = None

    @property
    def sandbox(self) -> bool:
        return self.settings.sandbox

    def _v(self, name: str) -> str:
        value = getattr(self.settings, name)
        if value:
            return str(value)
        if not self.sandbox:
            raise RuntimeError(f"{name.upper()} must be set when PAYMENT_SANDBOX is off")
        return SANDBOX_IDS.get(name, "")

    @cached_property
    def _keys_dir(self) -> Path:
        return self.settings.data_dir / "sandbox"

    def _pem(self, configured: str, sandbox_file: str) -> str:
        if configured:
            return _read(configured)
        if not self.sandbox:
            raise RuntimeError(f"a PEM path for {sandbox_file} must be configured")
        return _private_pem(self._keys_dir / sandbox_file)

    @cached_property
    def sandbox_wechat_private_key(self) -> str:
        return self._pem(self.settings.sandbox_wechat_private_key, "wechat_platform_key.pem")

    @cached_property
    def sandbox_alipay_private_key(self) -> str:
        return self._pem(self.settings.sandbox_alipay_private_key, "alipay_platform_key.pem")

    @cached_property
    def sandbox_wechat_certificate(self) -> tuple[str, str]:
        """The simulator's platform certificate and its private key (PEM, PEM): a valid
        certificate over ``SANDBOX_WECHAT_PLATFORM_CERT_KEY`` (generated when unset) found in the
        certificates folder, else a new self-signed one written there as ``<serial>.pem``."""
        from payment_adapters.sandbox.wechat import certificate_serial, make_platform_certificate

        key_pem = self._pem(self.settings.sandbox_wechat_platform_cert_key,
                            "wechat_platform_cert_key.pem")
        folder = self._wechat_certs_dir
        folder.mkdir(parents=True, exist_ok=True)
        public = private_key(key_pem).public_key()
        now = datetime.now(UTC)     # certificates are valid in real time, not business time
        for path in sorted(folder.glob("*.pem")):
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except ValueError:
                continue
            if (cert.public_key() == public
                    and cert.not_valid_before_utc <= now < cert.not_valid_after_utc):
                return path.read_text(), key_pem
        cert_pem = make_platform_certificate(key_pem, not_before=now - timedelta(hours=1),
                                             not_after=now + timedelta(days=5 * 365))
        serial = certificate_serial(x509.load_pem_x509_certificate(cert_pem.encode()))
        (folder / f"{serial}.pem").write_text(cert_pem)
        return cert_pem, key_pem

    @cached_property
    def _wechat_certs_dir(self) -> Path:
        configured = self.settings.wechat_platform_certs_dir
        return Path(configured) if configured else self._keys_dir / "wechat_platform_certs"

    @cached_property
    def wechat_config(self) -> WechatConfig:
        s = self.settings
        if self.sandbox:
            # Our side holds both the public key and the platform certificate, as a merchant
            # migrating between them: the simulator may sign with either.
            public = (_read(s.wechat_public_key) if s.wechat_public_key
                      else public_pem_of(self.sandbox_wechat_private_key))
            public_key_id = self._v("wechat_public_key_id")
            _ = self.sandbox_wechat_certificate    # makes sure the folder holds it
            certs_dir = str(self._wechat_certs_dir)
        else:
            public = _read(s.wechat_public_key) if s.wechat_public_key else ""
            public_key_id = s.wechat_public_key_id
            certs_dir = s.wechat_platform_certs_dir
            if not (public and public_key_id) and not certs_dir:
                raise RuntimeError("WeChat Pay needs WECHAT_PUBLIC_KEY + WECHAT_PUBLIC_KEY_ID, "
                                   "WECHAT_PLATFORM_CERTS_DIR, or both when PAYMENT_SANDBOX "
                                   "is off")
        return WechatConfig(
            appid=self._v("wechat_appid"), mchid=self._v("wechat_mchid"),
            apiv3_key=s.wechat_apiv3_key or (_secret(self._keys_dir / "wechat_apiv3_key", 32)
                                            if self.sandbox else ""),
            mch_private_key_pem=self._pem(s.wechat_mch_private_key, "wechat_merchant_key.pem"),
            mch_serial=self._v("wechat_mch_serial"), public_key_pem=public,
            public_key_id=public_key_id, platform_certs_dir=certs_dir,
            timeout_s=s.channel_timeout_s,
            **({"base_url": self.sandbox_base("wechat")} if self.sandbox else {}),
        )

    @cached_property
    def alipay_config(self) -> AlipayConfig:
        s = self.settings
        public = (_read(s.alipay_public_key) if s.alipay_public_key
                  else public_pem_of(self.sandbox_alipay_private_key))
        return AlipayConfig(
            appid=self._v("alipay_appid"),
            app_private_key_pem=self._pem(s.alipay_app_private_key, "alipay_app_key.pem"),
            alipay_public_key_pem=public, seller_id=self._v("alipay_seller_id"),
            timeout_s=s.channel_timeout_s,
            **({"gateway": self.sandbox_base("alipay") + "/gateway.do"} if self.sandbox else {}),
        )

    @cached_property
    def unionpay_config(self) -> UnionpayConfig:
        s = self.settings
        return UnionpayConfig(
            mid=self._v("unionpay_mid"), tid=self._v("unionpay_tid"),
            msg_src=self._v("unionpay_msg_src"), msg_src_id=self._v("unionpay_msg_src_id"),
            timeout_s=s.channel_timeout_s,
            key=s.unionpay_key or (_secret(self._keys_dir / "unionpay_key", 48)
                                   if self.sandbox else ""),
            **({"base_url": self.sandbox_base("unionpay") + "/netpay-route-server/api/"}
               if self.sandbox else {}),
        )

    def sandbox_base(self, channel: str) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}/sandbox/{channel}"

    def notify_url(self, channel: Channel) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}/api/v1/notify/{channel.value}"

    @cached_property
    def clients(self) -> dict[Channel, PaymentClient]:
        from payment_adapters.alipay import AlipayClient
        from payment_adapters.unionpay import UnionpayClient
        from payment_adapters.wechat import WechatPayClient

        return {Channel.WECHAT: WechatPayClient(self.wechat_config, clock=self.clock),
                Channel.ALIPAY: AlipayClient(self.alipay_config, clock=self.clock),
                Channel.UNIONPAY: UnionpayClient(self.unionpay_config, clock=self.clock)}

    @cached_property
    def verifiers(self) -> dict[Channel, NotificationVerifier]:
        from payment_adapters.alipay import AlipayNotificationVerifier
        from payment_adapters.unionpay import UnionpayNotificationVerifier
        from payment_adapters.wechat import WechatNotificationVerifier

        return {Channel.WECHAT: WechatNotificationVerifier(self.wechat_config),
                Channel.ALIPAY: AlipayNotificationVerifier(self.alipay_config),
                Channel.UNIONPAY: UnionpayNotificationVerifier(self.unionpay_config)}

    @cached_property
    def sandbox_state(self) -> SandboxState:
        return SandboxState(self.clock)

    @cached_property
    def simulators(self) -> dict[Channel, ChannelSimulator]:
        from payment_adapters.sandbox.alipay import AlipaySimulator
        from payment_adapters.sandbox.unionpay import UnionpaySimulator
        from payment_adapters.sandbox.wechat import WechatSimulator

        state = self.sandbox_state
        return {
            Channel.WECHAT: WechatSimulator(state, self.wechat_config,
                                            self.sandbox_wechat_private_key,
                                            certificate=self.sandbox_wechat_certificate,
                                            fee_rate=self.settings.fee_rate("wechat")),
            Channel.ALIPAY: AlipaySimulator(state, self.alipay_config,
                                            self.sandbox_alipay_private_key,
                                            fee_rate=self.settings.fee_rate("alipay")),
            Channel.UNIONPAY: UnionpaySimulator(state, self.unionpay_config),
        }

    def sandbox_router(self) -> APIRouter:
        from payment_adapters.sandbox.control import control_router

        return control_router(self.sandbox_state, list(self.simulators.values()),
                              move_clock=self.move_clock)
