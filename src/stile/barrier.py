"""The reply write barrier: what one event-loop tick writes to clients leaves together, after what must precede it.

Two kinds of work register here during a tick:
- `before_replies(flush)`: something that must reach the kernel before any reply of this tick does (the audit
  write-ahead log stages its records and registers its flush: one `os.write` for every record of the tick);
- `hold(outbox)`: a connection's response bytes (an `Outbox`), held instead of written at once.

At the end of the tick (one `call_soon`, scheduled by the first registration) `drain` runs every flush, then
releases every outbox: one `write` per connection for all it got this tick (status line, headers and body
together, instead of uvicorn's two writes). Anything that must write before the drain (a connection closing)
calls `flush_before()` first, so no reply ever leaves before the records staged ahead of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Releasable(Protocol):
    def release(self) -> None: ...


class WriteBarrier:
    __slots__ = ("_before", "_held", "_loop")

    def __init__(self) -> None:
        self._before: list[Callable[[], None]] = []
        self._held: list[Releasable] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop a drain is scheduled on

    def before_replies(self, flush: Callable[[], None]) -> None:
        """Run `flush` before any reply held in this tick leaves (it must not raise)."""
        self._before.append(flush)
        self._schedule()

    def hold(self, outbox: Releasable) -> None:
        """Release `outbox` at the end of this tick, after every `before_replies` flush."""
        self._held.append(outbox)
        self._schedule()

    def flush_before(self) -> None:
        """Run the registered flushes now (a write that cannot wait for the drain is about to happen)."""
        before, self._before = self._before, []
        for i, flush in enumerate(before):
            try:
                flush()
            except BaseException:  # the rest still run (first, at the next drain); the error goes to the loop
                self._before[:0] = before[i + 1:]
                raise

    def drain(self) -> None:
        self._loop = None
        try:
            self.flush_before()
        finally:  # a failed flush must not hold the replies forever (it reports its own errors)
            held, self._held = self._held, []
            for i, outbox in enumerate(held):
                try:
                    outbox.release()
                except BaseException:  # never strand the other connections' replies
                    self._held[:0] = held[i + 1:]
                    if self._held:
                        self._schedule()
                    raise

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            loop.call_soon(self.drain)


BARRIER = WriteBarrier()
