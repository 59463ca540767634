"""Bus down or owner gone: a continuation that needs another replica gets a retryable ReplicaUnreachable at
once (never a hang); state that is local keeps working without the bus."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from stile.bus.local import LocalBusClient, LocalBusServer
from stile.bus.redis import RedisBus
from stile.bus.rpc import Rpc
from stile.core.mrtr import InputBridge
from stile.frontends.channel import Relay
from stile.wire.errors import InvalidParams, ReplicaUnreachable
from tests.support import free_port

KEY = secrets.token_bytes(32)


async def _pending_state(bridge: InputBridge) -> str:
    """Start a call on `bridge` that asks the client once; its sealed requestState."""

    async def call(ask: Any) -> dict[str, Any]:
        answer = await ask("sampling/createMessage", {"messages": []})
        return {"result": {"content": [{"type": "text", "text": str(answer)}]}}

    first = await bridge.start(call, "tools/call:t", "alice")
    state: str = first["result"]["requestState"]
    return state


async def test_a_resume_for_a_replica_behind_a_dead_redis_fails_at_once() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    owner_bus, other_bus = RedisBus(dead, "a", timeout=0.2), RedisBus(dead, "b", timeout=0.2)
    owner, other = InputBridge(KEY, Rpc(owner_bus)), InputBridge(KEY, Rpc(other_bus))
    state = await _pending_state(owner)
    started = time.monotonic()
    with pytest.raises(ReplicaUnreachable, match="send the original request again"):
        await other.resume({"requestState": state, "inputResponses": {"r1": {}}}, "tools/call:t", "alice")
    assert time.monotonic() - started < 2.0
    done = await owner.resume({"requestState": state, "inputResponses": {"r1": {"ok": 1}}}, "tools/call:t", "alice")
    assert "ok" in done["result"]["content"][0]["text"]  # the owner itself needs no bus
    await owner_bus.aclose()
    await other_bus.aclose()


async def test_a_resume_is_forwarded_to_its_owner_and_refused_once_the_owner_is_gone(tmp_path: Path) -> None:
    server = LocalBusServer(str(tmp_path / "bus.sock"))
    await server.start()
    buses = [LocalBusClient(server.path, r) for r in ("a", "b")]
    for bus in buses:
        await bus.start()
    owner, other = InputBridge(KEY, Rpc(buses[0])), InputBridge(KEY, Rpc(buses[1]))
    try:
        state = await _pending_state(owner)
        with pytest.raises(InvalidParams):  # another principal: refused as unknown, on either replica
            await other.resume({"requestState": state, "inputResponses": {"r1": {}}}, "tools/call:t", "bob")
        done = await other.resume({"requestState": state, "inputResponses": {"r1": {"x": 2}}}, "tools/call:t",
                                  "alice")
        assert "'x': 2" in done["result"]["content"][0]["text"]
        state = await _pending_state(owner)
        await buses[0].aclose()  # the owner dies
        with pytest.raises(ReplicaUnreachable, match="gone"):
            await other.resume({"requestState": state, "inputResponses": {"r1": {}}}, "tools/call:t", "alice")
    finally:
        for bus in buses:
            await bus.aclose()
        await server.close()


async def test_a_relayed_answer_for_an_unreachable_replica_is_a_clear_error() -> None:
    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", "b", timeout=0.2)
    relay = Relay(Rpc(bus))
    with pytest.raises(ReplicaUnreachable):
        await relay.answer({"jsonrpc": "2.0", "id": "stile-a.xyz", "result": {}}, "nonce")
    rid, fut = relay.open("nonce")
    await relay.answer({"jsonrpc": "2.0", "id": rid, "result": {"k": 1}}, "other-session")
    assert not fut.done()  # another session's answer is dropped
    await relay.answer({"jsonrpc": "2.0", "id": rid, "result": {"k": 1}}, "nonce")  # local: no bus needed
    assert fut.result()["result"] == {"k": 1}
    await bus.aclose()
