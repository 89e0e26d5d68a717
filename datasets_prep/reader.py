"""Streams the JSON values out of a raw dataset file, one record per row, with its line number.

Two layouts are read: JSON Lines (one object per line; blank lines are skipped) and one JSON array
of objects (what Alpaca and LLaMA-Factory ship as `data.json`). Both are read in binary, in
bounded pieces, so memory depends on the longest row, never on the file size. A leading UTF-8 BOM
is accepted. A row that cannot be read becomes a record carrying a `RowError`, so that validation
can report every bad row instead of stopping at the first.

The sha256 of the raw bytes is computed on the way, so the file is read once.

A JSON Lines line longer than `FT_MAX_LINE_BYTES` (default 8 MiB) fails the read with `FILE:LINE`:
lines are read at most that many bytes at a time, so an oversized one is never held whole (a 200 MB
line once cost 1.66 GB of memory).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from catalog.errors import InvalidInput

BOM = codecs.BOM_UTF8
_OTHER_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}
_CHUNK = 1 << 20
MAX_RECORD_BYTES = 256 << 20
"""A record of a JSON array file longer than this is refused (it is almost surely a broken file)."""

MAX_LINE_BYTES = 8 << 20
"""Default bound of one JSON Lines line; `FT_MAX_LINE_BYTES` overrides it."""

_WS = " \t\r\n"


def max_line_bytes(environ: dict[str, str] | None = None) -> int:
    """The bound of one JSON Lines line: `FT_MAX_LINE_BYTES`, else MAX_LINE_BYTES."""
    value = (os.environ if environ is None else environ).get("FT_MAX_LINE_BYTES") or str(MAX_LINE_BYTES)
    if not value.isdigit() or int(value) < 1:
        raise InvalidInput(f"FT_MAX_LINE_BYTES must be a positive number of bytes, got {value!r}")
    return int(value)


class RowError(Exception):
    """One bad row: a validation `code` (see `datasets_prep.validate.CODES`) and a message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Record:
    line: int
    """1-based line where the row starts."""
    value: Any = None
    """The parsed JSON value (any type; formats check that it is an object)."""
    error: RowError | None = None
    """Set when the row could not be read at all (then `value` is None)."""


class RawReader:
    """One pass over a raw file. Iterate `records()` once; `sha256` is final after that."""

    def __init__(self, path: Path | str, max_line: int | None = None):
        self.path = Path(path)
        self.display = str(path)
        self.max_line = max_line_bytes() if max_line is None else max_line
        self._hash = hashlib.sha256()
        self.is_array = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def records(self) -> Iterator[Record]:
        with open(self.path, "rb") as f:
            head = f.read(4)
            for bom, name in _OTHER_BOMS.items():
                if head.startswith(bom):
                    raise InvalidInput(f"{self.display} is {name}-encoded; re-save it as UTF-8")
            self.is_array = _first_significant_byte(f) == b"["
            f.seek(0)
            if self.is_array:
                yield from _ArrayScanner(f, self._hash).records()
            else:
                yield from self._line_records(f)
            while chunk := f.read(_CHUNK):  # the rest of an array that stopped at a broken row
                self._hash.update(chunk)

    def _line_records(self, f: BinaryIO) -> Iterator[Record]:
        number = 0
        while raw := f.readline(self.max_line + 1):
            number += 1
            self._hash.update(raw)
            if len(raw) > self.max_line and not raw.endswith(b"\n"):
                raise InvalidInput(
                    f"{self.display}:{number}: line is longer than {self.max_line:,} bytes "
                    "(FT_MAX_LINE_BYTES): is this really JSON Lines?"
                )
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Record(number, error=_utf8_error(exc, column=True))
                continue
            try:
                yield Record(number, json.loads(text))
            except json.JSONDecodeError as exc:
                yield Record(number, error=RowError("invalid-json", f"{exc.msg} at column {exc.colno}"))
            except RecursionError:
                yield Record(number, error=RowError("invalid-json", "nested too deeply"))


class _Stop(Exception):
    """Ends an array scan with one last record (a broken array cannot be resumed)."""

    def __init__(self, record: Record):
        self.record = record


class _ArrayScanner:
    """Decodes `[ {...}, {...} ]` element by element from a text window that holds the current
    element and what follows it; the window grows only while one element is longer than it."""

    def __init__(self, f: BinaryIO, digest: Any):
        self.f = f
        self.digest = digest
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.buf = ""
        self.pos = 0
        self.line = 1  # line of buf[pos]
        self.eof = False
        self.started = False
        self.broken: Record | None = None  # the invalid-utf8 record that ends the scan

    def records(self) -> Iterator[Record]:
        try:
            yield from self._elements()
        except _Stop as stop:
            yield stop.record

    def _elements(self) -> Iterator[Record]:
        parser = json.JSONDecoder()
        self._skip_ws()
        self._expect("[", "expected '[' to open the array")
        self._skip_ws()
        if self._peek() == "]":
            self.pos += 1
            self._finish()
            return
        while True:
            self._skip_ws()
            start_line, want = self.line, _CHUNK
            while True:
                try:
                    value, end = parser.raw_decode(self.buf, self.pos)
                except json.JSONDecodeError as exc:
                    if self.eof or len(self.buf) - self.pos > MAX_RECORD_BYTES:
                        at = start_line + self.buf.count("\n", self.pos, exc.pos)
                        raise _Stop(Record(at, error=RowError("invalid-json", exc.msg))) from exc
                except RecursionError as exc:
                    raise _Stop(
                        Record(start_line, error=RowError("invalid-json", "nested too deeply"))
                    ) from exc
                else:
                    if end < len(self.buf) or self.eof or self.broken:  # a number may go on
                        break
                self._more(want)
                want = min(want * 2, MAX_RECORD_BYTES)
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            yield Record(start_line, value)
            self._skip_ws()
            if self._peek() == "]":
                self.pos += 1
                self._finish()
                return
            self._expect(",", "expected ',' or ']' after a row")

    def _finish(self) -> None:
        self._skip_ws()
        if self.pos < len(self.buf):
            raise _Stop(Record(self.line, error=RowError("invalid-json", "extra data after the array")))

    def _peek(self) -> str:
        return self.buf[self.pos : self.pos + 1]

    def _expect(self, char: str, message: str) -> None:
        if self._peek() != char:
            what = "the end of the file" if not self._peek() else repr(self._peek())
            raise _Stop(Record(self.line, error=RowError("invalid-json", f"{message}, found {what}")))
        self.pos += 1

    def _skip_ws(self) -> None:
        while True:
            end = self.pos
            while end < len(self.buf) and self.buf[end] in _WS:
                end += 1
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            if self.pos < len(self.buf) or self.eof:
                return
            self._more(_CHUNK)

    def _more(self, size: int) -> None:
        """Append up to `size` bytes of the file to the window (dropping what was consumed).

        Bytes that are not UTF-8 end the scan, but only once the rows before them are read.
        """
        if self.broken is not None:
            raise _Stop(self.broken)
        chunk = self.f.read(size)
        self.digest.update(chunk)
        try:
            text = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            text = exc.object[: exc.start].decode("utf-8")
            at = self.line + self.buf.count("\n", self.pos) + text.count("\n")
            self.broken = Record(at, error=_utf8_error(exc, column=False))
        if not self.started and text:
            self.started = True
            text = text.removeprefix("\ufeff")
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        self.eof = not chunk


def _first_significant_byte(f: BinaryIO) -> bytes:
    """The first byte that is neither a UTF-8 BOM nor blank; b"" for a blank file."""
    f.seek(0)
    if f.read(len(BOM)) != BOM:
        f.seek(0)
    while chunk := f.read(_CHUNK):
        stripped = chunk.lstrip()
        if stripped:
            return stripped[:1]
    return b""


def _utf8_error(exc: UnicodeDecodeError, column: bool) -> RowError:
    bad = exc.object[exc.start : exc.start + 1]
    where = f" at column {exc.start + 1}" if column else ""
    return RowError("invalid-utf8", f"not valid UTF-8 (byte 0x{bad.hex()}{where}); re-save the file as UTF-8")
