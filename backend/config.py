"""One Settings object; nothing else in the program reads os.environ."""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path("data")


class ConfigError(ValueError):
    """A setting that keeps the service from starting; the message names the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    data_dir: Path = DATA_DIR
    database_url: str = ""
    redis_url: str = ""
    # After a failed Redis call, Redis is left alone (this process's own store answers) and
    # tried again every this many seconds until it answers (backend.cache.RedisOutage).
    redis_retry_s: float = Field(default=5.0, gt=0, le=300)
    app_secret: str = ""
    pii_key: str = ""
    policy: str = "shanting-2021"
    collect_now: datetime | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    payment_sandbox: bool | None = None
    log_level: str = "INFO"
    # json: one JSON object per line, with the request id (operations' log pipelines);
    # text: one readable line (a developer's terminal). Both mask ID and phone numbers.
    log_format: Literal["json", "text"] = "json"
    # Who may read GET /metrics (no login): comma-separated addresses or networks (CIDR).
    # Loopback by default: a Prometheus on the same host, or one allowed here by address.
    metrics_allow: str = "127.0.0.1,::1"
    # Run the worker's jobs inside `serve`: the embedded default does, a deployment with
    # DATABASE_URL runs `python -m backend worker` instead unless this says otherwise.
    run_worker_in_serve: bool | None = None
    # Server processes `serve` starts unless --workers says otherwise. uvicorn would read
    # WEB_CONCURRENCY itself; here it is read once, with the rest, and passed on explicitly.
    web_concurrency: int = Field(default=1, ge=1, le=64)
    # Reverse proxies whose X-Forwarded-For (the client's address, which the per-IP limits
    # count) and X-Forwarded-Proto are believed: comma-separated addresses or networks
    # (CIDR). None by default: the headers are ignored and the client is the peer.
    trusted_proxies: str = ""

    # WeChat mini-program and WeChat Pay APIv3. WeChat Pay's signatures are verified with the
    # WeChat Pay public key (PEM path + PUB_KEY_ID_…), the platform certificates in a folder,
    # or both while a merchant migrates from certificates to the public key.
    wechat_appid: str = ""
    wechat_app_secret: str = ""
    wechat_mchid: str = ""
    wechat_apiv3_key: str = ""
    wechat_mch_private_key: str = ""
    wechat_mch_serial: str = ""
    wechat_public_key: str = ""
    wechat_public_key_id: str = ""
    wechat_platform_certs_dir: str = ""
    # The WeChat (not WeChat Pay) API the mini-program login calls (jscode2session).
    wechat_api_base_url: str = "https://api.weixin.qq.com"
    wechat_login_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Alipay
    alipay_appid: str = ""
    alipay_app_private_key: str = ""
    alipay_public_key: str = ""
    alipay_seller_id: str = ""
    # ChinaUMS bills QR (银联商务); msgSrc, msgSrcId and the key are assigned per merchant
    unionpay_mid: str = ""
    unionpay_tid: str = ""
    unionpay_msg_src: str = ""
    unionpay_msg_src_id: str = ""
    unionpay_key: str = ""
    # the simulator's private halves
    sandbox_wechat_private_key: str = ""
    sandbox_wechat_platform_cert_key: str = ""
    sandbox_alipay_private_key: str = ""

    # every outgoing channel call gives up after this long
    channel_timeout_s: float = 10.0

    # Per serve process: on PostgreSQL, the connections kept open for the common case of a
    # payment notification, applied on the event loop in one statement; and the threads
    # that apply every other notification, each with a connection while it works. Enough of
    # them commit together for PostgreSQL to flush their WAL in one write (bench/README.md,
    # "Notifications").
    notify_threads: int = Field(default=16, ge=1, le=64)
    # Rejected notifications (not verified, or signed but malformed) kept in full — a
    # notification_inbox row, body cut to 4 KB — per channel and minute of real time, counted
    # across the processes in Redis (per process without it); the others of that minute are
    # only counted in notification_rejections, with the first as a sample.
    notify_rejected_kept_per_minute: int = Field(default=100, ge=0, le=100_000)
    # Database connections kept per process (PostgreSQL): every request thread and the
    # in-process worker can hold one without the pool opening and closing extra ones.
    db_pool_size: int = Field(default=20, ge=1, le=200)

    # limits on lookups (per caller and per IP)
    lookup_miss_limit: int = 10
    # per IP: high, since a whole village may share one carrier-grade NAT address
    lookup_ip_miss_limit: int = 200
    lookup_miss_window_s: int = 600
    login_failure_limit: int = 5
    login_failure_window_s: int = 900
    # failures from any address slow an account's logins down, by up to this much
    login_slowdown_max_s: float = Field(default=3.0, ge=0, le=30)
    access_token_ttl_s: int = 8 * 3600
    # reports of paper receipts (POST /r/report, no login) per client address and hour,
    # counted across the serve processes in Redis
    receipt_reports_per_hour: int = Field(default=5, ge=1, le=10_000)

    # Reconciliation: the fee each channel charges on a payment (费率), as a decimal fraction
    # per channel, "wechat=0.002,alipay=0.002,unionpay=0.002,pos=0.002". A statement line whose
    # fee differs from amount × rate (rounded half-up to the fen) is a fee_mismatch; the
    # simulator's statements charge these rates.
    channel_fee_rates: str = "wechat=0.002,alipay=0.002,unionpay=0.002,pos=0.002"
    # uploaded statements larger than this are refused (a million-row WeChat bill is ~60 MB
    # gzipped); a compressed statement may expand to at most statement_max_expanded_bytes
    statement_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    statement_max_expanded_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    # The CJK TrueType font (.ttf, or .ttc: its first face) the publication PDFs embed, a
    # subset of it per file. Debian's fonts-wqy-microhei puts it here; without it the PDFs
    # answer 503 `pdf_font_unavailable` (the XLSX files need no font).
    pdf_font_path: Path = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
    # The PEM path of the Ed25519 private key receipts are signed with (its public half is
    # served at /r/public-key). Unset: generated into the data folder on first start
    # (sandbox only: live mode refuses to start without it, like APP_SECRET and PII_KEY).
    receipt_signing_key: str = ""

    @field_validator("channel_fee_rates")
    @classmethod
    def _fee_rates(cls, v: str) -> str:
        fee_rates(v)
        return v

    def fee_rate(self, channel: str) -> Decimal:
        return fee_rates(self.channel_fee_rates).get(channel, Decimal(0))

    @field_validator("collect_now")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("COLLECT_NOW must carry a UTC offset, e.g. 2020-11-02T09:00:00+08:00")
        return v

    @field_validator("metrics_allow")
    @classmethod
    def _metrics_allow(cls, v: str) -> str:
        for item in _split(v):
            try:
                ipaddress.ip_network(item)
            except ValueError as exc:
                raise ValueError(f"METRICS_ALLOW: {item!r} is not an IP address or network "
                                 f"({exc})") from None
        return v

    @property
    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item) for item in _split(self.metrics_allow))

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: str) -> str:
        for item in _split(v):
            if item == "*":
                raise ValueError("TRUSTED_PROXIES: '*' would let anyone claim any address; "
                                 "list the proxies' addresses or networks")
            try:
                ipaddress.ip_network(item)
            except ValueError as exc:
                raise ValueError(f"TRUSTED_PROXIES: {item!r} is not an IP address or network "
                                 f"({exc})") from None
        return v

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [str(ipaddress.ip_network(item)) for item in _split(self.trusted_proxies)]

    def live_mode_problems(self) -> list[str]:
        """What keeps this configuration from taking real money; empty in sandbox mode."""
        if self.sandbox:
            return []
        problems = []
        url = urlsplit(self.public_base_url)
        if url.scheme != "https" or not url.hostname or url.query or url.fragment:
            problems.append(
                "PUBLIC_BASE_URL must be https:// with a host and no query string or fragment "
                "(the channels POST payment notifications to it, and payers open its QR "
                f"links): got {self.public_base_url!r}")
        # ChinaUMS issues these per merchant; the public test set's values (msgSrc
        # WWW.TEST.COM, msgSrcId 3194) are only ever the simulator's.
        missing = [name.upper() for name in ("unionpay_mid", "unionpay_tid", "unionpay_msg_src",
                                             "unionpay_msg_src_id", "unionpay_key")
                   if not getattr(self, name)]
        if missing:
            problems.append(f"the ChinaUMS merchant's own {', '.join(missing)} must be set: "
                            "msgSrc (消息来源), msgSrcId and the key are assigned by ChinaUMS "
                            "with the merchant number")
        if bool(self.wechat_public_key) != bool(self.wechat_public_key_id):
            problems.append("WECHAT_PUBLIC_KEY and WECHAT_PUBLIC_KEY_ID go together: set both "
                            "or neither")
        if not self.wechat_public_key and not self.wechat_platform_certs_dir:
            problems.append("WeChat Pay must be verifiable: WECHAT_PUBLIC_KEY + "
                            "WECHAT_PUBLIC_KEY_ID (public-key mode), WECHAT_PLATFORM_CERTS_DIR "
                            "(platform certificates), or both")
        for name in ("app_secret", "pii_key"):
            if not getattr(self, name):
                problems.append(
                    f"{name.upper()} must be set, the same for every serve and worker: "
                    "generated into the data folder, each container would have its own (tokens "
                    "and personal data unreadable between them) and lose it with the container")
        if not self.receipt_signing_key:
            problems.append(
                "RECEIPT_SIGNING_KEY must be set (the PEM path of the Ed25519 key receipts are "
                "signed with), the same for every serve and worker: generated into the data "
                "folder, each container would sign with its own key, and receipts one issued "
                "would not verify on another (nor after the container is gone)")
        if self.collect_now is not None:
            problems.append(
                "COLLECT_NOW must be unset: it moves the business clock for demos and "
                "rehearsals, while the real channels date trades, expiry and bills by the real "
                f"one (got {self.collect_now.isoformat()})")
        return problems

    def check_live_mode(self) -> None:
        problems = self.live_mode_problems()
        if problems:
            raise ConfigError("live mode (PAYMENT_SANDBOX off) refuses to start: "
                              + "; ".join(problems))

    @property
    def sandbox(self) -> bool:
        """The simulator only when asked for, or when no live channel is configured at all.

        A half-configured deployment (one channel's keys set, another's missing) is refused:
        silently falling back to the simulator would accept ``sandbox:`` logins and let
        anyone "pay" through ``/sandbox/pay``.
        """
        if self.payment_sandbox is not None:
            return self.payment_sandbox
        live = [bool(self.wechat_mchid), bool(self.alipay_appid), bool(self.unionpay_mid)]
        if all(live):
            return False
        if any(live):
            raise ConfigError("live keys are set for some payment channels but not all "
                             "(WECHAT_MCHID, ALIPAY_APPID, UNIONPAY_MID): set them all, or "
                             "PAYMENT_SANDBOX=1 explicitly")
        return True

    @property
    def worker_in_serve(self) -> bool:
        if self.run_worker_in_serve is not None:
            return self.run_worker_in_serve
        return not self.database_url

    @property
    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{self.data_dir / 'collection.sqlite3'}"
        # The service picks its driver: psycopg 3 for PostgreSQL.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url

    def _generated(self, name: str, make: Callable[[], str], file: str | None = None) -> str:
        if not self.sandbox:
            raise ConfigError(f"{name.upper()} must be set in live mode: made here, it would be "
                              "this process's alone (and lost with its container)")
        return write_once(self.data_dir / (file or name), make).strip()

    @property
    def app_secret_value(self) -> str:
        return self.app_secret or self._generated("app_secret", lambda: secrets.token_urlsafe(48))

    @property
    def pii_key_bytes(self) -> bytes:
        raw = self.pii_key or self._generated(
            "pii_key", lambda: base64.b64encode(secrets.token_bytes(32)).decode()
        )
        key = base64.b64decode(raw, validate=True)
        if len(key) != 32:
            raise ValueError("PII_KEY must be base64 of exactly 32 bytes")
        return key

    @property
    def receipt_signing_key_pem(self) -> bytes:
        """The receipts' Ed25519 private key (PKCS#8 PEM): read from RECEIPT_SIGNING_KEY, or
        generated once into the data folder (sandbox mode only)."""
        if self.receipt_signing_key:
            try:
                return Path(self.receipt_signing_key).read_bytes()
            except OSError as exc:
                raise ConfigError(f"RECEIPT_SIGNING_KEY: {self.receipt_signing_key!r} cannot be "
                                  f"read ({exc.strerror})") from None
        return (self._generated("receipt_signing_key", new_ed25519_pem,
                                file="receipt_signing_key.pem") + "\n").encode()


def new_ed25519_pem() -> str:
    """A new Ed25519 private key, PKCS#8 PEM (what RECEIPT_SIGNING_KEY names)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()


def write_once(path: Path, make: Callable[[], str]) -> str:
    """A file made by the first process that needs it, read by every other: the content is
    written apart and linked into place, which fails if another process got there first, so
    processes starting together all read one whole value."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        # made readable by its owner only from the start (no moment with the umask's mode)
        with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(make())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass                            # another process made it first: read theirs
        finally:
            draft.unlink()
    return path.read_text()


def fee_rates(value: str) -> dict[str, Decimal]:
    """``"wechat=0.002,alipay=0.002"`` → {"wechat": Decimal("0.002"), …}; refuses nonsense."""
    rates: dict[str, Decimal] = {}
    for part in _split(value):
        name, sep, rate = part.partition("=")
        try:
            parsed = Decimal(rate.strip())
        except ArithmeticError:
            parsed = Decimal(-1)
        if not sep or name.strip() not in ("wechat", "alipay", "unionpay", "pos") or not (
                0 <= parsed < 1):
            raise ValueError(f"CHANNEL_FEE_RATES: {part!r} is not channel=rate with a channel of "
                             "wechat, alipay, unionpay, pos and a rate from 0 to 1")
        rates[name.strip()] = parsed
    return rates


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
