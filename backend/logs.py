"""Logging that never prints a full ID number or phone number, nor a secret in a URL.

Server processes log one JSON object per line (``LOG_FORMAT=json``, the default) carrying the
request id of the request it was logged for; ``LOG_FORMAT=text`` gives readable lines.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextvars import ContextVar
from types import TracebackType
from typing import Any

# The id of the request being handled (backend.ops.RequestLog), for every line logged for it.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# 18-character citizen ID numbers and 11-digit mainland mobile numbers, not inside longer
# digit runs (order numbers, timestamps); after a letter ("ID1101…") or a percent-escape
# ("%221101…": a quote, URL-encoded) too.
_START = r"(?:(?<!\d)|(?<=%[0-9A-Fa-f]{2}))"
_ID = re.compile(_START + r"(\d{6})\d{8}(\d{3}[\dXx])(?!\d)")
_PHONE = re.compile(_START + r"(1[3-9]\d)\d{4}(\d{4})(?!\d)")
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


# What every LogRecord has; anything else on a record was given as ``extra=`` and is logged
# as a field of its own.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message", "taskName"}


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time (UTC), level, logger, message, the process id (which of
    ``serve --workers N``), the request id, any
    ``extra`` fields, and the exception; every string masked as above."""

    _second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        # the same second's text is made once (an access line per request)
        second = int(created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname, "logger": record.name,
            "message": redact(record.getMessage()), "process": record.process}
        rid = request_id.get()
        if rid is not None:
            doc["request_id"] = rid
        fields = record.__dict__
        for key in sorted(fields.keys() - _RECORD_FIELDS):
            if not key.startswith("_"):
                value = fields[key]
                doc[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


class RedactingTextFormatter(RedactingFormatter):
    """The readable line, with the request id at its end when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id.get()
        return line if rid is None else f"{line} [request {rid}]"


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


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    redact_library_urls()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingTextFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own loggers (errors, access lines with their URLs) go through the same handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
        lg.setLevel(logging.NOTSET)   # the root's level, whatever uvicorn set before
