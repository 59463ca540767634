"""Long-lived notification streams: the legacy GET stream and modern `subscriptions/listen`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from stile.core.context import CallContext, Reply
from stile.core.hub import Hub, Subscriber
from stile.core.router import LISTEN_FLAGS
from stile.core.sessions import LegacySession
from stile.frontends.asgi import SSE_HEADERS, Receive, Send
from stile.tasks import spawn
from stile.wire import eras, jsonrpc, sse
from stile.wire.jsonrpc import Message

KEEPALIVE_SECONDS = 15.0
MAX_BACKLOG = 1024


async def _pump(queue: asyncio.Queue[Message | None], receive: Receive, send: Send,
                tag: dict[str, Any] | None) -> None:
    watcher = spawn(_disconnect(receive, queue), name="listen-disconnect")
    try:
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    msg = await queue.get()
            except TimeoutError:
                await send({"type": "http.response.body", "body": sse.COMMENT_KEEPALIVE, "more_body": True})
                continue
            if msg is None:
                return
            if tag is not None:
                params = dict(msg.get("params") or {})
                params["_meta"] = {**(params.get("_meta") or {}), **tag}
                msg = {**msg, "params": params}
            await send({"type": "http.response.body", "body": sse.encode(orjson.dumps(msg)), "more_body": True})
    finally:
        watcher.cancel()


async def _disconnect(receive: Receive, queue: asyncio.Queue[Message | None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(None)


def _enqueue(queue: asyncio.Queue[Message | None]) -> Any:
    def put(msg: Message) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(msg)

    return put


async def serve_get_stream(hub: Hub, vs: str, session: LegacySession, receive: Receive, send: Send) -> None:
    """The legacy GET stream of an admitted session: list_changed and its subscribed resources' updates."""
    queue: asyncio.Queue[Message | None] = asyncio.Queue(MAX_BACKLOG)
    sub = Subscriber(vs, _enqueue(queue), None, hub.session_uris(session.nonce))
    hub.add(sub)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})
        await _pump(queue, receive, send, None)
    finally:
        hub.remove(sub)
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve_listen(hub: Hub, ctx: CallContext, admitted: Reply, receive: Receive, send: Send) -> None:
    """A `subscriptions/listen` stream, as the chain admitted it (the router's answer says what to deliver)."""
    result = admitted.get("result")
    result = result if isinstance(result, dict) else {}
    honored = result.get("notifications") or {}
    methods = {LISTEN_FLAGS[k] for k in honored if k in LISTEN_FLAGS}
    deliver = set(result.get("deliver") or ())
    if "resourceSubscriptions" in honored:
        methods.add("notifications/resources/updated")
    tag = {eras.META_SUBSCRIPTION_ID: ctx.request_id}
    queue: asyncio.Queue[Message | None] = asyncio.Queue(MAX_BACKLOG)
    sub = Subscriber(ctx.virtual_server, _enqueue(queue), methods, deliver)
    hub.add(sub)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        ack = jsonrpc.notification("notifications/subscriptions/acknowledged",
                                   {"notifications": honored, "_meta": tag})
        await send({"type": "http.response.body", "body": sse.encode(orjson.dumps(ack)), "more_body": True})
        await _pump(queue, receive, send, tag)
    finally:
        hub.remove(sub)
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": b"", "more_body": False})
