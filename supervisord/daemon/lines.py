"""Request lines of one intake connection: split at newlines, capped at 1 MiB, parsed in place."""

from __future__ import annotations

import json
import json.scanner
import time
from typing import Any, Final, cast

from supervisord.core.errors import EventError
from supervisord.core.events import validate_request
from supervisord.core.model import Event
from supervisord.daemon.replies import Reply, error

__all__ = ["MAX_LINE", "Batch", "LineReader", "overlong_lines"]

# SPEC §3: a request line is at most 1 MiB, its newline not counted.
MAX_LINE: Final = 1 << 20
TOO_LARGE: Final = f"request line longer than {MAX_LINE} bytes"
# The C scanner json.loads runs after its decoding and blank skipping: one value from an index.
_scan_once: Final = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))
_BLANKS: Final = " \t\r"  # JSON's blanks besides the newline that ends a line
_EMPTY: Final = "empty request line: expected one JSON object"


def overlong_lines(data: bytes) -> list[tuple[int, int]]:
    """(start, newline) of each line of ``data`` (which ends with a newline) longer than
    MAX_LINE. From each line start it looks back from MAX_LINE + 1 bytes on for a newline:
    short lines cost one memrchr hop per MiB, only a line over the cap a full scan."""
    spans = []
    pos, size = 0, len(data)
    while pos < size:
        nl = data.rfind(b"\n", pos, pos + MAX_LINE + 1)
        if nl < 0:  # no newline within the cap: the line at pos is over it
            nl = data.index(b"\n", pos)
            spans.append((pos, nl))
        pos = nl + 1
    return spans


class Batch:
    """The events of consecutive request lines of one read, submitted together."""

    __slots__ = ("conn", "events", "now", "now_text")

    def __init__(self, conn: LineReader) -> None:
        self.conn = conn
        self.events: list[Event] = []
        self.now = time.time()  # SPEC §3.1: `time` defaults to the time of intake
        self.now_text = repr(self.now)  # as json writes a finite float

    def flush(self) -> None:
        if self.events:
            self.conn._submit(self.events)
            self.events = []


class LineReader:
    """The reading half of a connection: bytes in, one request (or one error reply) per
    line out, through the hooks the connection implements (`_handle_request`, `_push`,
    `_submit`)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False  # inside a line over the cap: dropped up to its newline

    def _handle_request(self, doc: dict[str, Any], head: str | None, batch: Batch) -> bool:
        raise NotImplementedError

    def _push(self, reply: Reply) -> None:
        raise NotImplementedError

    def _submit(self, events: list[Event]) -> None:
        raise NotImplementedError

    def _read_lines(self) -> None:
        """Handle the complete lines buffered; a line over the cap gets `too_large` when its
        newline comes, and no more than the cap and a read of it is ever kept."""
        buf = self._buf
        if self._discarding:
            end = buf.find(b"\n")
            if end < 0:
                buf.clear()
                return
            del buf[: end + 1]
            self._discarding = False
            self._push(error("too_large", TOO_LARGE))
        complete = buf.rfind(b"\n") + 1
        if complete > MAX_LINE + 1:  # only then can a line in it be over the cap
            used = self._handle_capped(bytes(buf[:complete]))
        else:
            used = self._handle_lines(bytes(buf[:complete])) if complete else 0
        del buf[:used]
        if used == complete and len(buf) > MAX_LINE:
            self._discarding = True
            buf.clear()

    def _handle_capped(self, data: bytes) -> int:
        """`_handle_lines` for a read long enough to hold a line over the cap."""
        start = 0
        for begin, nl in overlong_lines(data):
            used = self._handle_lines(data[start:begin])
            if start + used < begin:
                return start + used  # congestion: the rest waits, this line with it
            self._push(error("too_large", TOO_LARGE))
            start = nl + 1
        return start + self._handle_lines(data[start:])

    def _handle_lines(self, data: bytes) -> int:
        """Answer or queue the lines of ``data`` (each ends with a newline); the bytes used,
        fewer than all when congestion stops intake at an event line.

        Decoded once and parsed in place (one scanner call per line, no copies): a line
        that is not simply an object alone on its line is left to `_handle_line`, which
        answers as json.loads would."""
        try:
            text = data.decode("utf-8", "surrogatepass")  # what json.loads picks for "{"
        except UnicodeDecodeError:
            return self._handle_raw(data)
        batch = Batch(self)
        scan, find, size = _scan_once, text.find, len(text)
        now, now_text = batch.now, batch.now_text
        pos = 0
        while pos < size:
            nl = find("\n", pos)
            doc: Any = None
            if text[pos] == "{":
                try:
                    doc, end = scan(text, pos)
                except (StopIteration, ValueError, RecursionError):
                    doc = None
                else:
                    if end > nl or (end != nl and text[end:nl].strip(_BLANKS)):
                        doc = None  # an object across lines, or extra data
            if doc is None:
                ok = self._handle_line(text[pos:nl].encode("utf-8", "surrogatepass"), batch)
            elif batch.events and type(doc) is dict and doc.get("op", "event") == "event":
                # The usual line, inline: an event joining a batch already let through
                # (not closing, not congested: neither changes within one read).
                try:
                    batch.events.append(validate_request(doc, text[pos : end - 1], now, now_text))
                except EventError as exc:
                    self._refuse(batch, error("invalid_event", str(exc), field=exc.field))
                ok = True
            else:
                ok = self._handle_doc(doc, text, pos, end, batch)
            if not ok:
                batch.flush()
                return len(text[:pos].encode("utf-8", "surrogatepass"))
            pos = nl + 1
        batch.flush()
        return len(data)

    def _handle_raw(self, data: bytes) -> int:
        """`_handle_lines` for data that is not UTF-8 throughout: line by line."""
        batch = Batch(self)
        start = 0
        while start < len(data):
            end = data.index(b"\n", start)
            if not self._handle_line(data[start:end], batch):
                break
            start = end + 1
        batch.flush()
        return start

    def _handle_line(self, line: bytes, batch: Batch) -> bool:
        """Answer or queue one request line; False when it must wait (congestion)."""
        if line[:1] != b"{" and not line.strip():
            return self._refuse(batch, error("bad_json", _EMPTY))
        try:
            doc = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            return self._refuse(batch, error("bad_json", f"request is not valid JSON: {exc}"))
        except RecursionError:
            return self._refuse(batch, error("bad_json", "request is nested too deeply"))
        if not isinstance(doc, dict):
            message = f"request must be a JSON object, got {type(doc).__name__}"
            return self._refuse(batch, error("bad_json", message))
        if line[:1] != b"{" or line[1:2] == b"\0":
            return self._handle_request(doc, None, batch)
        text = line.decode("utf-8", "surrogatepass")  # parsed: an object in UTF-8
        return self._handle_request(doc, text.rstrip()[:-1], batch)

    def _handle_doc(self, doc: Any, text: str, start: int, end: int, batch: Batch) -> bool:
        """A request parsed from ``text[start:end]``."""
        if type(doc) is not dict:
            message = f"request must be a JSON object, got {type(doc).__name__}"
            return self._refuse(batch, error("bad_json", message))
        return self._handle_request(doc, text[start : end - 1], batch)

    def _refuse(self, batch: Batch, reply: Reply) -> bool:
        batch.flush()  # its replies come first
        self._push(reply)
        return True
