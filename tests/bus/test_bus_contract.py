"""Every Bus implementation keeps one contract: messages to one replica or all, claims, sets, marks; and a
dead bus fails within its deadline, then comes back. Real Unix sockets and the real Redis (unique prefix)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stile.bus import Bus, BusUnavailable, Message, open_bus
from stile.bus.local import LocalBusClient, LocalBusServer
from stile.bus.memory import InProcessBus
from stile.bus.redis import RedisBus
from stile.bus.rpc import ReplicaGone, Rpc
from tests.support import free_port

REDIS = "redis://127.0.0.1:6379/0"
Pair = tuple[Bus, Bus]


class Inbox:
    def __init__(self) -> None:
        self.got: list[Message] = []
        self.changed = asyncio.Event()

    def __call__(self, msg: Message) -> None:
        self.got.append(msg)
        self.changed.set()

    async def wait_for(self, n: int, deadline: float = 5.0) -> list[Message]:
        async with asyncio.timeout(deadline):
            while len(self.got) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.got


async def until(condition: Callable[[], bool], deadline: float = 5.0) -> None:
    """The client reconnects on its own schedule: check its state until `condition` or the deadline."""
    async with asyncio.timeout(deadline):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def unix_path(tmp_path: Path) -> AsyncIterator[str]:
    yield str(tmp_path / "bus.sock")


async def _pair(kind: str, path: str) -> tuple[Pair, Callable[[], Awaitable[None]]]:
    if kind == "unix":
        server = LocalBusServer(path)
        await server.start()
        a: Bus = LocalBusClient(path, "a")
        b: Bus = LocalBusClient(path, "b")

        async def close() -> None:
            await server.close()
    else:
        prefix = f"stile-test-{secrets.token_hex(4)}:"
        a, b = RedisBus(REDIS, "a", prefix=prefix), RedisBus(REDIS, "b", prefix=prefix)

        async def close() -> None:
            return None
    await a.start()
    await b.start()
    assert a.up and b.up
    return (a, b), close


@pytest.mark.parametrize("kind", ["unix", "redis"])
async def test_messages_reach_one_replica_or_every_replica(kind: str, unix_path: str) -> None:
    (a, b), close = await _pair(kind, unix_path)
    inbox_a, inbox_b = Inbox(), Inbox()
    a.listen(inbox_a)
    b.listen(inbox_b)
    try:
        assert await a.send("b", {"x": 1}) == 1
        assert await a.send("nobody", {"x": 2}) == 0
        assert await b.send(None, {"x": 3}) == 2
        assert [m["x"] for m in await inbox_b.wait_for(2)] == [1, 3]
        assert [m["x"] for m in await inbox_a.wait_for(1)] == [3]
        assert await a.claim("k", 5.0) is True
        assert await b.claim("k", 5.0) is False
        await a.set_update("s", "u1", True, 60)
        await b.set_update("s", "u2", True, 60)
        await a.set_update("s", "u1", False, 60)
        assert await b.set_members("s") == {"u2"}
        assert await a.mark("m", ["n1", "n2"], [], 60) == 2
        assert await b.mark("m", ["n3"], ["n1"], 60) == 2
        assert await b.mark("m", ["short"], [], 0.05) == 3
    finally:
        await a.aclose()
        await b.aclose()
        await close()


async def test_the_in_process_bus_reaches_only_itself() -> None:
    bus = InProcessBus("solo")
    inbox = Inbox()
    bus.listen(inbox)
    assert bus.shared is False and bus.up
    assert await bus.send("other", {"x": 1}) == 0
    assert await bus.send(None, {"x": 2}) == 1
    assert [m["x"] for m in await inbox.wait_for(1)] == [2]


async def test_a_dead_redis_fails_within_the_deadline_and_is_reported_down() -> None:
    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", "a", prefix="x:", timeout=0.2)
    started = time.monotonic()
    await bus.start()
    try:
        assert not bus.up
        with pytest.raises(BusUnavailable):
            await bus.send(None, {"x": 1})
        with pytest.raises(BusUnavailable):
            await bus.claim("k", 1)
        assert time.monotonic() - started < 3.0
    finally:
        await bus.aclose()


async def test_a_local_bus_client_reconnects_when_the_server_comes_back(unix_path: str) -> None:
    server = LocalBusServer(unix_path)
    await server.start()
    client = LocalBusClient(unix_path, "a", timeout=0.5, retry_seconds=0.05)
    await client.start()
    assert client.up
    await server.close()
    await until(lambda: not client.up)
    with pytest.raises(BusUnavailable):
        await client.send(None, {"x": 1})
    server = LocalBusServer(unix_path)
    await server.start()
    try:
        await until(lambda: client.up)
        assert await client.send("a", {"x": 1}) == 1
    finally:
        await client.aclose()
        await server.close()


async def test_rpc_calls_answer_within_the_deadline_and_a_missing_replica_is_gone_at_once(unix_path: str) -> None:
    (a, b), close = await _pair("unix", unix_path)
    ra, rb = Rpc(a), Rpc(b)

    async def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return {"echo": payload["v"], "by": rb.replica}

    async def never(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    rb.on_call("echo", echo)
    rb.on_call("never", never)
    try:
        assert await ra.call("b", "echo", {"v": 7}, timeout=2) == {"echo": 7, "by": "b"}
        with pytest.raises(ReplicaGone):
            await ra.call("c", "echo", {"v": 7}, timeout=2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await ra.call("b", "never", {}, timeout=0.2)
        assert time.monotonic() - started < 1.0
    finally:
        await a.aclose()
        await b.aclose()
        await close()


def test_the_bus_is_chosen_env_first_then_config_then_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STILE_BUS_URL", raising=False)
    monkeypatch.setenv("STILE_REPLICA_ID", "web-1")
    assert isinstance(open_bus(None), InProcessBus)
    assert open_bus(None).replica == "web-1"
    assert isinstance(open_bus(REDIS), RedisBus)
    monkeypatch.setenv("STILE_BUS_URL", "unix:///tmp/x.sock")
    assert isinstance(open_bus(REDIS), LocalBusClient)
    monkeypatch.setenv("STILE_BUS_URL", "unix://relative.sock")
    with pytest.raises(ValueError, match="absolute"):
        open_bus(None)
    monkeypatch.setenv("STILE_BUS_URL", "http://x")
    with pytest.raises(ValueError, match="expected"):
        open_bus(None)
    monkeypatch.delenv("STILE_BUS_URL")
    monkeypatch.setenv("STILE_REPLICA_ID", "bad id!")
    with pytest.raises(ValueError, match="STILE_REPLICA_ID"):
        open_bus(None)


async def test_a_second_process_with_the_same_replica_id_is_kept_off_the_local_bus(unix_path: str) -> None:
    server = LocalBusServer(unix_path)
    await server.start()
    first = LocalBusClient(unix_path, "w1", timeout=0.3, retry_seconds=0.05)
    twin = LocalBusClient(unix_path, "w1", timeout=0.3, retry_seconds=0.05)
    try:
        await first.start()
        await twin.start()
        assert first.up and not twin.up
        await first.aclose()
        await until(lambda: twin.up)  # the id is free again
    finally:
        await twin.aclose()
        await server.close()
