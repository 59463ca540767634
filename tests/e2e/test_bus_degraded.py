"""Redis down: a replica keeps serving what it holds itself, says so in /readyz and `stile_bus_up`, and
reconnects when Redis is back (a TCP forwarder in front of the real Redis is the switch)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator

import httpx2
import pytest

from tests.e2e.cluster import metric
from tests.e2e.helpers import LEGACY_HEADERS, initialize_body
from tests.support import free_port, notes_upstream, stile_server


class Forwarder:
    """127.0.0.1:`port` -> Redis, started and stopped on demand (its own event loop thread)."""

    def __init__(self, port: int, target: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.port, self.target = port, target
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self) -> None:
        async def go() -> None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout=10)

    def stop(self) -> None:
        async def go() -> None:
            if self.server is not None:
                self.server.close()
                self.server = None
            for writer in self.writers:
                writer.close()
            self.writers.clear()
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout=10)


@pytest.fixture
def forwarder() -> Iterator[Forwarder]:
    fwd = Forwarder(free_port())
    yield fwd
    fwd.stop()
    fwd.loop.call_soon_threadsafe(fwd.loop.stop)


async def _ready(http: httpx2.AsyncClient, base: str, want_up: bool, deadline: float = 15.0) -> dict[str, object]:
    async with asyncio.timeout(deadline):
        while True:
            resp = await http.get(f"{base}/readyz")
            body: dict[str, object] = resp.json()
            bus = body.get("bus")
            if isinstance(bus, dict) and bus.get("up") is want_up:
                assert resp.status_code == 200, body  # degraded, still serving
                return body
            await asyncio.sleep(0.1)


async def test_redis_down_is_degraded_not_dead_and_redis_back_is_ready(forwarder: Forwarder) -> None:
    with notes_upstream() as notes:
        config = {"upstreams": {"notes": {"url": notes}}, "virtual_servers": {"v": {"auth": "none"}},
                  "redis": f"redis://127.0.0.1:{forwarder.port}/0", "redis_prefix": f"t-{secrets.token_hex(4)}:"}
        with stile_server(config, env={"STILE_REPLICA_ID": "solo"}) as base:
            async with httpx2.AsyncClient(timeout=10) as http:
                body = await _ready(http, base, want_up=False)
                assert body["status"] == "degraded" and body["bus"] == {"kind": "redis", "replica": "solo", "up": False}
                assert await metric(http, base, "stile_bus_up") == 0.0
                resp = await http.post(f"{base}/mcp/v", json=initialize_body(), headers=LEGACY_HEADERS)
                assert resp.status_code == 200  # local state needs no bus
                forwarder.start()
                body = await _ready(http, base, want_up=True)
                assert body["status"] == "ready"
                assert await metric(http, base, "stile_bus_up") == 1.0
                forwarder.stop()
                await _ready(http, base, want_up=False)
