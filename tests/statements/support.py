"""Helpers for the statement tests (pure: no database, no server)."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterable

import pytest

from payment_adapters.statements import ParsedStatement, StatementError, StatementLine


def consume(statement: ParsedStatement) -> list[StatementLine]:
    return list(statement)


def refused(make: object, *, line: int | None = None, says: str = "") -> StatementError:
    """Run ``make()`` and read what it returns to the end; it must raise StatementError
    (naming ``line``, saying ``says``)."""
    with pytest.raises(StatementError) as info:
        consume(make())  # type: ignore[operator]
    err = info.value
    if line is not None:
        assert err.line == line, f"{err} (expected line {line})"
    assert says in str(err), f"{says!r} not in {err}"
    return err


class GbkName(zipfile.ZipInfo):
    """Member names stored as raw GBK bytes without the UTF-8 flag (as Alipay's zips)."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # noqa: N802
        return self.filename.encode("gbk"), self.flag_bits & ~0x800


def gbk_zip(members: Iterable[tuple[str, bytes]], *, flag_bits: int = 0) -> bytes:
    """A zip of ``members``; ``flag_bits`` are set afterwards in every local and central
    header (zipfile itself writes no encrypted members)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = GbkName(name, date_time=(2026, 9, 2, 10, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    out = bytearray(buf.getvalue())
    if flag_bits:
        with zipfile.ZipFile(io.BytesIO(bytes(out))) as zf:
            infos = zf.infolist()
            central = zf.start_dir  # type: ignore[attr-defined]
        for info in infos:
            out[info.header_offset + 6] |= flag_bits
        at = central
        for _ in infos:
            assert out[at:at + 4] == b"PK\x01\x02"
            out[at + 8] |= flag_bits
            name_len, extra_len, comment_len = struct.unpack("<HHH", out[at + 28:at + 34])
            at += 46 + name_len + extra_len + comment_len
    return bytes(out)
