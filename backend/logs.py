"""Logging that never prints a full ID number or phone number, nor a secret in a URL."""

from __future__ import annotations

import logging
import re
from types import TracebackType

# 18-character citizen ID numbers and 11-digit mainland mobile numbers, not inside longer
# digit runs (order numbers, timestamps).
_ID = re.compile(r"(?<![0-9A-Za-z])(\d{6})\d{8}(\d{3}[\dXx])(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")
# Query parameters that carry secrets (WeChat's jscode2session takes the AppSecret in its URL).
_SECRET_PARAM = re.compile(r"(?i)\b(secret|js_code|session_key|access_token)=[^&\s\"']+")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | \
    tuple[None, None, None]


# What each pattern above needs to match at all: 11 digits in a row (an ID number has 17, a
# phone 11) or an "=". A line with neither (most lines: every access line of a path without
# a query string) is left as it is after one scan instead of three substitutions.
_DIGITS_11 = re.compile(r"\d{11}")


def redact(text: str) -> str:
    if "=" not in text and _DIGITS_11.search(text) is None:
        return text
    text = _ID.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", text)
    return _PHONE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)


class RedactingFormatter(logging.Formatter):
    """Masks the whole rendered record: the message and its arguments, and also exception
    text and stack, where a database error's SQL parameters carry full ID numbers."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatException(self, ei: _ExcInfo) -> str:  # noqa: N802  (logging's name)
        # The record caches this text (record.exc_text) for any other handler: cache it masked.
        return redact(super().formatException(ei))


class RedactingFilter(logging.Filter):
    """Masks a record's message where it is logged, before any handler (pytest's, a
    library's) sees it; the formatter above still masks what the message does not hold."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_library_urls() -> None:
    """httpx logs every URL it fetches (INFO): redact at the logger, before any handler."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())


def configure_logging(level: str = "INFO") -> None:
    redact_library_urls()
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own loggers (errors, access lines with their URLs) go through the same handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
        lg.setLevel(logging.NOTSET)   # the root's level, whatever uvicorn set before
