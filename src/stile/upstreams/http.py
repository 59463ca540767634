"""Streamable HTTP upstream (both eras) on a keep-alive HTTP/1.1 pool (`upstreams/h1.py`).

Era is detected once (a modern `server/discover`; anything else means legacy, which gets one
long-lived `initialize`d session, re-created only if the upstream forgets it). Notifications not
tied to a request (list_changed, resources/updated) arrive on a background listener: the legacy
GET stream, or a modern `subscriptions/listen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from stile.config.model import UpstreamConfig
from stile.tasks import spawn
from stile.upstreams.base import (
    DEFAULT_MAX_RESPONSE,
    DEFAULT_OPTIONS,
    CallOptions,
    Era,
    IdSource,
    UpstreamBase,
    adapt_params,
    discover_params,
    initialize_params,
    is_modern_discover,
)
from stile.upstreams.causes import detail_of
from stile.upstreams.credentials import NO_CREDENTIALS, Caller, Credentials
from stile.upstreams.h1 import H1Error, H1HeaderError, H1Pool, H1Response, H1TooLarge
from stile.wire import eras, jsonrpc, sse
from stile.wire import headers as mcp_headers
from stile.wire.errors import InvalidParams, StileError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream.http")
_ACCEPT = "application/json, text/event-stream"


class HttpUpstream(UpstreamBase):
    def __init__(self, name: str, cfg: UpstreamConfig, max_response: int = DEFAULT_MAX_RESPONSE,
                 credentials: Credentials = NO_CREDENTIALS) -> None:
        assert cfg.url is not None
        super().__init__(name, cfg, max_response)
        self._creds = credentials
        self.url = cfg.url
        self._ids = IdSource()
        self._session_id: str | None = None
        self._version = eras.LATEST_LEGACY
        self._http: H1Pool | None = None
        self._ready_lock = asyncio.Lock()
        self._ready = False
        self._listener: asyncio.Task[None] | None = None
        self._legacy_ok: bool | None = None  # None: not tried yet (dual-era upstreams)
        self._legacy_listener: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._ready and self._last_error is None

    def _client(self) -> H1Pool:
        if self._http is None:
            self._http = H1Pool(self.url, max_connections=self.cfg.max_connections,
                                connect_timeout=self.cfg.connect_timeout, keepalive_timeout=60.0)
        return self._http

    async def _head(self, sending: Coroutine[Any, Any, H1Response], method: str, rid: str, era: Era) -> H1Response:
        """The response head, within `first_byte_timeout` when set (the body then streams within `timeout`)."""
        limit = self.cfg.first_byte_timeout
        if limit is None:
            return await sending
        try:
            async with asyncio.timeout(limit):
                return await sending
        except TimeoutError as exc:
            self._cancel_later(rid, era)
            raise UpstreamTimeout(self.name, f"no response to {method} started within {limit:g}s") from exc

    async def _send(self, method: str, headers: dict[str, str], body: bytes = b"") -> H1Response:
        return await self._client().request(method, headers, body)

    async def start(self) -> None:
        await self._ensure_ready()

    async def aclose(self) -> None:
        self._closed = True
        for task in (self._listener, self._legacy_listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._session_id is not None and self._http is not None:
            with contextlib.suppress(H1Error, TimeoutError):
                hdrs = self._headers(era="legacy")
                async with asyncio.timeout(2), await self._send("DELETE", hdrs):
                    pass
        if self._http is not None:
            await self._http.aclose()

    def _headers(self, method: str | None = None, name: str | None = None, era: Era | None = None,
                 caller: Caller | None = None) -> dict[str, str]:
        h = {"Accept": _ACCEPT, "Content-Type": "application/json",
             **self._creds.headers(self.name, self.cfg.headers, caller)}
        if (era or self.era) == "modern":
            h["MCP-Protocol-Version"] = eras.MODERN
            if method is not None:
                h["Mcp-Method"] = method
            if name is not None:
                h["Mcp-Name"] = mcp_headers.encode_value(name)
        elif self._session_id is not None:
            h["Mcp-Session-Id"] = self._session_id
            h["MCP-Protocol-Version"] = self._version
        return h

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            try:
                if self.era in (None, "modern"):
                    msg = await self._post_raw("server/discover", discover_params(), force_modern=True)
                    if is_modern_discover(msg):
                        self.adopt_discover(msg["result"])
                    elif self.era == "modern":
                        raise UpstreamUnavailable(self.name, "upstream does not speak 2026-07-28")
                    else:
                        self.era = "legacy"
                if self.era == "legacy":
                    await self._initialize()
                    self._legacy_ok = True
            except StileError as exc:
                self._last_error = detail_of(exc, self.target)
                if self.cfg.era == "auto":
                    self.era = None
                raise
            self._ready = True
            self._last_error = None
            if self._listener is None and not self._closed:
                self._listener = spawn(self._listen(self.era or "legacy"), name=f"listen-{self.name}")

    async def _initialize(self) -> None:
        self._session_id = None
        msg = await self._post_raw("initialize", initialize_params(), keep_session=True)
        if "error" in msg:
            raise UpstreamUnavailable(self.name, f"initialize failed: {msg['error'].get('message')}")
        res = msg["result"]
        self._version = res.get("protocolVersion", eras.LATEST_LEGACY)
        self.adopt_initialize(res)
        await self._notify_legacy("notifications/initialized", {})

    async def _post_raw(
        self, method: str, params: dict[str, Any], *, force_modern: bool = False, keep_session: bool = False
    ) -> Message:
        """One request during setup (discover / initialize): JSON or SSE, first response wins."""
        h = {"Accept": _ACCEPT, "Content-Type": "application/json", **self._creds.headers(self.name, self.cfg.headers)}
        if force_modern:
            h.update({"MCP-Protocol-Version": eras.MODERN, "Mcp-Method": method})
        body = jsonrpc.dumps(jsonrpc.request(self._ids.next(), method, params))
        try:
            async with asyncio.timeout(self.cfg.connect_timeout):
                async with await self._send("POST", h, body) as resp:
                    if keep_session and "mcp-session-id" in resp.headers:
                        self._session_id = resp.headers["mcp-session-id"]
                    async for msg in self._messages(resp):
                        if jsonrpc.is_response(msg) and ("result" in msg or isinstance(msg.get("error"), dict)):
                            return self._creds.scrub(self.name, msg)  # its error text becomes Stile's
                    return {"error": {"code": -32603, "message": f"HTTP status {resp.status}"}}
        except TimeoutError as exc:
            raise UpstreamTimeout(self.name, f"no answer to {method} within {self.cfg.connect_timeout:g}s") from exc
        except H1Error as exc:
            raise self.unavailable(exc.cause) from exc

    async def _messages(self, resp: H1Response) -> AsyncIterator[Message]:
        """The JSON-RPC messages of a response; UpstreamTooLarge (connection closed) past `max_response`."""
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("text/event-stream"):
            dec = sse.Decoder(self.max_response)
            async for chunk in resp.iter_chunks():
                try:
                    events = dec.feed(chunk)
                except sse.EventTooLarge as exc:
                    resp.close()
                    raise UpstreamTooLarge(self.name, self.max_response, "SSE event") from exc
                for ev in events:
                    if ev.data:
                        try:
                            value = jsonrpc.loads(ev.data)
                        except ValueError:
                            log.warning("upstream %s sent a non-JSON SSE event", self.name)
                            continue
                        if isinstance(value, dict):
                            yield value
        elif ctype.startswith("application/json"):
            try:
                data = await resp.read(self.max_response)
            except H1TooLarge as exc:
                raise UpstreamTooLarge(self.name, self.max_response, "response body") from exc
            try:
                value = jsonrpc.loads(data)
            except ValueError:
                return
            if isinstance(value, dict):
                yield value

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._notify_legacy(method, params)

    async def _notify_legacy(self, method: str, params: dict[str, Any]) -> None:
        body = jsonrpc.dumps(jsonrpc.notification(method, params))
        try:
            async with asyncio.timeout(self.cfg.connect_timeout):
                async with await self._send("POST", self._headers(era="legacy"), body) as resp:
                    await resp.read(self.max_response)
        except (TimeoutError, H1Error) as exc:
            log.warning("upstream %s (%s): notification %s not delivered: %s", self.name, self.target, method,
                        exc.cause if isinstance(exc, H1Error) else "timeout")

    async def _pick_era(self, opts: CallOptions) -> Era:
        """Speak to a dual-era upstream in the client's era, so each client gets faithful behaviour."""
        assert self.era is not None
        if self.era == "legacy" or opts.client_era != "legacy" or self.cfg.era != "auto" or self._legacy_ok is False:
            return self.era
        if self._legacy_ok is None:
            async with self._ready_lock:
                if self._legacy_ok is None:
                    try:
                        await self._initialize()
                        self._legacy_ok = True
                        self._legacy_listener = spawn(self._listen("legacy"), name=f"listen-legacy-{self.name}")
                    except StileError as exc:
                        log.info("upstream %s: no legacy session (%s); bridging to 2026-07-28", self.name, exc.message)
                        self._legacy_ok = False
                        return "modern"
        return "legacy"

    async def request(self, method: str, params: dict[str, Any], opts: CallOptions = DEFAULT_OPTIONS) -> Message:
        await self._ensure_ready()
        era = await self._pick_era(opts)
        caller = opts.caller
        if caller is not None:
            await self._creds.prepare(self.name, caller)
        for attempt in (1, 2):
            try:
                msg = await self._request_once(method, params, opts, era)
            except _Unauthorized:
                if attempt == 2 or caller is None or not await self._creds.rejected(self.name, caller):
                    raise UpstreamUnavailable(self.name, "the upstream refused the caller's credentials (HTTP 401)"
                                              ) from None
            except UpstreamUnavailable as exc:
                self._last_error = detail_of(exc, self.target)  # not ready until it answers again
                raise
            except _SessionLost:
                if attempt == 2:
                    break
                log.info("upstream %s forgot our session; re-initializing", self.name)
                async with self._ready_lock:
                    await self._initialize()
            else:
                self._last_error = None
                return self._creds.scrub(self.name, msg)
        raise UpstreamUnavailable(self.name, "upstream session could not be re-established")

    async def _request_once(self, method: str, params: dict[str, Any], opts: CallOptions, era: Era) -> Message:
        rid = self._ids.next()
        sent = adapt_params(era, params, opts)
        key = eras.NAMED_METHODS.get(method)
        name = sent.get(key) if key else None
        h = self._headers(method, name if isinstance(name, str) else None, era, opts.caller)
        if era == "modern" and opts.extra_headers:
            h.update(opts.extra_headers)
        if opts.trace_headers:
            h.update(opts.trace_headers)
        body = jsonrpc.dumps(jsonrpc.request(rid, method, sent))
        try:
            async with asyncio.timeout(self.cfg.timeout):
                async with await self._head(self._send("POST", h, body), method, rid, era) as resp:
                    if resp.status == 404 and era == "legacy" and self._session_id is not None:
                        await resp.read(self.max_response)
                        raise _SessionLost
                    if resp.status == 401 and opts.caller is not None and opts.caller.bearer is not None:
                        await resp.read(self.max_response)
                        raise _Unauthorized
                    got_any = False
                    async for msg in self._messages(resp):
                        got_any = True
                        if "method" in msg:
                            await self._on_stream_message(msg, opts)
                        elif msg.get("id") == rid:
                            return msg
                    if not got_any:
                        raise UpstreamUnavailable(self.name, f"HTTP status {resp.status} without a JSON-RPC answer")
                    raise UpstreamUnavailable(self.name, "stream ended before the response")
        except TimeoutError as exc:
            self._cancel_later(rid, era)
            raise UpstreamTimeout(self.name, f"no answer to {method} within {self.cfg.timeout}s") from exc
        except asyncio.CancelledError:
            self._cancel_later(rid, era)
            raise
        except H1TooLarge as exc:
            raise UpstreamTooLarge(self.name, self.max_response) from exc
        except H1HeaderError as exc:  # a header value the client supplied cannot be sent (CR/LF, non-Latin-1)
            raise InvalidParams(f"a value for upstream {self.name!r} cannot be sent in an HTTP header") from exc
        except H1Error as exc:
            raise self.unavailable(exc.cause) from exc

    def _cancel_later(self, rid: str, era: Era) -> None:
        if era == "legacy":
            spawn(self._notify_legacy("notifications/cancelled", {"requestId": rid, "reason": "client cancelled"}),
                  name="cancel")

    async def _on_stream_message(self, msg: Message, opts: CallOptions) -> None:
        if "id" not in msg:
            await opts.on_message(self._creds.scrub(self.name, msg))
            return
        spawn(self._answer_server_request(msg, opts), name=f"relay-{self.name}")

    async def _answer_server_request(self, msg: Message, opts: CallOptions) -> None:
        try:
            result = await opts.on_request(msg["method"], msg.get("params") or {})
            reply = jsonrpc.result(msg["id"], result)
        except StileError as exc:
            reply = {"jsonrpc": "2.0", "id": msg["id"], "error": exc.to_error()}
        body = jsonrpc.dumps(reply)
        try:
            async with await self._send("POST", self._headers(era="legacy"), body) as resp:
                await resp.read(self.max_response)
        except H1Error as exc:
            log.warning("upstream %s (%s): could not deliver answer: %s", self.name, self.target, exc.cause)

    async def _listen(self, era: Era) -> None:
        """Keep a stream open for list_changed / resources/updated, reconnecting with backoff."""
        delay = 0.5
        while not self._closed:
            try:
                if era == "modern":
                    await self._listen_modern()
                else:
                    await self._listen_legacy()
                delay = 0.5
            except (H1Error, TimeoutError, ValueError, UpstreamTooLarge) as exc:
                log.debug("upstream %s listener: %s", self.name, exc)
                if isinstance(exc, H1Error):
                    self._last_error = f"{self.target}: {exc.cause}"
            except _NoStream:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _listen_legacy(self) -> None:
        h = self._headers(era="legacy")
        h["Accept"] = "text/event-stream"
        async with await self._send("GET", h) as resp:
            if resp.status in (405, 400, 406):
                raise _NoStream
            self._last_error = None  # reachable again
            if resp.status == 404:
                async with self._ready_lock:
                    await self._initialize()
                return
            async for msg in self._messages(resp):
                if "method" in msg and "id" not in msg:
                    self.on_notification(msg["method"], msg)

    async def _listen_modern(self) -> None:
        wanted = {}
        for cap, key in (("tools", "toolsListChanged"), ("prompts", "promptsListChanged"),
                         ("resources", "resourcesListChanged")):
            if isinstance(self.capabilities.get(cap), dict) and self.capabilities[cap].get("listChanged"):
                wanted[key] = True
        if not wanted:
            raise _NoStream
        params = {"notifications": wanted, **discover_params()}
        body = jsonrpc.dumps(jsonrpc.request(self._ids.next(), "subscriptions/listen", params))
        async with await self._send("POST", self._headers("subscriptions/listen"), body) as resp:
            if resp.status >= 400:
                raise _NoStream
            self._last_error = None  # reachable again
            async for msg in self._messages(resp):
                if "method" in msg and "id" not in msg:
                    self.on_notification(msg["method"], msg)


class _SessionLost(Exception):
    pass


class _Unauthorized(Exception):
    """HTTP 401 to a per-caller token (the caller's identity may refresh it once)."""


class _NoStream(Exception):
    pass
