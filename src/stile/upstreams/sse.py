"""Legacy HTTP+SSE upstream (2024-11-05 transport): GET opens the stream, whose first `endpoint`
event names the URL to POST messages to; every answer comes back on the stream.

The endpoint must be on the configured URL's origin (scheme, host, port; relative URLs resolve against
it): the POSTs carry the upstream's configured headers (often a secret), so an upstream naming another
host fails with a clear error and nothing is sent there. An SSE event over `max_response` bytes closes
the stream (pending calls fail naming the limit); the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from stile.config.model import UpstreamConfig
from stile.tasks import spawn
from stile.upstreams.base import (
    DEFAULT_MAX_RESPONSE,
    DEFAULT_OPTIONS,
    CallOptions,
    UpstreamBase,
    adapt_params,
    initialize_params,
)
from stile.upstreams.causes import os_cause
from stile.upstreams.correlate import Correlator
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.wire import jsonrpc, sse
from stile.wire.errors import StileError, UpstreamTooLarge, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream.sse")


class SseUpstream(UpstreamBase):
    def __init__(self, name: str, cfg: UpstreamConfig, max_response: int = DEFAULT_MAX_RESPONSE,
                 credentials: Credentials = NO_CREDENTIALS) -> None:
        assert cfg.url is not None
        super().__init__(name, cfg, max_response)
        self._creds = credentials
        self.era = "legacy"
        self.url = cfg.url
        self._http: aiohttp.ClientSession | None = None
        self._endpoint: str | None = None
        self._endpoint_error: str | None = None  # the stream named an endpoint on another origin
        self._stream_cause: str | None = None  # why the last stream ended before its endpoint event
        self._rpc = Correlator(name, self._post, lambda: self.on_notification, "e")
        self._ready = asyncio.Event()
        self._endpoint_seen = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()

    @property
    def healthy(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        async with self._start_lock:
            if self._ready.is_set():
                return
            if self._http is None:
                self._http = aiohttp.ClientSession()
            self._endpoint_seen.clear()
            self._endpoint_error = None
            self._stream_cause = None
            if self._reader is None or self._reader.done():
                self._reader = spawn(self._read(), name=f"sse-{self.name}")
            try:
                async with asyncio.timeout(self.cfg.connect_timeout):
                    await self._endpoint_seen.wait()
            except TimeoutError as exc:
                raise self.unavailable(f"no endpoint event on the SSE stream within {self.cfg.connect_timeout:g}s"
                                       ) from exc
            if self._endpoint_error is not None:
                raise self.unavailable(self._endpoint_error)
            if self._endpoint is None:
                raise self.unavailable(self._stream_cause or "SSE stream closed before its endpoint event")
            msg = await self._rpc.call("initialize", initialize_params(), timeout=self.cfg.connect_timeout)
            if "result" not in msg:
                raise self.unavailable(f"initialize failed: {(msg.get('error') or {}).get('message', 'no result')}")
            self.adopt_initialize(msg["result"])
            await self._post(jsonrpc.notification("notifications/initialized", {}))
            self._ready.set()

    async def _read(self) -> None:
        assert self._http is not None
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.connect_timeout)
            async with self._http.get(self.url, headers={"Accept": "text/event-stream",
                                                                **self._creds.headers(self.name, self.cfg.headers)},
                                      timeout=timeout) as resp:
                if resp.status != 200:
                    self._stream_cause = f"SSE GET answered HTTP status {resp.status}"
                    self._last_error = f"{self.target}: {self._stream_cause}"
                    log.error("upstream %s: %s", self.name, self._last_error)
                    return
                dec = sse.Decoder(self.max_response)
                async for chunk in resp.content.iter_any():
                    for ev in dec.feed(chunk):
                        self._on_event(ev)
                        if self._endpoint_error is not None:
                            log.error("upstream %s: %s", self.name, self._endpoint_error)
                            self._last_error = self._endpoint_error
                            return
        except sse.EventTooLarge:
            why = UpstreamTooLarge(self.name, self.max_response, "SSE event").message
            self._last_error = why
            log.error("%s; closing the stream", why)
            self._rpc.fail_all(why.split(": ", 1)[1])
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._stream_cause = _client_cause(exc, self.cfg.connect_timeout)
            self._last_error = f"{self.target}: {self._stream_cause}"
            log.warning("upstream %s: SSE stream failed: %s", self.name, self._last_error)
        finally:
            self._ready.clear()
            self._endpoint = None
            self._endpoint_seen.set()  # a start() waiting for the endpoint learns now that there is none
            self._rpc.fail_all("SSE stream closed")

    def _on_event(self, ev: sse.Event) -> None:
        if ev.event == "endpoint":
            endpoint = urljoin(self.url, ev.data.strip())
            if _origin(endpoint) != _origin(self.url):
                self._endpoint = None
                self._endpoint_error = (f"the SSE stream named an endpoint on another origin ({_origin(endpoint)}, "
                                        f"not {_origin(self.url)}); refusing to POST there")
            else:
                self._endpoint = endpoint
            self._endpoint_seen.set()
            return
        try:
            msg = jsonrpc.loads(ev.data)
        except ValueError:
            return
        if isinstance(msg, dict):
            self._rpc.dispatch(self._creds.scrub(self.name, msg))  # answers, progress, requests, notifications

    async def _post(self, msg: Message) -> None:
        if self._endpoint is None or self._http is None:
            raise UpstreamUnavailable(self.name, "not connected")
        try:
            async with self._http.post(self._endpoint, data=jsonrpc.dumps(msg),
                                       headers={"Content-Type": "application/json",
                                                **self._creds.headers(self.name, self.cfg.headers)}) as resp:
                size = 0
                while size <= self.max_response and (chunk := await resp.content.readany()):
                    size += len(chunk)  # drained, not kept (an answer comes on the stream)
                if resp.status >= 400:
                    raise self.unavailable(f"POST answered HTTP status {resp.status}")
        except aiohttp.ClientError as exc:
            raise self.unavailable(_client_cause(exc, self.cfg.connect_timeout)) from exc

    async def request(self, method: str, params: dict[str, Any], opts: CallOptions = DEFAULT_OPTIONS) -> Message:
        if not self._ready.is_set():
            await self.start()
        return await self._rpc.call(method, adapt_params("legacy", params, opts), timeout=self.cfg.timeout,
                                    opts=opts)  # scrubbed as it arrived (every inbound message is)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        with contextlib.suppress(StileError):
            await self._post(jsonrpc.notification(method, params))

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._http is not None:
            await self._http.close()


def _origin(url: str) -> str:
    """scheme://host:port of `url` (default port filled in, host lower-cased) or "" when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
    except ValueError:  # an invalid port
        return ""
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}:{port}" if host and parts.scheme else ""


def _client_cause(exc: BaseException, connect_timeout: float) -> str:
    """An aiohttp failure in words (the OS error under a connector error: refused, DNS, TLS...)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return os_cause(exc.os_error)
    if isinstance(exc, TimeoutError):
        return f"timeout after {connect_timeout:g}s"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP status {exc.status}"
    return str(exc) or type(exc).__name__
