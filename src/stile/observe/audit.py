"""Audit trail (first slice of #5): one hash-chained JSON line per MCP request, written off the hot path.

Each event carries `seq` and the SHA-256 of its predecessor (`prev`); its own `hash` covers the
canonical JSON of everything else, so `stile audit verify` finds a modified, deleted or reordered line
and says where. Events go through a bounded queue to a background writer that appends in batches and
flushes on shutdown. A full queue never blocks a request: the event is counted in
`stile_audit_dropped_total` (never silently lost from view). Arguments are recorded per
`audit.arguments`: `none`, `digest` (SHA-256 of their canonical JSON), `redacted` (default: values of
secret-looking keys and known secret formats masked, structure kept) or `full`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from stile.core.context import CallContext
from stile.tasks import spawn

log = logging.getLogger("stile.audit")
ArgumentsMode = Literal["none", "digest", "redacted", "full"]
QUEUE_SIZE = 10_000
BATCH = 256
GENESIS = "0" * 64
MASK = "***"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|auth|credential|private[_-]?key|session", re.I)
_SECRET_VALUE = re.compile(
    r"^(eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # JWT
    r"|stile_[A-Za-z0-9_-]{20,}"  # Stile API key
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub token
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack token
    r"|sk-[A-Za-z0-9_-]{20,})$"  # OpenAI-style key
)


def redact(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        return MASK
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value]
    if isinstance(value, str) and _SECRET_VALUE.match(value):
        return MASK
    return value


def arguments_for(mode: ArgumentsMode, args: Any) -> Any:
    if mode == "none" or args is None:
        return None
    if mode == "digest":
        return "sha256:" + hashlib.sha256(orjson.dumps(args, option=orjson.OPT_SORT_KEYS)).hexdigest()
    if mode == "redacted":
        return redact(args)
    return args


def chain_hash(prev: str, event: dict[str, Any]) -> str:
    body = orjson.dumps({k: v for k, v in event.items() if k != "hash"}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev.encode() + body).hexdigest()


class AuditLog:
    def __init__(self, path: Path | None, *, stdout: bool = False, arguments: ArgumentsMode = "redacted") -> None:
        self.path = path
        self.stdout = stdout
        self.arguments = arguments
        self.dropped = 0
        self.written = 0
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._prev = GENESIS
        self._seq = 0

    @property
    def enabled(self) -> bool:
        return self.path is not None or self.stdout

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        if not self.enabled:
            return
        if self.path is not None and self.path.exists():
            self._prev, self._seq = _tail_state(self.path)
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._writer = spawn(self._write_loop(), name="audit-writer")

    def record(self, ctx: CallContext, outcome: str, error_code: int | None, seconds: float,
               tool: str, upstream: str) -> None:
        if self._queue is None:
            return
        p = ctx.principal
        event = {
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "request_id": ctx.request_id, "virtual_server": ctx.virtual_server, "method": ctx.method,
            "tool": tool or None, "upstream": upstream or None,
            "principal": {"agent": p.agent, "user": p.user, "roles": list(p.roles), "auth": p.method},
            "arguments": arguments_for(self.arguments, ctx.params.get("arguments")),
            "outcome": outcome, "error_code": error_code, "latency_ms": round(seconds * 1000, 3),
        }
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._write(batch)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        lines = []
        for event in batch:
            self._seq += 1
            event["seq"] = self._seq
            event["prev"] = self._prev
            event["hash"] = self._prev = chain_hash(self._prev, event)
            lines.append(orjson.dumps(event) + b"\n")
        data = b"".join(lines)
        if self.path is not None:
            try:
                with self.path.open("ab") as f:
                    f.write(data)
            except OSError as exc:
                log.error("audit: cannot write %s: %s (%d events lost)", self.path, exc, len(batch))
                self.dropped += len(batch)
                return
        if self.stdout:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        self.written += len(batch)

    async def aclose(self) -> None:
        """Flush everything queued, then stop the writer."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._queue is not None and not self._queue.empty():
            rest = []
            while not self._queue.empty():
                rest.append(self._queue.get_nowait())
            self._write(rest)


def _tail_state(path: Path) -> tuple[str, int]:
    last = b""
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                last = line
    if not last:
        return GENESIS, 0
    event = orjson.loads(last)
    return str(event.get("hash", GENESIS)), int(event.get("seq", 0))


def verify(path: Path) -> list[str]:
    """Problems in the chain, one line each ("line N: ..."); empty when intact."""
    problems: list[str] = []
    prev, seq = GENESIS, 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                problems.append(f"line {n}: not JSON")
                continue
            if event.get("seq") != seq + 1:
                problems.append(f"line {n}: seq {event.get('seq')} follows {seq} (a line was deleted or moved)")
            if event.get("prev") != prev:
                problems.append(f"line {n}: does not chain to the line before it (deleted, moved or inserted)")
            if chain_hash(str(event.get("prev")), event) != event.get("hash"):
                problems.append(f"line {n}: content does not match its hash (modified)")
            prev, seq = str(event.get("hash")), int(event.get("seq") or 0)
    return problems
