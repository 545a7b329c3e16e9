"""QR code images (二维码), PNG and SVG, cached by content.

Rendering takes milliseconds; the agent's screen and the mini-program fetch the same image
again and again, so images are cached in-process and in Redis (shared between workers).
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache

import qrcode
import qrcode.image.svg
import redis
from PIL import Image

from backend.cache import RedisOutage

CACHE_TTL_S = 24 * 3600
MAX_CONTENT = 1024


BOX = 8        # pixels per module: one byte of a 1-bit image row


def _code(content: str, fmt: str) -> qrcode.QRCode:  # type: ignore[type-arg]
    # A fixed mask pattern: choosing the "best" of eight costs most of the render time, and
    # every reader decodes any of them (the mask is in the code's format information).
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=BOX,
                       border=4, mask_pattern=2,
                       image_factory=qrcode.image.svg.SvgPathImage if fmt == "svg" else None)
    qr.add_data(content)
    qr.make(fit=True)
    return qr


def _png(matrix: list[list[bool]]) -> bytes:
    """The modules (border included) as a black-on-white 1-bit PNG, ``BOX`` pixels each:
    the image qrcode's PIL factory draws rectangle by rectangle, made row by row instead
    (a module is one byte of the packed row; a row of modules is ``BOX`` pixel rows)."""
    n = len(matrix)
    raw = b"".join(bytes(0x00 if dark else 0xFF for dark in row) * BOX for row in matrix)
    buf = io.BytesIO()
    Image.frombytes("1", (n * BOX, n * BOX), raw).save(buf, format="PNG")
    return buf.getvalue()


@lru_cache(maxsize=2048)
def _render(content: str, fmt: str) -> bytes:
    qr = _code(content, fmt)
    if fmt == "png":
        return _png(qr.get_matrix())
    buf = io.BytesIO()
    qr.make_image().save(buf)
    return buf.getvalue()


def render(content: str, fmt: str,
           cache: tuple[redis.Redis, RedisOutage] | None = None) -> bytes:
    """The QR image, from ``cache`` (Redis and the process's outage state) when it has it;
    while Redis is down the cache is skipped, and the outage logged once, not per image."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"unknown QR format {fmt}")
    if len(content) > MAX_CONTENT:
        raise ValueError("QR content too long")
    key = f"qr:{fmt}:{hashlib.sha256(content.encode()).hexdigest()}"
    if cache is None:
        return _render(content, fmt)
    store, guard = cache
    hit = guard.run(lambda: store.get(key), lambda: None)
    if hit:
        return bytes(hit)  # type: ignore[arg-type]
    image = _render(content, fmt)
    if not guard.down:
        guard.run(lambda: store.set(key, image, ex=CACHE_TTL_S), lambda: None)
    return image
