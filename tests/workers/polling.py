"""Waiting on another process's state (files, /proc, a socket peer) that offers no event: poll, with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(check: Callable[[], bool], what: str, deadline_s: float = 60.0, every: float = 0.02) -> None:
    end = time.monotonic() + deadline_s
    for _ in range(int(deadline_s / every) + 1):
        if check():
            return
        if time.monotonic() > end:
            break
        await asyncio.sleep(every)
    if not check():
        raise AssertionError(f"not within {deadline_s}s: {what}")
