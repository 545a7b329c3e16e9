"""Nothing a log line renders carries a full ID number or phone number."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.logs import configure_logging, redact

ID_NUMBER, ID_MASKED = "370406196903151231", "370406********1231"
PHONE, PHONE_MASKED = "13812345678", "138****5678"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """configure_logging's handlers, writing to a buffer; the previous set-up restored after."""
    saved = {name: (lg.handlers[:], lg.propagate, lg.level) for name, lg in
             ((n, logging.getLogger(n)) for n in ("", "uvicorn", "uvicorn.error",
                                                   "uvicorn.access"))}
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    configure_logging("INFO")
    yield out
    for name, (handlers, propagate, level) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.propagate, lg.level = handlers, propagate, level


def _fail(id_number: str, phone: str) -> None:
    raise ValueError(f"duplicate key: (id_number)=({id_number}), phone {phone}")


@pytest.mark.parametrize("logger", ["backend.somewhere", "uvicorn.error"])
def test_exception_text_and_stack_are_redacted(logged: io.StringIO, logger: str) -> None:
    log = logging.getLogger(logger)
    try:
        _fail(ID_NUMBER, PHONE)
    except ValueError:
        log.exception("import of %s failed", ID_NUMBER)
    # the stack shows this source line, the number written out in it
    log.warning("caller %s", "13812345678", stack_info=True)
    text = logged.getvalue()
    assert "ValueError: duplicate key" in text and "Stack (most recent call last)" in text
    assert ID_NUMBER not in text and PHONE not in text
    # ID: the message, the exception; phone: the exception, the message, the stack
    assert text.count(ID_MASKED) == 2 and text.count(PHONE_MASKED) == 3


def test_sqlalchemy_error_parameters_are_redacted(logged: io.StringIO) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE r (id_number TEXT UNIQUE, phone TEXT)"))
        conn.execute(text("INSERT INTO r VALUES (:i, :p)"), {"i": ID_NUMBER, "p": PHONE})
        try:
            conn.execute(text("INSERT INTO r VALUES (:i, :p)"), {"i": ID_NUMBER, "p": PHONE})
        except Exception:
            logging.getLogger("backend.imports").exception("insert failed")
    out = logged.getvalue()
    assert "IntegrityError" in out and ID_MASKED in out and PHONE_MASKED in out
    assert ID_NUMBER not in out and PHONE not in out


def test_uvicorn_access_lines_are_redacted(logged: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "10.0.0.1", "GET",
                                             f"/x?id={ID_NUMBER}&tel={PHONE}", "1.1", 200)
    out = logged.getvalue()
    assert f"/x?id={ID_MASKED}&tel={PHONE_MASKED}" in out and ID_NUMBER not in out


def test_each_server_process_sets_up_redacting_logging(logged: io.StringIO,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --workers N``: uvicorn's worker processes build the app with this factory."""
    from backend import app as app_module

    made = object()
    monkeypatch.setattr(app_module, "create_app", lambda: made)
    logging.getLogger().handlers[:] = []          # a fresh process has no handlers
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    assert app_module.create_logged_app() is made  # type: ignore[comparison-overlap]
    try:
        _fail(ID_NUMBER, PHONE)
    except ValueError:
        logging.getLogger("uvicorn.error").exception("request failed")
    text = out.getvalue()
    assert ID_MASKED in text and PHONE_MASKED in text and ID_NUMBER not in text


def _redact_in_full(text: str) -> str:
    # redact() without its quick check: the three substitutions on every text
    from backend import logs

    text = logs._ID.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    text = logs._SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", text)
    return logs._PHONE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([
    ID_NUMBER, ID_NUMBER[:-1] + "X", PHONE, "1381234567", "０１２３４５６７８９０１２",
    "secret=", "js_code=abc", "access_token", "=", "&", " ", "/", "x", "X", "7", "10.0.0.1",
    ":54321", '"POST /api/v1/residents/lookup HTTP/1.1" 200']), max_size=12).map("".join))
def test_redact_quick_check_masks_exactly_what_the_patterns_mask(text: str) -> None:
    """A text is passed over only when none of the patterns could match it: redact() gives
    what the three substitutions give, for every text."""
    assert redact(text) == _redact_in_full(text)


def test_an_access_line_with_nothing_to_mask_is_unchanged() -> None:
    line = '127.0.0.1:54321 - "POST /api/v1/residents/lookup HTTP/1.1" 200'
    assert redact(line) is line
    assert redact(f"/x?id={ID_NUMBER}") == f"/x?id={ID_MASKED}"
    assert redact(f"tel {PHONE}.") == f"tel {PHONE_MASKED}."


@pytest.mark.parametrize(("text", "masked"), [
    (f"ID{ID_NUMBER}", f"ID{ID_MASKED}"),                       # after a letter
    (f"%22{ID_NUMBER}%22", f"%22{ID_MASKED}%22"),               # URL-encoded quotes
    ("%2213912345678", "%22139****5678"),
    ("order 2020110200000000123456", "order 2020110200000000123456"),   # a longer run
])
def test_numbers_after_a_letter_or_a_percent_escape_are_masked(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_database_errors_carry_no_parameters(rt: Any) -> None:
    """A failed statement's error names the statement, never the values it was given."""
    from sqlalchemy import text as sql

    with pytest.raises(Exception) as caught, rt.engine.connect() as conn:
        conn.execute(sql("SELECT CAST(:v AS INTEGER) FROM no_such_table"), {"v": "张三丰"})
    assert "张三丰" not in str(caught.value)
    assert "parameters hidden" in str(caught.value)
