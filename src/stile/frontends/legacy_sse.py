"""Legacy HTTP+SSE front door (2024-11-05 transport) for old clients.

`GET /sse/<vs>` opens the stream and names the POST URL in an `endpoint` event; every answer,
notification and server->client request travels on that one stream. The connection is the
session, so this transport is process-local by nature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from stile.core.context import ANONYMOUS, CallContext, Principal
from stile.frontends.asgi import (
    SSE_HEADERS,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    read_body,
    send_empty,
    send_json,
)
from stile.frontends.channel import ClientReplyError
from stile.tasks import spawn
from stile.wire import eras, jsonrpc, methods, sse
from stile.wire.errors import INTERNAL_ERROR, ClientError, MethodNotFound, StileError
from stile.wire.jsonrpc import Message

if TYPE_CHECKING:
    from stile.core.gateway import Gateway
    from stile.frontends.streamable import StreamableEndpoint

log = logging.getLogger("stile.frontend")


@dataclass(eq=False)
class _Conn:
    vs: str
    queue: asyncio.Queue[Message | None] = field(default_factory=lambda: asyncio.Queue(4096))
    version: str = eras.LATEST_LEGACY
    caps: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] | None = None
    pending: dict[str, asyncio.Future[Message]] = field(default_factory=dict)
    principal: Principal = ANONYMOUS
    dropped: int = 0

    def put(self, msg: Message) -> None:
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:  # the client stopped reading its stream: drop, never raise in a background task
            if not self.dropped:
                log.warning("legacy SSE stream for %s is not being read: dropping messages", self.vs)
            self.dropped += 1


class _QueueChannel:
    can_request = True

    def __init__(self, conn: _Conn, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    async def notify(self, msg: Message) -> None:
        self._conn.put(msg)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = "stile-" + secrets.token_urlsafe(12)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._conn.pending[rid] = fut
        try:
            self._conn.put(jsonrpc.request(rid, method, params))
            async with asyncio.timeout(self._timeout):
                answer = await fut
        except TimeoutError as exc:
            raise StileError(f"client did not answer {method} in time") from exc
        finally:
            self._conn.pending.pop(rid, None)
        if "error" in answer:
            raise ClientReplyError(answer["error"] if isinstance(answer["error"], dict) else {})
        res = answer.get("result")
        return res if isinstance(res, dict) else {}


class LegacySseEndpoint:
    def __init__(self, gw: Gateway, mcp: StreamableEndpoint) -> None:
        self.gw = gw
        self.mcp = mcp
        self.conns: dict[str, _Conn] = {}

    async def handle(self, scope: Scope, vs: str, tail: str, headers: dict[str, str], receive: Receive,
                     send: Send, principal: Principal = ANONYMOUS) -> None:
        if scope["method"] == "GET" and tail == "":
            await self._stream(vs, receive, send, principal)
        elif scope["method"] == "POST" and tail == "messages":
            qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            cid = (qs.get("session_id") or [""])[0]
            conn = self.conns.get(cid)
            if conn is None or conn.vs != vs or conn.principal != principal:
                await send_json(send, 404, jsonrpc.error(None, -32600, "Session not found"))
                return
            await self._message(conn, receive, send)
        else:
            await send_json(send, 405, jsonrpc.error(None, -32600, "method not allowed"))

    async def _stream(self, vs: str, receive: Receive, send: Send, principal: Principal) -> None:
        await self.gw.handle(CallContext(vs, methods.SSE_STREAM, {}, None, "legacy", eras.LATEST_LEGACY,
                                         principal=principal))  # admitted by the chain before it opens
        cid = secrets.token_urlsafe(18)
        conn = self.conns[cid] = _Conn(vs, principal=principal)
        watcher = spawn(self._watch(receive, conn), name="sse-disconnect")
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            endpoint = f"/sse/{vs}/messages?session_id={cid}".encode()
            await send({"type": "http.response.body", "body": sse.encode(endpoint, event="endpoint"),
                        "more_body": True})
            while True:
                try:
                    async with asyncio.timeout(15):
                        msg = await conn.queue.get()
                except TimeoutError:
                    await send({"type": "http.response.body", "body": sse.COMMENT_KEEPALIVE, "more_body": True})
                    continue
                if msg is None:
                    break
                await send({"type": "http.response.body", "body": sse.encode(orjson.dumps(msg)), "more_body": True})
        finally:
            watcher.cancel()
            self.conns.pop(cid, None)

    async def _watch(self, receive: Receive, conn: _Conn) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        conn.queue.put_nowait(None)

    async def _message(self, conn: _Conn, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, self.gw.cfg.limits.max_body_bytes)
            msg = jsonrpc.validate_message(jsonrpc.parse_body(body, max_depth=self.gw.cfg.limits.max_json_depth))
        except BodyTooLarge:
            await send_json(send, 413, jsonrpc.error(None, -32600, "body too large"))
            return
        except ConnectionAbortedError:  # the client went away mid-body: nobody to answer
            return
        except ClientError as exc:
            await send_json(send, 400, {"jsonrpc": "2.0", "id": None, "error": exc.to_error()})
            return
        if jsonrpc.is_request(msg) and conn.queue.full():
            await send_json(send, 429, jsonrpc.error(msg["id"], -32600, "too many unread messages on the SSE stream"))
            return
        await send_empty(send, 202)
        if jsonrpc.is_response(msg):
            fut = conn.pending.get(str(msg.get("id")))
            if fut is not None and not fut.done():
                fut.set_result(msg)
        else:
            spawn(self._request(conn, msg), name="sse-request")

    async def _request(self, conn: _Conn, msg: Message) -> None:
        """One request or notification from the client, through the chain; the answer goes on the stream."""
        params = msg.get("params")
        params = params if isinstance(params, dict) else {}
        rid = msg.get("id")
        if msg["method"] == "initialize" and rid is not None:
            version = eras.negotiate_legacy(params.get("protocolVersion"))
            raw_caps = params.get("capabilities")
            caps = raw_caps if isinstance(raw_caps, dict) else {}
            info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else None
            ctx = CallContext(conn.vs, "initialize", params, rid, "legacy", version, caps, info,
                              principal=conn.principal)
            try:
                reply = await self.gw.handle(ctx)
            except StileError as exc:
                conn.put({"jsonrpc": "2.0", "id": rid, "error": exc.to_error()})
                return
            if "result" in reply:
                conn.version, conn.caps, conn.info = version, caps, info
            conn.put({"jsonrpc": "2.0", "id": rid, **reply})
            return
        channel = _QueueChannel(conn, self.mcp.request_timeout)
        ctx = CallContext(conn.vs, msg["method"], params, rid, "legacy", conn.version, conn.caps, conn.info,
                          principal=conn.principal, channel=channel)
        if rid is None:  # a notification: recorded by the chain, never answered
            if methods.client_method(ctx.method):
                with contextlib.suppress(StileError):
                    await self.gw.handle(ctx)
            return
        try:
            if not methods.client_method(ctx.method) or ctx.method == "initialize":
                raise MethodNotFound(f"Method not found: {ctx.method[:256]}")
            reply = await self.gw.handle(ctx)
            conn.put({"jsonrpc": "2.0", "id": msg["id"], **reply})
        except StileError as exc:
            conn.put({"jsonrpc": "2.0", "id": msg["id"], "error": exc.to_error()})
        except Exception:  # boundary for one background request
            conn.put(jsonrpc.error(msg["id"], INTERNAL_ERROR, "internal error"))
            raise
