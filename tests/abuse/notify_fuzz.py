"""Malformed and forged channel notifications, built ahead of time (tests/abuse and
bench/notify_fuzz.py).

Every input starts from a real, correctly signed notification that the sandbox's channel
simulators make — for trades our database does not have, so even a mutation that still
verifies (Alipay and ChinaUMS forms: ``%2B`` and ``%2b`` decode alike) can change nothing —
or, for WeChat, from a genuine notification of a real pending order whose timestamp is stale
(correctly signed, 10 minutes or more old or ahead). Then it is broken in one of the ways in
:data:`KINDS`. Deterministic by seed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from payment_adapters.base import Channel
from payment_adapters.sandbox.core import PayOptions, SimTrade, sim_transaction_id

FORM = "application/x-www-form-urlencoded"
ONE_MB = 1 << 20   # backend.app.MAX_BODY_BYTES: over it, the body limit answers 413


@dataclass(frozen=True)
class Fuzzed:
    kind: str
    headers: dict[str, str]
    body: bytes


Base = tuple[dict[str, str], bytes]


def _sim_trade(rt: Any, channel: Channel, n: int) -> SimTrade:
    """A paid trade of the simulator that no order of ours has."""
    state = rt.channels.sandbox_state
    prefix = rt.channels.unionpay_config.msg_src_id if channel is Channel.UNIONPAY else ""
    trade = SimTrade(channel=channel, out_trade_no=f"{prefix}FUZZ{n:08d}{channel.value[:2]}",
                     amount_fen=28000 + n, notify_url="http://fuzz.invalid/notify",
                     kind="qr", description="居民医保")
    trade = state.put(trade)
    state.mark_paid(trade, PayOptions(),
                    sim_transaction_id(channel, state.next_seq(), state.now()))
    return trade


def genuine_bases(rt: Any, channel: Channel, count: int = 3) -> list[Base]:
    """Real notifications, correctly signed, of paid trades we have no order for."""
    sim = rt.channels.simulators[channel]
    bases = []
    for n in range(count):
        note = sim.payment_notification(_sim_trade(rt, channel, n), PayOptions())
        bases.append((dict(note.headers), bytes(note.body)))
    return bases


def stale_bases(rt: Any, trade_no: str) -> list[Base]:
    """WeChat: the real pending order's own notification, correctly signed, with a
    Wechatpay-Timestamp 10 minutes or more old or ahead (a replay, or a clock far off)."""
    sim = rt.channels.simulators[Channel.WECHAT]
    state = rt.channels.sandbox_state
    trade = state.get(Channel.WECHAT, trade_no)
    assert trade is not None, trade_no
    paid = state.get(Channel.WECHAT, trade_no)
    if paid is not None and paid.state == "pending":
        state.mark_paid(paid, PayOptions(),
                        sim_transaction_id(Channel.WECHAT, state.next_seq(), state.now()))
    now = int(time.time())
    out = []
    # far enough out that the run's own minutes cannot bring one back into the window
    for skew in (-900, -600, 900, 3600, -86400 * 30):
        note = sim.build_notification(trade, PayOptions(), timestamp=now + skew)
        out.append((dict(note.headers), bytes(note.body)))
    return out


# --------------------------------------------------------------------------- mutations
def _bitflip(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    data = bytearray(b)
    for _ in range(r.randint(1, 3)):
        i = r.randrange(len(data))
        data[i] ^= 1 << r.randrange(8)
    return h, bytes(data)


def _header_flip(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    """A signature header's text changed (WeChat), or the content type (forms)."""
    names = [k for k in h if k.lower().startswith("wechatpay-")] or list(h)
    name = r.choice(names)
    value = h[name]
    if value:
        i = r.randrange(len(value))
        value = value[:i] + chr(r.choice([ord(value[i]) ^ 1, 48, 0x7f, 0x4e2d])) + value[i + 1:]
    h = dict(h)
    h[name] = value.encode("utf-8", "replace").decode("latin-1")   # a header is latin-1
    return h, b


def _truncate(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    return h, b[:r.randrange(len(b))]


def _content_type(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    h = {k: v for k, v in h.items() if k.lower() != "content-type"}
    ctype = r.choice(["text/plain", "application/json", FORM + "; charset=gbk",
                      FORM + "; charset=ebcdic", "multipart/form-data; boundary=x",
                      "application/xml", "", "application/json; charset=utf-16"])
    if ctype:
        h["Content-Type"] = ctype
    return h, b


def _encoding(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    text = b.decode("utf-8", "replace")
    how = r.randrange(6)
    if how == 0:
        return h, text.encode("utf-16")
    if how == 1:
        return h, b"\xef\xbb\xbf" + b                       # a BOM
    if how == 2:
        i = r.randrange(len(b) + 1)
        return h, b[:i] + r.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]) + b[i:]
    if how == 3:
        return h, (text + "&subject=居民医保").encode("gbk")
    if how == 4:
        return h, b.replace(b"=", b"=%FF", 1)               # a percent escape not UTF-8
    return h, text.encode("utf-32")


def _duplicate(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    if b.startswith(b"{"):
        # JSON: a key twice (the last wins in Python: a different event than was signed)
        doc = json.loads(b)
        key = r.choice(list(doc))
        extra = json.dumps({key: r.choice(["x", 1, None, {"a": []}])})[1:-1]
        return h, b[:-1] + b"," + extra.encode() + b"}"
    pairs = b.split(b"&")
    pick = r.choice(pairs)
    name = pick.split(b"=", 1)[0]
    if r.random() < 0.5:
        return h, b + b"&" + pick                            # the very same field again
    return h, b + b"&" + name + b"=" + quote(str(r.randint(0, 10**9))).encode()


def _nested_json(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    depth = r.choice([10, 1000, 100_000])
    junk: Any
    how = r.randrange(5)
    if how == 0:
        return h, b"[" * depth + b"]" * depth
    if how == 1:
        return h, b'{"a":' * depth + b"1" + b"}" * depth
    if how == 2:
        junk = {"id": [1] * 50, "resource": {"ciphertext": {"x": [None, True, 1e308]}},
                "event_type": ["TRANSACTION.SUCCESS"], "resource_type": "encrypt-resource"}
    elif how == 3:
        junk = [{"code": "FAIL"}, "NaN", float("inf") if r.random() < 0.5 else -0.0]
    else:
        junk = {"resource_type": "encrypt-resource",
                "resource": {"algorithm": "AEAD_AES_256_GCM", "nonce": "\u0000" * 12,
                             "ciphertext": "A" * r.randint(0, 300), "associated_data": 7}}
    return h, json.dumps(junk, allow_nan=True).encode()


def _replay_stale(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    """Headers kept, timestamp moved (the signature no longer covers it) or the
    notification resent with the WeChat headers of another one."""
    h = dict(h)
    ts = next((k for k in h if k.lower() == "wechatpay-timestamp"), None)
    if ts is not None:
        h[ts] = r.choice([str(int(time.time()) - r.randint(300, 10**6)), "0", "-1",
                          "99999999999", "1e9", " 1700000000", "١٧٠٠٠٠٠٠٠٠"[:10].encode(
                              "utf-8").decode("latin-1")])
        return h, b
    # forms: the same notification with its notify_time moved back a year (re-signing needs
    # the channel's key: the signature no longer matches)
    return h, b.replace(b"notify_time=20", b"notify_time=19", 1).replace(
        b"notifyId=", b"notifyId=replay-", 1)


def _random_bytes(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    return h, r.randbytes(r.choice([0, 1, 7, 64, 500, 4000]))


def _nul(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    i = r.randrange(len(b) + 1)
    return h, b[:i] + b"\x00" * r.randint(1, 4) + b[i:]


def _medium(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    """Between the service's 64 KB and the 1 MB body limit: the failure answer."""
    return h, b + b"&" * r.randint(64 * 1024, 200 * 1024)


KINDS: dict[str, Callable[[random.Random, dict[str, str], bytes], Base]] = {
    "bitflip": _bitflip, "header": _header_flip, "truncated": _truncate,
    "content_type": _content_type, "encoding": _encoding, "duplicate_field": _duplicate,
    "nested_json": _nested_json, "replay_stale": _replay_stale, "random_bytes": _random_bytes,
    "nul": _nul, "medium": _medium}
# how often each kind is drawn (the medium bodies are few: each is 64–200 KB)
WEIGHTS = {"bitflip": 30, "header": 8, "truncated": 10, "content_type": 8, "encoding": 10,
           "duplicate_field": 10, "nested_json": 6, "replay_stale": 8, "random_bytes": 6,
           "nul": 3, "medium": 0.2}


def build(bases: list[Base], stale: list[Base], count: int, seed: int,
          huge: int = 10) -> list[Fuzzed]:
    """``count`` inputs: the stale genuine ones as they are, ``huge`` over the 1 MB body
    limit (one shared body), and mutations of the genuine ones."""
    r = random.Random(seed)
    out = [Fuzzed("stale_genuine", h, b) for h, b in stale]
    big = b"a=" + b"A" * (ONE_MB + 10)
    out += [Fuzzed("huge", dict(bases[0][0]), big) for _ in range(huge)]
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    pool = bases + stale
    while len(out) < count:
        kind = r.choices(kinds, weights)[0]
        h, b = r.choice(pool)
        mh, mb = KINDS[kind](r, dict(h), b)
        out.append(Fuzzed(kind, mh, mb))
    return out
