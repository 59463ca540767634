"""A small Redis client (RESP2 over one pipelined asyncio connection) with a hard deadline per command.

Enough for the rate limiter's Lua script: `redis://[:password@]host[:port][/db]` URLs, `EVALSHA` with an
`EVAL` fallback, replies in order on one connection (requests are pipelined, not serialized). Every
failure, a refused connection, a timeout or a reset, raises `RedisUnavailable` within `timeout` seconds;
the connection is then dropped and the next command reconnects (at most once per `retry_seconds`, so a
dead Redis costs a call nothing but a clock read). No dependency beyond asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer in time."""


class RedisReplyError(Exception):
    """Redis answered with an error reply (`-ERR ...`)."""


def parse_url(url: str) -> tuple[str, int, int, str | None]:
    """(host, port, db, password) of a redis:// URL; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"expected redis://HOST[:PORT][/DB], got {url!r}")
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"redis URL {url!r}: the database must be a number")
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, parts.port or 6379, int(db_text), password


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = await reader.readexactly(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [await _read_reply(reader) for _ in range(n)]
    raise RedisUnavailable(f"unexpected reply from redis: {line[:40]!r}")


class RedisLite:
    def __init__(self, url: str, timeout: float = 0.1, retry_seconds: float = 1.0) -> None:
        self.host, self.port, self.db, self.password = parse_url(url)
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._connecting: asyncio.Lock | None = None
        self._down_until = 0.0
        self._shas: dict[str, str] = {}

    async def command(self, *args: Any) -> Any:
        """One command's reply; `RedisReplyError` for an error reply, `RedisUnavailable` otherwise."""
        writer = self._writer if self._writer is not None else await self._connect()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        writer.write(_encode(args))
        try:
            reply = await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            self._fail(f"no answer within {self.timeout}s")
            raise RedisUnavailable(f"redis {self.host}:{self.port}: no answer within {self.timeout}s") from None
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest()  # Redis names scripts by SHA-1
        try:
            return await self.command("EVALSHA", sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.command("EVAL", script, len(keys), *keys, *args)

    async def _connect(self) -> asyncio.StreamWriter:
        if time.monotonic() < self._down_until:
            raise RedisUnavailable(f"redis {self.host}:{self.port} is unavailable (retrying)")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
            except (OSError, TimeoutError) as exc:
                self._down_until = time.monotonic() + self.retry_seconds
                raise RedisUnavailable(f"redis {self.host}:{self.port}: {exc or type(exc).__name__}") from None
            self._reader_task = asyncio.create_task(self._read_loop(reader), name="redis-reader")
            # AUTH and SELECT go first on the wire: commands pipelined after them run authenticated, in the db
            setup = ([("AUTH", self.password)] if self.password is not None else []) + (
                [("SELECT", self.db)] if self.db else [])
            replies: list[asyncio.Future[Any]] = []
            for args in setup:
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                self._pending.append(fut)
                replies.append(fut)
                writer.write(_encode(args))
            self._writer = writer
            try:
                done = await asyncio.wait_for(asyncio.gather(*replies), self.timeout) if replies else []
            except TimeoutError:
                self._fail("no answer to AUTH/SELECT")
                raise RedisUnavailable(f"redis {self.host}:{self.port}: no answer to AUTH/SELECT") from None
            for reply in done:
                if isinstance(reply, RedisReplyError):
                    self._fail(str(reply))
                    raise RedisUnavailable(f"redis {self.host}:{self.port}: {reply}")
        return writer

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await _read_reply(reader)
                if self._pending:
                    fut = self._pending.popleft()
                    if not fut.done():
                        fut.set_result(reply)
        except (OSError, asyncio.IncompleteReadError, ValueError, RedisUnavailable) as exc:
            self._fail(str(exc) or type(exc).__name__)

    def _fail(self, why: str) -> None:
        """Drop the connection (replies would no longer match requests); waiting commands fail now."""
        writer, self._writer = self._writer, None
        task, self._reader_task = self._reader_task, None
        if writer is not None:
            writer.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._down_until = time.monotonic() + self.retry_seconds
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(RedisUnavailable(f"redis {self.host}:{self.port}: {why}"))

    async def aclose(self) -> None:
        task = self._reader_task
        self._fail("closed")
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class RedisSubscriber:
    """Pub/sub on its own connection (a subscribed connection takes no other commands).

    `run()` connects, subscribes to `channels` and calls `on_message(channel, data)` for each message until
    cancelled; a lost connection is retried every `retry_seconds`, resubscribing. `up` says whether the
    subscription is live now (messages published while it is down are lost: Redis pub/sub keeps nothing).
    """

    def __init__(self, url: str, channels: list[str], on_message: Any, timeout: float = 1.0,
                 retry_seconds: float = 1.0) -> None:
        self.host, self.port, self.db, self.password = parse_url(url)
        self.channels = channels
        self.on_message = on_message
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.up = False
        self.subscribed = asyncio.Event()
        self.stopped = False  # set before cancelling run(): a cancellation lost in a race still ends the loop

    async def run(self) -> None:
        while not self.stopped:
            try:
                await self._session()
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, RedisUnavailable,
                    RedisReplyError) as exc:
                if self.up:
                    logging.getLogger("stile.bus").warning("redis %s:%s: subscription lost (%s); retrying",
                                                           self.host, self.port, exc or type(exc).__name__)
            finally:
                self.up = False
                self.subscribed.clear()
            await asyncio.sleep(self.retry_seconds)

    async def _session(self) -> None:
        async with asyncio.timeout(self.timeout):  # not wait_for: on 3.11 it can swallow a cancellation
            reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            async with asyncio.timeout(self.timeout):
                if self.password is not None:
                    writer.write(_encode(("AUTH", self.password)))
                    reply = await _read_reply(reader)
                    if isinstance(reply, RedisReplyError):
                        raise reply
                writer.write(_encode(("SUBSCRIBE", *self.channels)))  # pub/sub channels ignore SELECT's db
                for _ in self.channels:
                    reply = await _read_reply(reader)
                    if isinstance(reply, RedisReplyError):
                        raise reply
            self.up = True
            self.subscribed.set()
            while True:
                reply = await _read_reply(reader)
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                    self.on_message(reply[1], reply[2])
        finally:
            writer.close()
