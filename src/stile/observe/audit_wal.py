"""The audit write-ahead log: an acknowledged request's audit record is in the kernel before its reply.

`AuditLog.record` stages one JSON line per request (the small values the event is built from); at the end
of the loop tick, before any reply of that tick is written (`stile.barrier`), one `os.write` on an
`O_APPEND` descriptor appends every line staged in it to the live segment, so a process crash (SIGKILL,
OOM kill, segfault) after the reply cannot lose it: the data is in the page cache. The batched writer
hands events to the sinks as before and then checkpoints: records every sink (or its spool) has
accepted are dropped, by truncating the live segment when all of it is delivered, and by deleting
older segments (the live one is rotated past `SEGMENT_BYTES`).

Segments are `<dir>/<start ns>-<boot>-<n>.wal`, each held under an exclusive `flock` by the process
writing it. A segment whose lock is free belongs to a process that died: the next gateway to start on
this directory takes it over (`open`) and replays its records into the sinks before serving, oldest
first (the store and the JSONL sink skip ids they already have). Several processes may share the
directory; each replays only what dead ones left.

With `audit.durability: fsync` a `GroupCommit` task fsyncs the segments in a thread; replies wait for
the fsync that covers their record, and one fsync serves every record appended before it.

Size: what is not yet delivered is at most the audit queue plus the batch in flight (a sink that is
down has its events spooled, which counts as delivered). `MAX_BYTES` is a hard cap beyond which
records are queued without the WAL (counted in `stile_audit_wal_errors_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from stile.barrier import BARRIER
from stile.observe.spool import fsync_dir
from stile.tasks import spawn

log = logging.getLogger("stile.audit")
SEGMENT_BYTES = 8 << 20  # rotate the live segment past this size (when it is not all delivered)
MAX_BYTES = 256 << 20  # undelivered WAL bytes beyond which records are queued without it
_sync = getattr(os, "fdatasync", os.fsync)


class WalError(Exception):
    """The WAL directory cannot be used (message fit to show an operator)."""


def _locked(fd: int) -> bool:
    """Take the exclusive lock on `fd` without waiting; False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _locked_soon(fd: int, attempts: int = 3) -> bool:
    """`_locked`, tried a few times: `stile audit verify` holds a dead segment's lock for an instant."""
    for attempt in range(attempts):
        if _locked(fd):
            return True
        if attempt + 1 < attempts:
            time.sleep(0.01)  # at start, in a thread; only when another process holds a lock in this directory
    return False


def read_records(path: Path) -> Iterator[bytes]:
    """The complete lines of a segment (a torn last line, from a failed write, is left out)."""
    with path.open("rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                yield line


def orphans(directory: Path) -> list[Path]:
    """Segments no live process holds (their writer died), oldest first. Takes each lock for an instant."""
    out = []
    for path in sorted(directory.glob("*.wal")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if _locked(fd):
                out.append(path)
        finally:
            os.close(fd)  # releases the lock
    return out


class Segment:
    __slots__ = ("end", "fd", "named", "path", "size")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.end = 0  # position (records appended so far, over all segments) after its last record
        self.named = False  # its directory entry is fsync'd (fsync mode)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)


class Wal:
    """This process's segments. `append` runs on the request path; the rest on the writer or at start."""

    def __init__(self, directory: Path, boot: str, adopt: tuple[Path, ...] = ()) -> None:
        self.directory = directory
        self.adopt = adopt  # other directories whose dead segments this process replays too (audit_writers)
        self.boot = boot
        self.start_ns = time.time_ns()
        self.position = 0  # records appended
        self.synced = 0  # records covered by a completed fsync (fsync mode)
        self.bytes = 0  # undelivered bytes over all segments
        self.live: Segment | None = None
        self.old: deque[Segment] = deque()  # rotated segments, oldest first
        self.recovered: list[tuple[Path, int]] = []  # dead processes' segments, locked until replayed
        self._n = 0
        self._staged: list[bytes] = []  # records of this loop tick, not yet written (`stage`)
        self._staged_bytes = 0
        self.on_error: Callable[[OSError], None] | None = None  # how a failed deferred write is reported

    def preflight(self) -> None:
        """Fail with a clear `WalError` unless the directory exists (or can be made) and is writable."""
        probe = self.directory / f".probe-{self.boot}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise WalError(f"the audit write-ahead log directory {self.directory} is not writable "
                           f"({exc.strerror or exc}): fix its permissions or set audit.spool_dir") from exc

    def open(self) -> list[bytes]:
        """Take over dead processes' segments (kept locked) and open the live one; their records, oldest first."""
        self.preflight()
        records: list[bytes] = []
        for path in sorted((p for d in (self.directory, *self.adopt) for p in d.glob("*.wal")), key=lambda p: p.name):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # another starting process replayed and removed it
            if not _locked_soon(fd):
                os.close(fd)  # a live process's segment
                continue
            self.recovered.append((path, fd))
            records.extend(read_records(path))
        try:
            self.live = self._segment()
        except OSError as exc:
            raise WalError(f"cannot create an audit write-ahead log segment in {self.directory}: {exc}") from exc
        return records

    def discard_recovered(self) -> None:
        """The recovered records are in every sink (or its spool): remove their segments."""
        for path, fd in self.recovered:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        self.recovered.clear()

    def _segment(self) -> Segment:
        self._n += 1
        path = self.directory / f"{self.start_ns:020d}-{self.boot}-{self._n:06d}.wal"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        if not _locked(fd):  # nobody else can have a file of this name, but never write unlocked
            os.close(fd)
            raise OSError(f"{path} is locked by another process")
        segment = Segment(path, fd)
        segment.end = self.position
        return segment

    # --- the request path ---------------------------------------------------------------------
    def stage(self, line: bytes) -> int:
        """Stage one record for this tick's single write (made before any reply of the tick leaves, see
        `stile.barrier`); its position. OSError at once if the log cannot take it. Without a running loop
        it is appended at once."""
        live = self.live
        if live is None or self.bytes + self._staged_bytes + len(line) > MAX_BYTES:
            raise OSError(f"the audit write-ahead log holds {self.bytes} undelivered bytes (cap {MAX_BYTES})")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.append(line)
        if not self._staged:
            BARRIER.before_replies(self.flush)
        self._staged.append(line)
        self._staged_bytes += len(line)
        self.position += 1
        return self.position

    def flush(self) -> None:
        """Write the staged records (one `os.write`); a failure goes to `on_error` (they stay queued for the sinks)."""
        staged = self._staged
        if not staged:
            return
        self._staged, self._staged_bytes = [], 0
        try:
            self._write(staged[0] if len(staged) == 1 else b"".join(staged), self.position)
        except OSError as exc:
            if self.on_error is None:
                raise
            self.on_error(exc)

    def append(self, line: bytes) -> int:
        """Append one record now (after anything staged); its position. OSError if it is not (all) in the file."""
        self.flush()
        live = self.live
        if live is None or self.bytes + len(line) > MAX_BYTES:
            raise OSError(f"the audit write-ahead log holds {self.bytes} undelivered bytes (cap {MAX_BYTES})")
        self._write(line, self.position + 1)
        self.position += 1
        return self.position

    def _write(self, data: bytes, end: int) -> None:
        """One `os.write` of whole records ending at position `end`."""
        live = self.live
        if live is None:
            raise OSError("the audit write-ahead log is closed")
        written = os.write(live.fd, data)
        live.size += written
        self.bytes += written
        if written != len(data):  # disk full mid-record: end the torn line so the next one reads cleanly
            with contextlib.suppress(OSError):
                live.size += os.write(live.fd, b"\n")
            raise OSError(f"short write to {live.path} ({written} of {len(data)} bytes)")
        live.end = end

    # --- the writer -----------------------------------------------------------------------------
    def checkpoint(self, delivered: int) -> None:
        """Records up to position `delivered` are in every sink: drop the segments (or the live data) they fill."""
        self.flush()
        while self.old and self.old[0].end <= delivered:
            segment = self.old.popleft()
            self.bytes -= segment.size
            segment.close()
        live = self.live
        if live is None:
            return
        if live.end <= delivered and not self.old:
            if live.size:
                os.ftruncate(live.fd, 0)  # O_APPEND: the next record goes to the new end (0)
                self.bytes, live.size = 0, 0
        elif live.size >= SEGMENT_BYTES:
            try:
                self.live = self._segment()
            except OSError as exc:  # keep appending to the full segment; it is dropped once delivered
                log.error("audit write-ahead log: cannot rotate %s: %s", live.path, exc)
                return
            self.old.append(live)

    def sync_targets(self) -> tuple[int, list[int], bool]:
        """For an fsync: (position it covers, duplicated descriptors to sync, whether the directory needs one)."""
        self.flush()
        segments = [s for s in (*self.old, self.live) if s is not None and s.end > self.synced]
        named = all(s.named for s in segments)
        for s in segments:
            s.named = True
        return self.position, [os.dup(s.fd) for s in segments], not named

    def close(self) -> None:
        """Graceful stop: everything was delivered; remove this process's segments."""
        self._staged, self._staged_bytes = [], 0
        for segment in (*self.old, self.live):
            if segment is not None:
                segment.close()
        self.old.clear()
        self.live = None
        self.bytes = 0


def sync_files(fds: list[int], directory: Path | None) -> None:
    """fsync (fdatasync) each descriptor and close it; then the directory (new segment names). Blocking."""
    try:
        for fd in fds:
            _sync(fd)
        if directory is not None:
            fsync_dir(directory)
    finally:
        for fd in fds:
            os.close(fd)


class GroupCommit:
    """fsync mode: `wait(position)` returns once an fsync covers that record; one fsync per round serves all."""

    def __init__(self, wal: Wal, on_synced: Callable[[], None] | None = None) -> None:
        self.wal = wal
        self.on_synced = on_synced  # e.g. checkpoint: records are dropped only once an fsync covers them
        self.errors = 0
        self.rounds = 0  # fsync rounds run
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = spawn(self._loop(), name="audit-wal-fsync")

    async def wait(self, position: int) -> None:
        if position <= self.wal.synced or self._stopped or self._task is None or self._task.done():
            return  # covered, stopping, or the fsync task is gone (logged by spawn): never hold a reply forever
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        self._kick.set()
        await future

    async def _loop(self) -> None:
        while not self._stopped:
            await self._kick.wait()
            self._kick.clear()
            await self.sync()

    async def sync(self) -> None:
        """One fsync round covering every record appended so far; wakes the waiters it covers."""
        wal = self.wal
        if wal.position > wal.synced:
            target = wal.position
            self.rounds += 1
            try:
                target, fds, new_names = wal.sync_targets()
                await asyncio.to_thread(sync_files, fds, wal.directory if new_names else None)
            except OSError as exc:  # the records are still in the page cache and on their way to the sinks
                self.errors += 1
                log.error("audit write-ahead log: fsync failed (replies are released; power loss may lose "
                          "their events): %s", exc)
            wal.synced = max(wal.synced, target)
            if self.on_synced is not None:
                self.on_synced()
        while self._waiters and self._waiters[0][0] <= wal.synced:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)

    async def aclose(self) -> None:
        self._stopped = True
        self._kick.set()
        if self._task is not None:
            await asyncio.wait([self._task])
        await self.sync()
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
