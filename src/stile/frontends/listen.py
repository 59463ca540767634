"""Long-lived notification streams: the legacy GET stream and modern `subscriptions/listen`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson

from stile.core.context import CallContext
from stile.core.hub import Subscriber
from stile.core.sessions import LegacySession
from stile.frontends.asgi import SSE_HEADERS, Receive, Send
from stile.tasks import spawn
from stile.wire import eras, jsonrpc, sse
from stile.wire.errors import StileError
from stile.wire.jsonrpc import Message

if TYPE_CHECKING:
    from stile.core.gateway import Gateway

KEEPALIVE_SECONDS = 15.0
MAX_BACKLOG = 1024
_FLAGS = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}


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


async def serve_get_stream(gw: Gateway, vs: str, session: LegacySession, receive: Receive, send: Send) -> None:
    queue: asyncio.Queue[Message | None] = asyncio.Queue(MAX_BACKLOG)
    sub = Subscriber(vs, _enqueue(queue), None, gw.subscriptions.setdefault(session.nonce, set()))
    gw.hub.add(sub)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})
        await _pump(queue, receive, send, None)
    finally:
        gw.hub.remove(sub)
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve_listen(gw: Gateway, ctx: CallContext, receive: Receive, send: Send) -> None:
    wanted = ctx.params.get("notifications")
    wanted = wanted if isinstance(wanted, dict) else {}
    honored: dict[str, Any] = {k: True for k in _FLAGS if wanted.get(k) is True}
    methods = {_FLAGS[k] for k in honored}
    uris = wanted.get("resourceSubscriptions")
    uri_set = {u for u in uris if isinstance(u, str)} if isinstance(uris, list) else set()
    if uri_set:
        honored["resourceSubscriptions"] = sorted(uri_set)
        methods.add("notifications/resources/updated")
        view = gw.view(ctx.virtual_server)
        for uri in uri_set:
            hit = view.resolve_uri(uri) if view is not None else None
            if hit is not None:
                with contextlib.suppress(StileError):  # best effort: the upstream may not support it
                    await gw.upstreams[hit[0]].request("resources/subscribe", {"uri": hit[1]})
    tag = {eras.META_SUBSCRIPTION_ID: ctx.request_id}
    queue: asyncio.Queue[Message | None] = asyncio.Queue(MAX_BACKLOG)
    sub = Subscriber(ctx.virtual_server, _enqueue(queue), methods, uri_set)
    gw.hub.add(sub)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        ack = jsonrpc.notification("notifications/subscriptions/acknowledged",
                                   {"notifications": honored, "_meta": tag})
        await send({"type": "http.response.body", "body": sse.encode(orjson.dumps(ack)), "more_body": True})
        await _pump(queue, receive, send, tag)
    finally:
        gw.hub.remove(sub)
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": b"", "more_body": False})
