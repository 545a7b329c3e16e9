"""Fetching a day's statement through the channels' own APIs: client ↔ simulator over HTTP.

The business clock is one movable clock shared by the client and the simulator (the
simulator publishes a day's bill by it); the download links' validity runs on real time,
which the tests move by injecting the simulator's real clock instead of sleeping.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from backend.channels import Channels
from backend.config import Settings
from payment_adapters.alipay import AlipayClient
from payment_adapters.base import Channel, ChannelError, StatementNotReady, StatementSource
from payment_adapters.sandbox.bills import real_now
from payment_adapters.sandbox.core import SimTrade
from payment_adapters.unionpay import UnionpayClient
from payment_adapters.wechat import WechatPayClient
from payment_adapters.wechat.client import months_before, oldest_bill_day
from tests.conftest import TEST_PII_KEY, Live
from tests.payment_adapters.conftest import rsa_pem_pair
from tests.payment_adapters.test_alipay import Env as AlipayEnv
from tests.payment_adapters.test_wechat import Env as WechatEnv
from tests.payment_adapters.test_wechat import make_env, order  # noqa: F401 (fixture)

BEIJING = ZoneInfo("Asia/Shanghai")
# A day a few days back from real time: orders made "then" expire in real time ahead.
DAY = (datetime.now(BEIJING) - timedelta(days=5)).date()


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=BEIJING)


class MovableClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def shifted(seconds: float) -> Callable[[], datetime]:
    return lambda: real_now() + timedelta(seconds=seconds)


# ====================================================================== WeChat Pay
def test_wechat_fetch_round_trip_hash_publication_and_signatures(
        make_env: Callable[..., WechatEnv], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    clock = MovableClock(at(DAY, 12))
    env = make_env("public_key", clock)
    client = WechatPayClient(env.client.config, clock=clock)
    env.client.create(order(env, "BILLWX0001", amount_fen=38000))
    env.pay("BILLWX0001")

    # Not published: the day itself, and the next day before 10:00 (business clock).
    for now in (at(DAY, 23, 59), at(DAY + timedelta(days=1), 9, 59)):
        clock.now = now
        with pytest.raises(StatementNotReady, match="after .* 10:00 Beijing"):
            client.fetch_statement(DAY)
    assert not any("/v3/bill/" in p for p in env.requests)   # refused before asking

    clock.now = at(DAY + timedelta(days=1), 10)
    body = client.fetch_statement(DAY)
    assert body[:2] == b"\x1f\x8b"                            # gzip, as delivered
    assert b"BILLWX0001" in gzip.decompress(body)

    # The hash is over the decompressed bill (WeChat: 原始账单（gzip需要解压缩）的摘要值).
    link = client.statement_link(DAY)
    assert link["hash_value"] == hashlib.sha1(gzip.decompress(body)).hexdigest()
    assert link["download_url"].endswith("&tartype=gzip")

    # The download needs a signed Authorization too; a stranger's signature is refused.
    unsigned = httpx.get(link["download_url"])
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "SIGN_ERROR"
    stranger = WechatPayClient(replace(client.config,
                                       mch_private_key_pem=rsa_pem_pair("stranger")[0]),
                               clock=clock)
    with pytest.raises(ChannelError) as refused:
        stranger.download_statement(link["download_url"], link["hash_value"])
    assert refused.value.code == "SIGN_ERROR"
    with pytest.raises(ChannelError) as refused:
        stranger.fetch_statement(DAY)
    assert refused.value.code == "SIGN_ERROR"
    assert httpx.get(f"{env.base}/sandbox/wechat/v3/bill/tradebill",
                     params={"bill_date": DAY.isoformat()}).status_code == 401

    # A download that would inflate past the cap is refused as it inflates (a gzip bomb).
    import payment_adapters.wechat.client as wechat_client
    monkeypatch.setattr(wechat_client, "STATEMENT_MAX_EXPANDED_BYTES", 200)
    with pytest.raises(ChannelError) as bomb:
        client.fetch_statement(DAY)
    assert bomb.value.code == "statement_too_large" and "more than 200 bytes" in str(bomb.value)
    monkeypatch.undo()

    # A file damaged on the way fails the SHA1 check.
    env.faults(corrupt_statement=True)
    with pytest.raises(ChannelError) as damaged:
        client.fetch_statement(DAY)
    assert damaged.value.code == "statement_hash_mismatch" and damaged.value.retryable
    env.faults(corrupt_statement=False)

    # The link lives 30 s (real time), and (switch) serves one download.
    link = client.statement_link(DAY)
    env.sim.bill_links.real_clock = shifted(31)
    with pytest.raises(ChannelError) as expired:
        client.download_statement(link["download_url"], link["hash_value"])
    assert expired.value.code == "INVALID_REQUEST"
    env.sim.bill_links.real_clock = real_now
    env.sim.bill_links.single_use = True
    link = client.statement_link(DAY)
    assert client.download_statement(link["download_url"], link["hash_value"]) == body
    with pytest.raises(ChannelError, match="INVALID_REQUEST"):
        client.download_statement(link["download_url"], link["hash_value"])

    # A link that is not WeChat Pay's gets no Authorization of ours.
    with pytest.raises(ChannelError, match="not on WeChat Pay's API"):
        client.download_statement("https://example.com/v3/billdownload/file?token=x",
                                  link["hash_value"])


def test_wechat_days_the_api_does_not_serve(make_env: Callable[..., WechatEnv]) -> None:  # noqa: F811
    clock = MovableClock(at(DAY, 12))
    env = make_env("public_key", clock)
    client = WechatPayClient(env.client.config, clock=clock)
    env.client.create(order(env, "BILLWX0002"))
    env.pay("BILLWX0002")

    # A day without any payment or refund has no bill at WeChat.
    clock.now = at(DAY + timedelta(days=3), 11)
    with pytest.raises(ChannelError) as none:
        client.fetch_statement(DAY + timedelta(days=1))
    assert none.value.code == "no_statement" and not none.value.retryable

    # Older than three months: refused before asking, saying to upload it.
    clock.now = at(months_before(DAY, -3) + timedelta(days=1), 11)
    with pytest.raises(ChannelError, match="upload it") as old:
        client.fetch_statement(DAY)
    assert old.value.code == "statement_out_of_range" and not old.value.retryable

    # The simulator holds to the same rules by its own clock, whatever the client thinks.
    ahead = WechatPayClient(env.client.config,
                            clock=lambda: at(DAY + timedelta(days=1), 10, 30))
    clock.now = at(DAY + timedelta(days=1), 9, 30)
    with pytest.raises(StatementNotReady, match="STATEMENT_CREATING"):
        ahead.fetch_statement(DAY)
    clock.now = at(months_before(DAY, -4), 11)
    with pytest.raises(ChannelError) as refused:
        ahead.fetch_statement(DAY)
    assert refused.value.code == "INVALID_REQUEST"


def test_three_months_back() -> None:
    assert months_before(date(2026, 5, 31), 3) == date(2026, 2, 28)
    assert months_before(date(2024, 5, 31), 3) == date(2024, 2, 29)
    assert months_before(date(2026, 1, 15), 3) == date(2025, 10, 15)
    assert oldest_bill_day(date(2026, 12, 1)) == date(2026, 9, 1)


# ====================================================================== Alipay
def test_alipay_fetch_round_trip_expiry_and_not_ready(serve: Callable[..., object],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clock = MovableClock(at(DAY, 12))
    env = AlipayEnv(serve, clock)      # type: ignore[arg-type]
    client = AlipayClient(env.config, clock=clock)
    env.create("BILLALI0001")
    env.pay("BILLALI0001")

    clock.now = at(DAY, 23)            # today: Alipay has no bill yet (asked nothing)
    with pytest.raises(StatementNotReady, match="none for today"):
        client.fetch_statement(DAY)
    clock.now = at(DAY + timedelta(days=1), 8, 30)     # made the next morning, by 09:00
    with pytest.raises(StatementNotReady, match="isp.bill_not_exist"):
        client.fetch_statement(DAY)

    clock.now = at(DAY + timedelta(days=1), 9, 30)
    body = client.fetch_statement(DAY)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert any(b"BILLALI0001" in archive.read(name) for name in archive.namelist())

    # The link dies 30 s (real time) after Alipay hands it out.
    link = client.statement_link(DAY)
    env.sim.bill_links.real_clock = shifted(31)
    with pytest.raises(ChannelError) as expired:
        client.download_statement(link)
    assert expired.value.code == "statement_link_refused" and expired.value.retryable
    env.sim.bill_links.real_clock = real_now

    # A zip whose members would inflate past the cap is refused before testing them.
    import payment_adapters.alipay.client as alipay_client
    monkeypatch.setattr(alipay_client, "STATEMENT_MAX_EXPANDED_BYTES", 200)
    with pytest.raises(ChannelError) as bomb:
        client.fetch_statement(DAY)
    assert bomb.value.code == "statement_too_large"
    monkeypatch.undo()

    # A damaged download is caught by the zip's own CRCs.
    env.faults(corrupt_statement=True)
    with pytest.raises(ChannelError) as damaged:
        client.fetch_statement(DAY)
    assert damaged.value.code == "statement_corrupt"
    env.faults(corrupt_statement=False)

    # A day without trades has no bill (isp.bill_not_exist): not ready, never an empty file.
    with pytest.raises(StatementNotReady):
        client.fetch_statement(DAY - timedelta(days=1))

    # The gateway wants the app's signature on this method as on every other.
    stranger = AlipayClient(replace(env.config,
                                    app_private_key_pem=rsa_pem_pair("stranger")[0]),
                            clock=clock)
    with pytest.raises(ChannelError) as refused:
        stranger.fetch_statement(DAY)
    assert refused.value.code == "isv.invalid-signature"


# ====================================================================== the wiring
def test_the_service_wires_clock_fee_rates_and_statement_sources(
        tmp_path: Path, sandbox_keys: dict[str, object]) -> None:
    settings = Settings(data_dir=tmp_path, pii_key=TEST_PII_KEY, payment_sandbox=True,
                        app_secret="test-secret-" + "x" * 32,
                        channel_fee_rates="wechat=0.006,alipay=0.0038", **sandbox_keys)
    clock = MovableClock(at(DAY, 12))
    channels = Channels(settings, clock)
    sims = channels.simulators
    assert sims[Channel.WECHAT].fee_rate == Decimal("0.006")         # type: ignore[attr-defined]
    assert sims[Channel.ALIPAY].fee_rate == Decimal("0.0038")        # type: ignore[attr-defined]
    clients = channels.clients
    for channel in (Channel.WECHAT, Channel.ALIPAY):
        source: StatementSource = clients[channel]    # type: ignore[assignment]
        assert source.channel is channel and callable(source.fetch_statement)
    # ChinaUMS publishes no statement API: its statements are uploaded.
    assert not hasattr(UnionpayClient, "fetch_statement")
    with pytest.raises(StatementNotReady):     # dated by the service's business clock
        clients[Channel.WECHAT].fetch_statement(DAY)   # type: ignore[attr-defined]


def test_fetch_through_the_served_app(live: Live) -> None:
    """The served app's own simulator and clients: COLLECT_NOW is 2020-11-02 09:00 Beijing."""
    state = live.rt.channels.sandbox_state
    day = date(2020, 10, 31)
    for channel, no, txn in ((Channel.WECHAT, "LIVEWX0001", "4200000000202010310000000001"),
                             (Channel.ALIPAY, "LIVEALI0001", "2020103122001400000000000001")):
        state.put(SimTrade(channel=channel, out_trade_no=no, amount_fen=38000,
                           notify_url="http://127.0.0.1/none", kind="qr", state="paid",
                           transaction_id=txn, paid_at=at(day, 15).astimezone(UTC),
                           paid_fen=38000))
    clients = live.rt.channels.clients
    wechat = clients[Channel.WECHAT].fetch_statement(day)     # type: ignore[attr-defined]
    assert b"LIVEWX0001" in gzip.decompress(wechat)
    alipay = clients[Channel.ALIPAY].fetch_statement(day)     # type: ignore[attr-defined]
    assert zipfile.ZipFile(io.BytesIO(alipay)).testzip() is None
    with pytest.raises(StatementNotReady):     # 2020-11-01: published at 11-02 10:00
        clients[Channel.WECHAT].fetch_statement(date(2020, 11, 1))  # type: ignore[attr-defined]
