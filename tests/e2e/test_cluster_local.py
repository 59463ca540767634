"""Two gateway processes on one host sharing a `LocalBusServer` (Unix socket, no Redis) behind HAProxy:
the same cross-process flows as the Redis deployment (the workers supervisor runs this bus for
`--workers N`; here the test runs it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stile.bus.local import LocalBusServer
from tests.e2e import cluster_flows as flows
from tests.e2e.cluster import Deployment, deployment
from tests.e2e.cluster_fixtures import cluster_config, create_key, pg_state, revoke_key, upstreams


class BusThread:
    """A LocalBusServer on its own event loop in a thread (the gateways are other processes)."""

    def __init__(self, path: Path) -> None:
        self.server = LocalBusServer(str(path))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> BusThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("cluster-local")
    sock = tmp / "bus.sock"
    with upstreams() as ups, BusThread(sock), \
            deployment(cluster_config(ups), tmp, replicas=2, state=pg_state(),
                       env={"STILE_BUS_URL": f"unix://{sock}"}) as d:
        yield d


async def test_a_legacy_sdk_client_uses_every_feature_across_processes(dep: Deployment) -> None:
    await flows.legacy_client_flows(dep)


async def test_a_modern_client_answers_input_required_across_processes(dep: Deployment) -> None:
    await flows.modern_input_required(dep)


async def test_a_request_state_is_refused_to_another_principal(dep: Deployment) -> None:
    _, alice = await asyncio.to_thread(create_key, dep.state, "alice")
    _, bob = await asyncio.to_thread(create_key, dep.state, "bob")
    await flows.request_state_is_bound_to_its_principal(dep, alice, bob)


async def test_list_changed_and_resource_updates_cross_processes(dep: Deployment) -> None:
    await flows.legacy_list_changed_and_subscriptions(dep)


async def test_list_changed_reaches_a_modern_listen_stream(dep: Deployment) -> None:
    await flows.modern_listen_list_changed(dep)


async def test_a_legacy_cancel_reaches_the_other_process(dep: Deployment) -> None:
    await flows.legacy_cancel_on_another_replica(dep)


async def test_delete_ends_a_session_in_every_process_at_once(dep: Deployment) -> None:
    await flows.delete_ends_the_session_on_every_replica(dep)


async def test_a_revoked_key_is_refused_by_every_process(dep: Deployment) -> None:
    name, key = await asyncio.to_thread(create_key, dep.state, "carol")
    await flows.revoked_key_is_refused_everywhere(dep, key, lambda: revoke_key(dep.configs[0], name, dep.env))


async def test_the_active_sessions_gauge_counts_both_processes(dep: Deployment) -> None:
    await flows.active_sessions_are_counted_across_replicas(dep)
