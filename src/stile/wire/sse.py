"""Server-Sent Events framing: encode events, and an incremental decoder (bytes in, events out)."""

from __future__ import annotations

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


class Decoder:
    """Feed bytes with `feed`; it returns the events completed so far."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._skip_lf = False  # the last chunk ended on CR: an LF starting the next one belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        self._buf += chunk
        events: list[Event] = []
        while True:
            idx = self._find_eol()
            if idx is None:
                break
            end, skip = idx
            line = self._buf[:end].decode("utf-8", errors="replace")
            self._buf = self._buf[end + skip :]
            ev = self._line(line)
            if ev is not None:
                events.append(ev)
        return events

    def _find_eol(self) -> tuple[int, int] | None:
        buf = self._buf
        n = buf.find(b"\n")
        r = buf.find(b"\r")
        if n < 0 and r < 0:
            return None
        if r >= 0 and (n < 0 or r < n):
            if r + 1 < len(buf) and buf[r + 1 : r + 2] == b"\n":
                return r, 2
            if r + 1 == len(buf):
                self._skip_lf = True  # a lone CR ends the line now; \r\n may be split across chunks
            return r, 1
        return n, 1

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data and self._id is None:
                self._event = ""
                return None
            ev = Event(data="\n".join(self._data), event=self._event or "message", id=self._id,
                       retry=self._retry)
            self._data, self._event, self._id, self._retry = [], "", None, None
            return ev
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None
