"""Request/response correlation for transports with one shared inbound stream (stdio, HTTP+SSE).

Responses resolve pending futures by id; progress notifications go to the call that owns the
progress token; server->client requests go to the sole in-flight call (these transports carry no
per-request stream, so with several calls in flight the relation is unknowable and the request is
answered "not supported"); everything else is an unsolicited notification.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from stile.tasks import spawn
from stile.upstreams.base import DEFAULT_OPTIONS, CallOptions, IdSource, OnNotification
from stile.wire import jsonrpc
from stile.wire.errors import StileError, UpstreamTimeout, UpstreamUnavailable
from stile.wire.jsonrpc import Message

Writer = Callable[[Message], Awaitable[None]]


class Correlator:
    def __init__(self, name: str, write: Writer, notify: Callable[[], OnNotification], prefix: str) -> None:
        self.name = name
        self._write = write
        self._notify = notify
        self._ids = IdSource(prefix)
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._calls: dict[str, CallOptions] = {}

    async def call(self, method: str, params: dict[str, Any], *, timeout: float,
                   opts: CallOptions = DEFAULT_OPTIONS) -> Message:
        rid = self._ids.next()
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._calls[rid] = opts
        try:
            await self._write(jsonrpc.request(rid, method, params))
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError as exc:
            await self._cancel(rid)
            raise UpstreamTimeout(self.name, f"no answer to {method} within {timeout}s") from exc
        except asyncio.CancelledError:
            await self._cancel(rid)
            raise
        finally:
            self._pending.pop(rid, None)
            self._calls.pop(rid, None)

    async def _cancel(self, rid: str) -> None:
        with contextlib.suppress(UpstreamUnavailable):
            await self._write(jsonrpc.notification("notifications/cancelled", {"requestId": rid}))

    def dispatch(self, msg: Message) -> None:
        if "method" not in msg:
            fut = self._pending.get(str(msg.get("id")))
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if "id" in msg:
            spawn(self._answer(msg, self._sole_call()), name=f"relay-{self.name}")
            return
        params = msg.get("params")
        token = params.get("progressToken") if isinstance(params, dict) else None
        owner = self._by_token(token) if token is not None else None
        if owner is None and msg["method"] == "notifications/message" and len(self._calls) == 1:
            owner = self._sole_call()
        if owner is not None:
            spawn(owner.on_message(msg), name=f"notify-{self.name}")
        else:
            self._notify()(msg["method"], msg)

    def _by_token(self, token: Any) -> CallOptions | None:
        for opts in self._calls.values():
            if opts.progress_token is not None and opts.progress_token == token:
                return opts
        return None

    def _sole_call(self) -> CallOptions:
        return next(iter(self._calls.values())) if len(self._calls) == 1 else DEFAULT_OPTIONS

    async def _answer(self, msg: Message, opts: CallOptions) -> None:
        try:
            if msg["method"] == "ping":
                reply = jsonrpc.result(msg["id"], {})
            else:
                reply = jsonrpc.result(msg["id"], await opts.on_request(msg["method"], msg.get("params") or {}))
        except StileError as exc:
            reply = {"jsonrpc": "2.0", "id": msg["id"], "error": exc.to_error()}
        with contextlib.suppress(UpstreamUnavailable):
            await self._write(reply)

    def fail(self, rid: str | None, error: StileError) -> bool:
        """Fail the call `rid` (None: the sole call in flight, if there is exactly one); False if none was."""
        if rid is None:
            if len(self._pending) != 1:
                return False
            rid = next(iter(self._pending))
        fut = self._pending.get(rid)
        if fut is None or fut.done():
            return False
        fut.set_exception(error)
        return True

    def fail_all(self, why: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(UpstreamUnavailable(self.name, why))
