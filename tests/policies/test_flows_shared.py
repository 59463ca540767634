"""Flow histories across replicas: two `Flows` (two gateway processes) sharing one real Redis bus.

The trifecta read on replica A, fetch on replica B, send on A again is refused; a bus that goes down
degrades to each process's own history (what that process saw still counts) instead of failing calls.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stile.bus import Bus
from stile.bus.redis import RedisBus
from stile.policies.flows import FlowDenied, Flows, FlowsConfig
from stile.policies.flows_shared import bus_key
from tests.policies.test_flows import TRIFECTA, _call, _flows, _ok
from tests.support import free_port

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def buses() -> AsyncIterator[tuple[Bus, Bus]]:
    prefix = f"stile-test-{secrets.token_hex(4)}:"
    a, b = RedisBus(REDIS, "ra", prefix=prefix), RedisBus(REDIS, "rb", prefix=prefix)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def _replica(bus: Bus, **cfg: Any) -> Flows:
    local, _ = _flows(**cfg)
    base: dict[str, Any] = {"labels": {"up.read": ["reads_private"], "up.se*": ["egress"]}, "flows": [TRIFECTA]}
    return Flows(FlowsConfig.model_validate({**base, **cfg}), local.views, bus)


async def test_a_session_whose_calls_land_on_two_replicas_has_one_history(buses: tuple[Bus, Bus]) -> None:
    a, b = _replica(buses[0]), _replica(buses[1])
    await a(_call("read"), _ok)
    await b(_call("fetch"), _ok)
    with pytest.raises(FlowDenied):
        await a(_call("send"), _ok)
    with pytest.raises(FlowDenied):
        await b(_call("send"), _ok)
    await b(_call("send", session="other"), _ok)  # another session's history is its own
    for name in ("read", "fetch"):  # a modern principal (no session) is one history across replicas too
        await (a if name == "read" else b)(_call(name, session=None, agent="m"), _ok)
    with pytest.raises(FlowDenied):
        await a(_call("send", session=None, agent="m"), _ok)


async def test_the_shared_set_is_bounded_and_expires(buses: tuple[Bus, Bus]) -> None:
    a = _replica(buses[0], max_labels=1, window_s=30)
    await a(_call("read"), _ok)
    await a(_call("fetch"), _ok)  # over max_labels: not recorded
    assert await buses[1].set_members(bus_key(("session", "vs", "s1"))) == {"reads_private"}


async def test_a_dead_bus_degrades_to_this_processes_history_and_fails_no_call() -> None:
    dead = RedisBus(f"redis://127.0.0.1:{free_port()}/0", "rd", prefix="stile-test-dead:")  # nothing listens
    await dead.start()
    try:
        flows = _replica(dead)
        await flows(_call("read"), _ok)
        await flows(_call("fetch"), _ok)
        assert flows.shared is not None and flows.shared.degraded
        with pytest.raises(FlowDenied):  # what this process saw still counts
            await flows(_call("send"), _ok)
    finally:
        await dead.aclose()
