"""A spool in front of a sink: when the sink fails, its events wait on disk and are replayed in order.

Spool file: a header line `{"stile_spool": "<token>"}`, then one unsealed event per JSON line, appended
and fsync'd before `write` returns. Replay progress lives beside it in `<spool>.done` ("<token> <byte
offset>", replaced atomically): a chunk is written to the sink first and only then marked done, so a crash
never loses an event (at worst the last chunk is replayed again, which the store sink skips by id). When
everything is replayed both files are removed; a long spool is compacted into a new file with a new
token, which makes a stale offset harmless. While anything is spooled, new events go to the spool too,
so they never overtake older ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

import orjson

from stile.observe.audit_sinks import Event, Sink, SinkError
from stile.tasks import spawn

log = logging.getLogger("stile.audit")
CHUNK = 256
COMPACT_BYTES = 4 << 20  # compact once this much replayed data is at the head of the spool (and is half of it)


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes, rest: BinaryIO | None = None) -> None:
    """Write `path` atomically (`data`, then the rest of `rest`): a temporary file, fsync'd, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        if rest is not None:
            shutil.copyfileobj(rest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SpoolFile:
    """The spool on disk. Blocking I/O (run in a thread, one call at a time); state changes with the files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done_path = path.with_name(path.name + ".done")
        self.token = ""
        self.offset = 0  # byte offset of the first event not yet replayed
        self.pending = 0  # events (lines) not yet replayed

    def load(self) -> None:
        """After a (re)start: drop a torn last line, find where replay resumes, count what is pending."""
        self.token, self.offset, self.pending = "", 0, 0
        if not self.path.exists():
            self.done_path.unlink(missing_ok=True)
            return
        with self.path.open("r+b") as f:
            header = f.readline()
            end, lines = len(header), 0
            for line in f:
                if not line.endswith(b"\n"):
                    break
                end, lines = end + len(line), lines + 1
            if not header.endswith(b"\n"):
                end = 0
            if end < f.seek(0, os.SEEK_END):
                f.truncate(end)
                os.fsync(f.fileno())
        if end == 0:
            self.path.unlink()
            self.done_path.unlink(missing_ok=True)
            return
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
            self.token = str(orjson.loads(header)["stile_spool"])
        self.offset, self.pending = len(header), lines
        with contextlib.suppress(OSError, ValueError):
            token, _, at = self.done_path.read_text().partition(" ")
            if token == self.token and len(header) <= int(at) <= end:
                self.offset = int(at)
                with self.path.open("rb") as f:
                    f.seek(self.offset)
                    self.pending = sum(1 for _ in f)

    def append(self, data: bytes, count: int) -> None:
        """Append `count` events (JSON lines) and fsync; on failure the file is cut back to where it was."""
        self.path.parent.mkdir(parents=True, exist_ok=True)  # only a sink that failed ever needs the spool dir
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            header = b""
            if size == 0:  # a new spool: a new token, so a stale .done never matches it
                header = orjson.dumps({"stile_spool": secrets.token_hex(8)}) + b"\n"
            try:
                view = memoryview(header + data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                if header:
                    fsync_dir(self.path.parent)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        if header:
            self.token, self.offset = orjson.loads(header)["stile_spool"], len(header)
        self.pending += count

    def read(self, limit: int) -> tuple[list[Event], int, int]:
        """Up to `limit` events from the replay offset: (events, lines consumed, offset after them)."""
        events: list[Event] = []
        lines, end = 0, self.offset
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            f.seek(self.offset)
            while lines < limit and (line := f.readline()).endswith(b"\n"):
                lines, end = lines + 1, end + len(line)
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    event = None
                if isinstance(event, dict):
                    events.append(event)
                else:
                    log.error("audit spool %s: unreadable line at byte %d skipped", self.path, end - len(line))
        if not lines and self.pending:  # truncated or removed behind our back: do not spin on it
            log.error("audit spool %s: %d spooled events are missing", self.path, self.pending)
            lines = self.pending
        return events, lines, end

    def advance(self, end: int, lines: int) -> None:
        """Mark everything before byte `end` replayed (after the sink has it); remove or compact the spool."""
        self.offset, self.pending = end, self.pending - lines
        if self.pending <= 0:
            self.path.unlink(missing_ok=True)
            self.token, self.offset, self.pending = "", 0, 0
            self.done_path.unlink(missing_ok=True)
            return
        if end >= COMPACT_BYTES and end * 2 >= self.path.stat().st_size:  # a new file holds the rest: new token
            header = orjson.dumps({"stile_spool": secrets.token_hex(8)}) + b"\n"
            with self.path.open("rb") as src:
                src.seek(end)
                _replace(self.path, header, src)
            self.token, self.offset = orjson.loads(header)["stile_spool"], len(header)
        else:
            _replace(self.done_path, f"{self.token} {end}".encode())
        fsync_dir(self.path.parent)


class SpooledSink:
    """`inner` behind a spool: nothing is lost while it is down; `errors` counts failed writes to it."""

    def __init__(self, inner: Sink, spool_path: Path, retry_seconds: float = 1.0,
                 max_retry_seconds: float = 30.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.spool = SpoolFile(spool_path)
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.errors = 0
        self._ready = False  # inner started
        self._inner_lock = asyncio.Lock()  # one write to inner at a time
        self._file_lock = asyncio.Lock()  # one spool operation at a time
        self._empty = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Events spooled, waiting for the sink."""
        return self.spool.pending

    async def drained(self) -> None:
        """Wait until nothing is spooled."""
        await self._empty.wait()

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.spool.load)
        except OSError as exc:
            raise SinkError(f"cannot open the audit spool {self.spool.path}: {exc}") from exc
        if self.pending:
            log.warning("audit sink %s: %d spooled events to replay", self.name, self.pending)
        try:
            await self.inner.start()
            self._ready = True
        except (SinkError, OSError) as exc:
            self.errors += 1
            log.error("audit sink %s did not start (events are spooled until it does): %s", self.name, exc)
        self._settle()

    async def write(self, events: list[Event]) -> None:
        if not events:
            return
        if self._ready and not self.pending:
            async with self._inner_lock:
                if self._ready and not self.pending:  # still nothing older waiting
                    try:
                        await self.inner.write(events)
                        return
                    except SinkError as exc:
                        self.errors += 1
                        log.error("audit sink %s failed, spooling: %s", self.name, exc)
                await self._append(events)  # under the lock: no later batch can overtake this one
                return
        await self._append(events)

    async def _append(self, events: list[Event]) -> None:
        data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        async with self._file_lock:
            try:
                await asyncio.to_thread(self.spool.append, data, len(events))
            except OSError as exc:
                raise SinkError(f"cannot append to the audit spool {self.spool.path}: {exc}") from exc
        self._settle()

    def _settle(self) -> None:
        """Track emptiness; run the retry loop while the sink is not started or anything is spooled."""
        if self.pending:
            self._empty.clear()
        else:
            self._empty.set()
        if (self.pending or not self._ready) and not self._stop.is_set() and (self._task is None or self._task.done()):
            self._task = spawn(self._retry_loop(), name=f"audit-spool:{self.name}")

    async def _retry_loop(self) -> None:
        delay = self.retry_seconds
        while (self.pending or not self._ready) and not self._stop.is_set():
            if await self._step():
                delay = self.retry_seconds
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, self.max_retry_seconds)

    async def _step(self) -> bool:
        """Start the sink, or replay one chunk of the spool into it; False (and counted) if that failed."""
        try:
            if not self._ready:
                await self.inner.start()
                self._ready = True
                return True
            async with self._inner_lock:
                async with self._file_lock:
                    events, lines, end = await asyncio.to_thread(self.spool.read, CHUNK)
                if events:
                    await self.inner.write(events)
                async with self._file_lock:
                    try:
                        await asyncio.to_thread(self.spool.advance, end, lines)
                    except OSError as exc:  # replayed, but the mark may not be on disk: a crash would repeat it
                        log.error("audit spool %s: cannot record progress: %s", self.spool.path, exc)
        except (SinkError, OSError) as exc:
            self.errors += 1
            log.warning("audit sink %s: replay failed (%d events spooled): %s", self.name, self.pending, exc)
            return False
        finally:
            self._settle()
        return True

    async def aclose(self) -> None:
        """Stop retrying (after the chunk in flight), try once more to drain, close the sink; the rest stays spooled."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # it stops after the chunk in flight (never cancelled mid-chunk)
        while (self.pending or not self._ready) and await self._step():
            pass
        if self.pending:
            log.error("audit sink %s: %d events stay spooled in %s", self.name, self.pending, self.spool.path)
        await self.inner.aclose()
