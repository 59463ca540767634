"""Legacy HTTP+SSE upstream (2024-11-05 transport): GET opens the stream, whose first `endpoint`
event names the URL to POST messages to; every answer comes back on the stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urljoin

import aiohttp

from stile.config.model import UpstreamConfig
from stile.tasks import spawn
from stile.upstreams.base import (
    DEFAULT_OPTIONS,
    CallOptions,
    UpstreamBase,
    adapt_params,
    initialize_params,
)
from stile.upstreams.correlate import Correlator
from stile.wire import jsonrpc, sse
from stile.wire.errors import StileError, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream.sse")


class SseUpstream(UpstreamBase):
    def __init__(self, name: str, cfg: UpstreamConfig) -> None:
        assert cfg.url is not None
        super().__init__(name, cfg)
        self.era = "legacy"
        self.url = cfg.url
        self._http: aiohttp.ClientSession | None = None
        self._endpoint: str | None = None
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
            if self._reader is None or self._reader.done():
                self._reader = spawn(self._read(), name=f"sse-{self.name}")
            try:
                async with asyncio.timeout(self.cfg.connect_timeout):
                    await self._endpoint_seen.wait()
            except TimeoutError as exc:
                raise UpstreamUnavailable(self.name, "no endpoint event on the SSE stream") from exc
            msg = await self._rpc.call("initialize", initialize_params(), timeout=self.cfg.connect_timeout)
            if "result" not in msg:
                raise UpstreamUnavailable(self.name, "initialize failed")
            self.adopt_initialize(msg["result"])
            await self._post(jsonrpc.notification("notifications/initialized", {}))
            self._ready.set()

    async def _read(self) -> None:
        assert self._http is not None
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.connect_timeout)
            async with self._http.get(self.url, headers={"Accept": "text/event-stream", **self.cfg.headers},
                                      timeout=timeout) as resp:
                if resp.status != 200:
                    log.error("upstream %s: SSE GET answered HTTP %s", self.name, resp.status)
                    return
                dec = sse.Decoder()
                async for chunk in resp.content.iter_any():
                    for ev in dec.feed(chunk):
                        self._on_event(ev)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._last_error = f"SSE stream failed ({type(exc).__name__})"
            log.warning("upstream %s: SSE stream failed: %s", self.name, type(exc).__name__)
        finally:
            self._ready.clear()
            self._rpc.fail_all("SSE stream closed")

    def _on_event(self, ev: sse.Event) -> None:
        if ev.event == "endpoint":
            self._endpoint = urljoin(self.url, ev.data.strip())
            self._endpoint_seen.set()
            return
        try:
            msg = jsonrpc.loads(ev.data)
        except ValueError:
            return
        if isinstance(msg, dict):
            self._rpc.dispatch(msg)

    async def _post(self, msg: Message) -> None:
        if self._endpoint is None or self._http is None:
            raise UpstreamUnavailable(self.name, "not connected")
        try:
            async with self._http.post(self._endpoint, data=jsonrpc.dumps(msg),
                                       headers={"Content-Type": "application/json", **self.cfg.headers}) as resp:
                await resp.read()
                if resp.status >= 400:
                    raise UpstreamUnavailable(self.name, f"POST answered HTTP {resp.status}")
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.name, f"connection failed ({type(exc).__name__})") from exc

    async def request(self, method: str, params: dict[str, Any], opts: CallOptions = DEFAULT_OPTIONS) -> Message:
        if not self._ready.is_set():
            await self.start()
        return await self._rpc.call(method, adapt_params("legacy", params, opts), timeout=self.cfg.timeout,
                                    opts=opts)

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
