"""Server-Sent Events framing: encode events, and an incremental decoder (bytes in, events out)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


def encode(data: bytes, *, event: str | None = "message", id: str | None = None) -> bytes:
    parts: list[bytes] = []
    if event:
        parts.append(b"event: " + event.encode() + b"\n")
    if id is not None:
        parts.append(b"id: " + id.encode() + b"\n")
    for line in data.split(b"\n"):
        parts.append(b"data: " + line + b"\n")
    parts.append(b"\n")
    return b"".join(parts)


COMMENT_KEEPALIVE = b": keep-alive\n\n"


class EventTooLarge(ValueError):
    """One SSE line, or the data of one event, is longer than the decoder's `max_event` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"SSE event larger than {limit} bytes")
        self.limit = limit


_EOL = re.compile(rb"\r\n|\r|\n")


class Decoder:
    """Feed bytes with `feed`; it returns the events completed so far.

    With `max_event`, an incomplete line or an event's data beyond that many bytes raises `EventTooLarge`
    (the stream is then unusable: drop it), so a sender that never ends an event cannot grow memory.
    Each byte is scanned once, however the stream is cut into chunks.
    """

    def __init__(self, max_event: int | None = None) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes at the start of `_buf` known to hold no line end
        self._max = max_event
        self._data: list[str] = []
        self._size = 0  # data bytes of the event so far
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._skip_lf = False  # the last chunk ended on CR: an LF starting the next one belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf
        buf += chunk
        events: list[Event] = []
        pos = 0
        search = self._scanned
        while (m := _EOL.search(buf, search)) is not None:
            line = buf[pos : m.start()].decode("utf-8", errors="replace")
            pos = search = m.end()
            if pos == len(buf) and m.end() - m.start() == 1 and buf[m.start()] == 0x0D:
                self._skip_lf = True  # a lone CR ends the line now; \r\n may be split across chunks
            ev = self._line(line)
            if ev is not None:
                events.append(ev)
        if pos:
            del buf[:pos]
        self._scanned = len(buf)
        if self._max is not None and len(buf) > self._max:
            raise EventTooLarge(self._max)
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data and self._id is None:
                self._event = ""
                return None
            ev = Event(data="\n".join(self._data), event=self._event or "message", id=self._id,
                       retry=self._retry)
            self._data, self._event, self._id, self._retry, self._size = [], "", None, None, 0
            return ev
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._max is not None and self._size > self._max:
                raise EventTooLarge(self._max)
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None
