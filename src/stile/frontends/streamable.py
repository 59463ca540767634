"""The MCP endpoint `/mcp/<virtual-server>`: Streamable HTTP, both eras on one URL.

Era of an inbound message: `initialize` or an `Mcp-Session-Id` header means legacy (2025-03-26 ..
2025-11-25, a sealed session id); a `_meta` protocol version means modern (2026-07-28, stateless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stile.bus import BusUnavailable
from stile.core.context import ANONYMOUS, CallContext, Principal
from stile.core.sessions import LegacySession, owner_of
from stile.frontends.asgi import Receive, Send, send_empty, send_json
from stile.frontends.channel import Relay, ResponseChannel
from stile.frontends.listen import serve_get_stream, serve_listen
from stile.tasks import spawn
from stile.wire import eras, jsonrpc, methods
from stile.wire.errors import (
    INTERNAL_ERROR,
    HeaderMismatch,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    StileError,
    UnsupportedVersion,
)
from stile.wire.headers import check_modern_headers
from stile.wire.jsonrpc import Message

if TYPE_CHECKING:
    from stile.core.gateway import Gateway

log = logging.getLogger("stile.frontend")
SESSION_HEADER = b"mcp-session-id"
# Modern errors that travel with HTTP 400 (SEP-2243 / SEP-2575), also when an upstream raised them.
_HTTP_400_CODES = frozenset({-32020, -32021, -32022})
MAX_BATCH = 64
WATCH_AFTER = 0.02  # seconds before a call gets a disconnect watcher


def error_body(id_: Any, exc: StileError) -> Message:
    return {"jsonrpc": "2.0", "id": id_, "error": exc.to_error()}


class StreamableEndpoint:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.relay = Relay(gw.rpc)
        self.inflight: dict[tuple[str, Any], Callable[[], None]] = {}
        gw.rpc.on_cast("cancel", self._remote_cancel)  # a legacy cancel that landed on another replica
        # how long a relayed server->client request may wait for the client: the longest upstream timeout
        self.request_timeout = max((u.timeout for u in gw.cfg.upstreams.values()), default=60.0)

    # --- entry points per HTTP method -----------------------------------------------------
    async def post(self, vs: str, msg: Any, headers: dict[str, str], receive: Receive, send: Send,
                   principal: Principal = ANONYMOUS) -> None:
        if isinstance(msg, list):
            await self._batch(vs, msg, headers, send, principal)
            return
        msg = jsonrpc.validate_message(msg)
        params = msg.get("params") or {}
        meta = params.get("_meta") if isinstance(params, dict) else None
        sid = headers.get("mcp-session-id")
        if sid is not None:
            session = await self._open_session(sid, vs, principal)
            await self._legacy(vs, msg, session, sid, headers, receive, send, principal)
        elif msg.get("method") == "initialize" and not (isinstance(meta, dict) and eras.META_VERSION in meta):
            await self._initialize(vs, msg, headers, send, principal)
        elif isinstance(meta, dict) and eras.META_VERSION in meta:
            await self._modern(vs, msg, meta, headers, receive, send, principal)
        elif headers.get("mcp-protocol-version") in eras.MODERN_VERSIONS:
            raise InvalidParams("modern requests must carry _meta io.modelcontextprotocol/protocolVersion "
                                "and clientCapabilities", http_status=400)
        else:
            raise InvalidRequest("Bad Request: Missing session ID (send initialize first)")

    async def get(self, vs: str, headers: dict[str, str], receive: Receive, send: Send,
                  principal: Principal = ANONYMOUS) -> None:
        sid = headers.get("mcp-session-id")
        if sid is None:
            if headers.get("mcp-protocol-version") in eras.MODERN_VERSIONS:
                await send_empty(send, 405, [(b"allow", b"POST")])
                return
            raise InvalidRequest("Bad Request: Missing session ID")
        session = await self._open_session(sid, vs, principal)
        await self.gw.handle(CallContext(vs, methods.GET_STREAM, {}, None, "legacy", session.version,
                                         session.client_caps, session.client_info, principal=principal,
                                         headers=headers, session_id=session.nonce))
        await self.gw.cluster.load_session_uris(session.nonce)  # subscribed through other replicas
        await serve_get_stream(self.gw.hub, vs, session, receive, send)

    async def delete(self, vs: str, headers: dict[str, str], send: Send, principal: Principal = ANONYMOUS) -> None:
        sid = headers.get("mcp-session-id")
        if sid is None:
            await send_empty(send, 405, [(b"allow", b"POST")])
            return
        session = await self._open_session(sid, vs, principal)
        await self.gw.sessions.close(session)
        self.gw.hub.drop_session(session.nonce)
        await self.gw.cluster.session_closed(session.nonce, session.issued + self.gw.sessions.lifetime)
        await send_empty(send, 200)

    async def _open_session(self, sid: str, vs: str, principal: Principal) -> LegacySession:
        return await self.gw.sessions.open(sid, vs, owner_of(principal))

    async def _batch(self, vs: str, msgs: list[Any], headers: dict[str, str], send: Send,
                     principal: Principal) -> None:
        """JSON-RPC batches exist only in 2025-03-26 sessions; every other era refuses them."""
        sid = headers.get("mcp-session-id")
        session = await self._open_session(sid, vs, principal) if sid is not None else None
        if session is None or session.version != "2025-03-26" or not msgs or len(msgs) > MAX_BATCH:
            raise InvalidRequest("batch requests are not supported in this protocol version")
        out: list[Message] = []
        for item in msgs:
            try:
                msg = jsonrpc.validate_message(item)
            except StileError as exc:
                out.append(error_body(None, exc))
                continue
            if jsonrpc.is_response(msg):
                with contextlib.suppress(StileError):  # a batch has no place to say it; the asker times out
                    await self.relay.answer(msg, session.nonce)
                continue
            if jsonrpc.is_notification(msg):
                with contextlib.suppress(StileError):  # a notification has no answer; the chain records it
                    await self._notification(vs, msg, session, headers, principal)
                continue
            try:
                if msg["method"] == "initialize" or not methods.client_method(msg["method"]):
                    raise MethodNotFound(f"Method not found: {str(msg['method'])[:256]}")
                ctx = CallContext(vs, msg["method"], msg.get("params") or {}, msg["id"], "legacy", session.version,
                                  session.client_caps, session.client_info, principal=principal, headers=headers,
                                  session_id=session.nonce)
                out.append({"jsonrpc": "2.0", "id": msg["id"], **(await self.gw.handle(ctx))})
            except StileError as exc:
                out.append(error_body(msg["id"], exc))
        if not out:
            await send_empty(send, 202)
            return
        await send_json(send, 200, out, [(SESSION_HEADER, sid.encode())] if sid else None)

    # --- legacy ---------------------------------------------------------------------------
    async def _initialize(self, vs: str, msg: Message, headers: dict[str, str], send: Send,
                          principal: Principal) -> None:
        """A new legacy session: the chain admits it (a principal with no role gets 403), then its id is minted."""
        if "id" not in msg:
            raise InvalidRequest("initialize must be a request")
        params = msg.get("params") or {}
        version = eras.negotiate_legacy(params.get("protocolVersion"))
        raw_caps = params.get("capabilities")
        caps: dict[str, Any] = raw_caps if isinstance(raw_caps, dict) else {}
        info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else None
        ctx = CallContext(vs, "initialize", params, msg["id"], "legacy", version, caps, info, principal=principal,
                          headers=headers)
        reply = await self.gw.handle(ctx)
        if "result" not in reply:
            await send_json(send, 200, {"jsonrpc": "2.0", "id": msg["id"], **reply})
            return
        sid, _ = self.gw.sealer.mint(version, vs, caps, info, owner_of(principal))
        await send_json(send, 200, {"jsonrpc": "2.0", "id": msg["id"], **reply}, [(SESSION_HEADER, sid.encode())])

    async def _notification(self, vs: str, msg: Message, session: LegacySession | None, headers: dict[str, str],
                            principal: Principal, era: methods.Era = "legacy", version: str | None = None,
                            caps: dict[str, Any] | None = None) -> None:
        """A client notification crosses the chain (and the audit); the frontend then acts on `cancelled`."""
        params = msg.get("params")
        params = params if isinstance(params, dict) else {}
        ctx = CallContext(vs, msg["method"], params, None, era,
                          version or (session.version if session else eras.LATEST_LEGACY),
                          caps if caps is not None else (session.client_caps if session else {}),
                          session.client_info if session else None, principal=principal, headers=headers,
                          session_id=session.nonce if session else None)
        if not methods.client_method(msg["method"]):
            raise MethodNotFound("Method not found")
        await self.gw.handle(ctx)
        if msg["method"] == "notifications/cancelled" and session is not None:
            rid = params.get("requestId")
            cancel = self.inflight.get((session.nonce, rid)) if jsonrpc.is_valid_id(rid) else None
            if cancel is not None:
                cancel()
            elif jsonrpc.is_valid_id(rid) and self.gw.rpc.shared:  # the call may run on another replica
                with contextlib.suppress(BusUnavailable):
                    await self.gw.rpc.cast(None, "cancel", {"n": session.nonce, "r": rid})

    def _remote_cancel(self, payload: dict[str, Any], sender: str) -> None:
        nonce, rid = payload.get("n"), payload.get("r")
        cancel = self.inflight.get((nonce, rid)) if isinstance(nonce, str) and jsonrpc.is_valid_id(rid) else None
        if cancel is not None:
            cancel()

    async def _legacy(self, vs: str, msg: Message, session: LegacySession, sid: str, headers: dict[str, str],
                      receive: Receive, send: Send, principal: Principal) -> None:
        version = headers.get("mcp-protocol-version")
        if version is not None and version not in eras.LEGACY_VERSIONS:
            raise InvalidRequest(f"Unsupported MCP-Protocol-Version: {version}")
        if jsonrpc.is_response(msg):
            await self.relay.answer(msg, session.nonce)
            await send_empty(send, 202)
            return
        if jsonrpc.is_notification(msg):
            await self._notify_or_refuse(vs, msg, session, headers, principal, send)
            return
        if msg["method"] == "initialize":
            raise InvalidRequest("session already initialized")
        if not methods.client_method(msg["method"]):
            raise MethodNotFound(f"Method not found: {str(msg['method'])[:256]}")
        ctx = CallContext(vs, msg["method"], msg.get("params") or {}, msg["id"], "legacy", session.version,
                          session.client_caps, session.client_info, None, principal=principal, headers=headers,
                          session_id=session.nonce)
        sess_hdr = [(SESSION_HEADER, sid.encode())]
        await self._run(ctx, receive, send, sess_hdr, self.relay, key=(session.nonce, msg["id"]))

    async def _notify_or_refuse(self, vs: str, msg: Message, session: LegacySession | None,
                                headers: dict[str, str], principal: Principal, send: Send,
                                era: methods.Era = "legacy", version: str | None = None,
                                caps: dict[str, Any] | None = None) -> None:
        """202 for a notification the chain admitted or ignored (an unknown one is recorded and dropped);
        a refusal of the principal (403, 429...) keeps its status."""
        try:
            await self._notification(vs, msg, session, headers, principal, era, version, caps)
        except MethodNotFound:
            pass
        except StileError as exc:
            if exc.http_status >= 400:
                raise
        await send_empty(send, 202)

    # --- modern ---------------------------------------------------------------------------
    async def _modern(self, vs: str, msg: Message, meta: dict[str, Any], headers: dict[str, str],
                      receive: Receive, send: Send, principal: Principal) -> None:
        version = meta.get(eras.META_VERSION)
        if headers.get("mcp-protocol-version") != version:
            raise HeaderMismatch("MCP-Protocol-Version header does not match _meta protocolVersion")
        if version not in eras.MODERN_VERSIONS:
            raise UnsupportedVersion(f"Unsupported protocol version: {version}",
                                     data={"supported": list(eras.MODERN_VERSIONS), "requested": version})
        caps = meta.get(eras.META_CAPS)
        if not isinstance(caps, dict):
            raise InvalidParams("missing _meta io.modelcontextprotocol/clientCapabilities", http_status=400)
        if jsonrpc.is_response(msg):
            raise InvalidRequest("the 2026-07-28 transport does not accept responses from clients")
        method = msg["method"]
        params = msg.get("params") or {}
        check_modern_headers(headers, method, params)
        if jsonrpc.is_notification(msg):
            await self._notify_or_refuse(vs, msg, None, headers, principal, send, "modern", version, caps)
            return
        if not methods.client_method(method):
            raise MethodNotFound(f"Method not found: {str(method)[:256]}", http_status=404)
        info = meta.get(eras.META_CLIENT_INFO)
        level = meta.get(eras.META_LOG_LEVEL)
        ctx = CallContext(vs, method, params, msg["id"], "modern", version, caps,
                          info if isinstance(info, dict) else None, level if isinstance(level, str) else None,
                          principal=principal, headers=headers)
        if method == "subscriptions/listen":
            admitted = await self.gw.handle(ctx)
            await serve_listen(self.gw.hub, ctx, admitted, receive, send)
            return
        await self._run(ctx, receive, send, [], None, key=None)

    # --- one request, JSON or SSE, cancelled by disconnect -----------------------------------
    async def _run(self, ctx: CallContext, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]],
                   relay: Relay | None, key: tuple[str, Any] | None) -> None:
        """Answer inline; a client disconnect (or legacy notifications/cancelled) cancels the call.

        The disconnect watcher is only started for calls still running after WATCH_AFTER seconds,
        so quick calls pay for a timer handle instead of an extra task.
        """
        channel = ResponseChannel(send, headers, relay, self.request_timeout, owner=key[0] if key else "")
        channel.prefer_sse = ctx.headers.get("accept", "").lstrip().startswith("text/event-stream")
        ctx = ctx.with_channel(channel)
        current = asyncio.current_task()
        assert current is not None
        stopped = False
        watcher: asyncio.Task[None] | None = None

        def stop() -> None:
            nonlocal stopped
            if not stopped and not channel.done:
                stopped = True
                current.cancel()

        def watch() -> None:
            nonlocal watcher
            watcher = spawn(_wait_disconnect(receive, stop), name="disconnect")

        timer = asyncio.get_running_loop().call_later(WATCH_AFTER, watch)
        if key is not None:
            self.inflight[key] = stop
        try:
            await self._reply(ctx, channel)
        except asyncio.CancelledError:
            if not stopped:
                raise
            current.uncancel()
            await channel.abort()
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
            if key is not None:
                self.inflight.pop(key, None)

    async def _reply(self, ctx: CallContext, channel: ResponseChannel) -> None:
        status = 200
        extra = None
        try:
            reply = await self.gw.handle(ctx)
            body = {"jsonrpc": "2.0", "id": ctx.request_id, **reply}
            err = reply.get("error")
            if ctx.era == "modern" and isinstance(err, dict) and err.get("code") in _HTTP_400_CODES:
                status = 400
        except StileError as exc:
            body = error_body(ctx.request_id, exc)
            if (ctx.era == "modern" and exc.http_status >= 400) or exc.http_status == 429:  # 429: both eras
                status = exc.http_status
                extra = exc.http_headers() or None
        except Exception:  # outermost boundary for one request: never a traceback to the client
            log.exception("internal error handling %s", ctx.method)
            body = jsonrpc.error(ctx.request_id, INTERNAL_ERROR, "internal error")
        await channel.finish(body, status, extra)



async def _wait_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            on_disconnect()
            return
