"""Malformed and forged channel notifications, built ahead of time (tests/abuse and
bench/notify_fuzz.py).

Every input starts from a real, correctly signed notification that the sandbox's channel
simulator makes, with the runtime's keys, **of the real pending order** of its channel
(:func:`genuine_bases`): sent as it is, each of them would pay that order. WeChat's also
start from that order's notification with a Wechatpay-Timestamp 10 minutes or more old or
ahead (:func:`stale_bases`: correctly signed, refused for its time). Then each is broken in one
of the ways in :data:`KINDS` — bit flips, truncation, wrong content types, bodies over 64 KB
and over the 1 MB limit, wrong encodings, duplicate fields, replayed and stale timestamps,
nested junk, random bytes, NUL bytes — so that a mutation which still verified would pay the
order, and the test's money state would show it.

A mutation can leave what is signed as it was: a ``%2b`` for a ``%2B`` in a form (they decode
alike), a hex ``sign`` in the other case (ChinaUMS compares it in upper case), a base64
signature whose last character differs only in the bits it does not use. Those are genuine
notifications, not forged ones; :func:`build` leaves out every input whose
:func:`signed_content` is a genuine base's, and does not count it. Deterministic by seed
(the bases themselves carry fresh nonces and timestamps).
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from backend.notifications.service import MAX_NOTIFICATION_BYTES
from payment_adapters.base import Channel
from payment_adapters.sandbox.core import PayOptions, SimTrade, sim_transaction_id
from payment_adapters.wechat.keys import SIGNATURE_TYPE

FORM = "application/x-www-form-urlencoded"
ONE_MB = 1 << 20   # backend.app.MAX_BODY_BYTES: over it, the body limit answers 413


@dataclass(frozen=True)
class Fuzzed:
    kind: str
    headers: dict[str, str]
    body: bytes


Base = tuple[dict[str, str], bytes]


def paid_trade(rt: Any, channel: Channel, trade_no: str) -> SimTrade:
    """The simulator's trade of our pending order, paid there (not here: no notification of
    it has reached us), so that its simulator can write the notification of the payment."""
    state = rt.channels.sandbox_state
    trade = state.get(channel, trade_no)
    assert trade is not None, (channel, trade_no)
    if trade.state == "pending":
        state.mark_paid(trade, PayOptions(),
                        sim_transaction_id(channel, state.next_seq(), state.now()))
    return trade


def genuine_bases(rt: Any, channel: Channel, trade_no: str, count: int = 3) -> list[Base]:
    """The pending order's own payment notification, correctly signed with the runtime's
    channel keys, written now (``count`` of them; WeChat's and ChinaUMS's differ in their
    nonces, Alipay resends one unchanged): any of them, sent as it is, pays the order."""
    sim = rt.channels.simulators[channel]
    trade = paid_trade(rt, channel, trade_no)
    bases: list[Base] = []
    for _ in range(count):
        note = sim.payment_notification(trade, PayOptions())
        base = (dict(note.headers), bytes(note.body))
        if base not in bases:
            bases.append(base)
    return bases


def stale_bases(rt: Any, trade_no: str) -> list[Base]:
    """WeChat: the real pending order's own notification, correctly signed, with a
    Wechatpay-Timestamp 10 minutes or more old or ahead (a replay, or a clock far off)."""
    sim = rt.channels.simulators[Channel.WECHAT]
    trade = paid_trade(rt, Channel.WECHAT, trade_no)
    now = int(time.time())
    out = []
    # far enough out that the run's own minutes cannot bring one back into the window
    for skew in (-900, -600, 900, 3600, -86400 * 30):
        note = sim.build_notification(trade, PayOptions(), timestamp=now + skew)
        out.append((dict(note.headers), bytes(note.body)))
    return out


# ------------------------------------------------------------------- what is signed
# Alipay's rule for the charset it signed in: the charset field, else the Content-Type's.
_ALIPAY_CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gbk",
                    "gb18030": "gb18030"}
_CHARSET_FIELD = re.compile(rb"(?:^|&)charset=([A-Za-z0-9_.-]{1,20})(?:&|$)")
_CHARSET_PARAM = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9_.-]{1,20})", re.IGNORECASE)


def _alipay_charset(headers: Mapping[str, str], body: bytes) -> str | None:
    found = _CHARSET_FIELD.findall(body)
    if len(found) > 1:
        return None
    if found:
        name = found[0].decode("ascii")
    else:
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        match = _CHARSET_PARAM.search(ctype)
        name = match.group(1) if match else "utf-8"
    return _ALIPAY_CHARSETS.get(name.lower())


def signed_content(channel: Channel, headers: Mapping[str, str],
                   body: bytes) -> Hashable | None:
    """What the channel's signature covers, decoded as the channel decodes it, with the
    signature itself decoded: equal for two inputs that are the same notification to the
    channel's verifier; None for what cannot be decoded (so no genuine base's).

    WeChat signs the raw body bytes with the Wechatpay-Timestamp and -Nonce (the Serial
    names the key, a missing Signature-Type is RSA; the Content-Type is not covered).
    Alipay and ChinaUMS sign decoded form fields, empty ones left out (Alipay in the
    charset its charset field or else the Content-Type names, ChinaUMS in UTF-8); the
    ``sign`` is base64 (Alipay) or hex in either case (ChinaUMS). A field given twice is no
    genuine notification's (both refuse it)."""
    if channel is Channel.WECHAT:
        h = {k.lower(): v for k, v in headers.items()}
        try:
            signature = base64.b64decode(h.get("wechatpay-signature", ""), validate=True)
        except (binascii.Error, ValueError):
            return None
        return (h.get("wechatpay-serial"), h.get("wechatpay-timestamp"),
                h.get("wechatpay-nonce"), h.get("wechatpay-signature-type", SIGNATURE_TYPE),
                signature, body)
    charset = _alipay_charset(headers, body) if channel is Channel.ALIPAY else "utf-8"
    if charset is None:
        return None
    try:
        pairs = parse_qsl(body.decode(charset), keep_blank_values=True, strict_parsing=True,
                          encoding=charset, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            return None
        fields[key] = value
    sign: Hashable = fields.pop("sign", "")
    if channel is Channel.ALIPAY:
        try:
            sign = base64.b64decode(str(sign), validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        sign = str(sign).upper()
    return tuple(sorted((k, v) for k, v in fields.items() if v != "")), sign


# --------------------------------------------------------------------------- mutations
def _is_json(b: bytes) -> bool:
    return b.startswith(b"{")   # WeChat's; the others' are forms


def _form_pairs(b: bytes) -> list[tuple[str, str]]:
    return parse_qsl(b.decode("utf-8"), keep_blank_values=True)   # a base: ASCII, UTF-8 escapes


def _flip_char(r: random.Random, value: str) -> str:
    if not value:
        return "0"
    i = r.randrange(len(value))
    return value[:i] + chr(r.choice([ord(value[i]) ^ 1, 48, 0x7f, 0x4e2d])) + value[i + 1:]


def _bitflip(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    data = bytearray(b)
    for _ in range(r.randint(1, 3)):
        i = r.randrange(len(data))
        data[i] ^= 1 << r.randrange(8)
    return h, bytes(data)


def _header_flip(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    """The signature changed: a Wechatpay-* header's text changed, or the header left out
    (WeChat); the form's ``sign`` field changed, emptied or left out (Alipay, ChinaUMS)."""
    names = [k for k in h if k.lower().startswith("wechatpay-")]
    if names:
        name = r.choice(names)
        h = dict(h)
        if r.random() < 0.15:
            del h[name]
            return h, b
        # a header is latin-1
        h[name] = _flip_char(r, h[name]).encode("utf-8", "replace").decode("latin-1")
        return h, b
    pairs = _form_pairs(b)
    how = r.randrange(8)
    if how == 0:
        return h, urlencode([(k, v) for k, v in pairs if k != "sign"]).encode()
    out = []
    for k, v in pairs:
        if k == "sign":
            v = "" if how == 1 else _flip_char(r, v)
        out.append((k, v))
    return h, urlencode(out).encode()


def _truncate(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    return h, b[:r.randrange(len(b))]


def _content_type(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    """Another Content-Type, and the body as it claims (JSON, XML, multipart, another
    charset) or else changed too: a Content-Type alone is not signed (WeChat, ChinaUMS)."""
    h = {k: v for k, v in h.items() if k.lower() != "content-type"}
    wechat = _is_json(b)
    items: list[tuple[str, Any]] = (list(json.loads(b).items()) if wechat else _form_pairs(b))
    how = r.randrange(7)
    ctype: str
    if how == 0:    # JSON (WeChat's re-serialized, as a proxy might)
        ctype = "application/json"
        body = json.dumps(dict(items), ensure_ascii=False, indent=r.choice([None, 1])).encode()
        if body == b:
            body = json.dumps(dict(items)).encode()
    elif how == 1:  # XML, as WeChat Pay v2 and older gateways
        ctype = r.choice(["application/xml", "text/xml", "text/plain"])
        body = ("<xml>" + "".join(
            f"<{k}><![CDATA[{v if isinstance(v, str) else json.dumps(v)}]]></{k}>"
            for k, v in items) + "</xml>").encode()
    elif how == 2:  # multipart
        ctype = "multipart/form-data; boundary=fuzz"
        parts = [("body", b.decode())] if wechat else items
        body = ("".join(f'--fuzz\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                        for k, v in parts) + "--fuzz--\r\n").encode()
    elif how == 3:  # another charset, said and used
        cs = r.choice(["gbk", "gb18030", "utf-16", "big5"])
        ctype = ("application/json" if wechat else FORM) + f"; charset={cs}"
        if wechat:
            body = b.decode().encode(cs, "replace")
        else:
            body = urlencode([(k, cs if k == "charset" else v) for k, v in items],
                             encoding=cs, errors="replace").encode()
    else:           # a wrong one, and the body broken too
        ctype = r.choice(["text/plain", "application/json", FORM + "; charset=gbk",
                          FORM + "; charset=ebcdic", "multipart/form-data; boundary=x",
                          "application/xml", "", "application/json; charset=utf-16"])
        h, body = r.choice([_bitflip, _truncate, _nul])(r, h, b)
    if ctype:
        h["Content-Type"] = ctype
    return h, body


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
    if how == 4:                                            # a percent escape not UTF-8
        if b"=" in b:
            return h, b.replace(b"=", b"=%FF", 1)
        i = r.randrange(len(b) + 1)
        return h, b[:i] + b"%FF" + b[i:]
    return h, text.encode("utf-32")


def _duplicate(r: random.Random, h: dict[str, str], b: bytes) -> Base:
    if _is_json(b):
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
    """WeChat: the headers kept, the timestamp moved (the signature covers it: it no longer
    matches) or not Unix seconds. Forms: the notification resent with its notify_time moved
    back a century (Alipay) or another notifyId (ChinaUMS): re-signing needs the channel's
    key, so the signature no longer matches."""
    h = dict(h)
    ts = next((k for k in h if k.lower() == "wechatpay-timestamp"), None)
    if ts is not None:
        h[ts] = r.choice([str(int(time.time()) - r.randint(300, 10**6)), "0", "-1",
                          str(int(h[ts]) + r.choice([-1, 1, 60, -299])),
                          "99999999999", "1e9", " 1700000000", "١٧٠٠٠٠٠٠٠٠"[:10].encode(
                              "utf-8").decode("latin-1")])
        return h, b
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


@dataclass
class Built:
    inputs: list[Fuzzed]
    left_out: Counter[str]   # by kind: mutations whose signed content is a genuine base's


def build(channel: Channel, bases: list[Base], stale: list[Base], count: int, seed: int,
          huge: int = 10) -> Built:
    """``count`` inputs: the stale genuine ones as they are, ``huge`` over the 1 MB body
    limit (one shared body), and mutations of the genuine and stale ones — none of them
    the same signed content as a genuine base (those are left out, counted by kind, and
    drawn again)."""
    r = random.Random(seed)
    out = [Fuzzed("stale_genuine", h, b) for h, b in stale]
    big = b"a=" + b"A" * (ONE_MB + 10)
    out += [Fuzzed("huge", dict(bases[0][0]), big) for _ in range(huge)]
    genuine = {signed_content(channel, h, b) for h, b in bases}
    assert None not in genuine, "a genuine base that does not decode"
    left_out: Counter[str] = Counter()
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    pool = bases + stale
    while len(out) < count:
        kind = r.choices(kinds, weights)[0]
        h, b = r.choice(pool)
        mh, mb = KINDS[kind](r, dict(h), b)
        # (over the service's 64 KB a body is refused for its size, whatever it says)
        if len(mb) <= MAX_NOTIFICATION_BYTES and signed_content(channel, mh, mb) in genuine:
            left_out[kind] += 1
            continue
        out.append(Fuzzed(kind, mh, mb))
    return Built(out, left_out)
