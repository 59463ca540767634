"""Three replicas behind HAProxy (round robin, no stickiness) with one Redis (a prefix of their own) and one
PostgreSQL: every MCP feature works whichever replica each request lands on; SIGKILL of one replica under
load costs only its in-flight calls (a retryable 502), and every acknowledged call is in some audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.e2e import cluster_flows as flows
from tests.e2e.cluster import Deployment, deployment
from tests.e2e.cluster_fixtures import cluster_config, create_key, pg_state, revoke_key, upstreams
from tests.e2e.helpers import modern_headers, modern_meta
from tests.support import stop

REPLICAS = 3


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("cluster-redis")
    with upstreams() as ups:
        config = {**cluster_config(ups), "redis": "redis://127.0.0.1:6379/0",
                  "redis_prefix": f"stile-test-{secrets.token_hex(4)}:"}
        with deployment(config, tmp, replicas=REPLICAS, state=pg_state(), env={}) as d:
            yield d


async def test_a_legacy_sdk_client_uses_every_feature_across_replicas(dep: Deployment) -> None:
    await flows.legacy_client_flows(dep)


async def test_a_modern_client_answers_input_required_whichever_replica_holds_the_call(dep: Deployment) -> None:
    await flows.modern_input_required(dep)


async def test_a_request_state_is_refused_to_another_principal_on_every_replica(dep: Deployment) -> None:
    _, alice = await asyncio.to_thread(create_key, dep.state, "alice")
    _, bob = await asyncio.to_thread(create_key, dep.state, "bob")
    await flows.request_state_is_bound_to_its_principal(dep, alice, bob)


async def test_list_changed_and_resource_updates_reach_a_get_stream_on_another_replica(dep: Deployment) -> None:
    await flows.legacy_list_changed_and_subscriptions(dep)


async def test_list_changed_reaches_a_modern_listen_stream(dep: Deployment) -> None:
    await flows.modern_listen_list_changed(dep)


async def test_a_legacy_cancel_landing_on_another_replica_stops_the_call(dep: Deployment) -> None:
    await flows.legacy_cancel_on_another_replica(dep)


async def test_delete_ends_a_session_on_every_replica_at_once(dep: Deployment) -> None:
    await flows.delete_ends_the_session_on_every_replica(dep)


async def test_another_principal_cannot_delete_a_session(dep: Deployment) -> None:
    _, alice = await asyncio.to_thread(create_key, dep.state, "alice")
    _, bob = await asyncio.to_thread(create_key, dep.state, "bob")
    await flows.a_session_cannot_be_deleted_by_another_principal(dep, alice, bob)


async def test_a_revoked_key_is_refused_by_every_replica(dep: Deployment) -> None:
    name, key = await asyncio.to_thread(create_key, dep.state, "carol")
    await flows.revoked_key_is_refused_everywhere(dep, key, lambda: revoke_key(dep.configs[0], name, dep.env))


async def test_the_active_sessions_gauge_counts_every_replicas_sessions(dep: Deployment) -> None:
    await flows.active_sessions_are_counted_across_replicas(dep)


# --- SIGKILL one replica under load (last: it restarts the victim) ----------------------------------------

CLIENTS = 12
KILL_AFTER = 300  # acknowledged calls before the kill
AFTER_KILL = 300  # acknowledged calls the survivors must serve after it


def _answered(body: bytes) -> bool:
    for chunk in [body, *(line[5:] for line in body.splitlines() if line.startswith(b"data:"))]:
        with contextlib.suppress(orjson.JSONDecodeError):
            message = orjson.loads(chunk)
            if isinstance(message, dict) and "result" in message and not message["result"].get("isError"):
                return True
    return False


async def _load(dep: Deployment, victim: int) -> tuple[set[str], list[Any], int]:
    acked: set[str] = set()
    failures: list[Any] = []
    killed_at: list[int] = []
    headers = modern_headers("tools/call", "notes__add_note")
    done = asyncio.Event()

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        for i in range(1_000_000):
            if done.is_set():
                return
            title = f"k{n}-{i}"
            body = orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                 "params": {"name": "notes__add_note", "arguments": {"title": title, "text": "x"},
                                            "_meta": modern_meta()}})
            try:
                async with http.post(f"{dep.lb}/mcp/open", data=body, headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
            except aiohttp.ClientError as exc:
                failures.append(type(exc).__name__)  # the connection died with the replica: retryable
                continue
            if status in (502, 503, 504):
                failures.append(status)  # HAProxy: the replica died mid-call; retryable
                continue
            assert status == 200, raw[:300]
            if _answered(raw):
                acked.add(title)
            else:
                failures.append(raw[:200])
            if not killed_at and len(acked) >= KILL_AFTER:
                killed_at.append(len(acked))
                dep.procs[victim].send_signal(signal.SIGKILL)
            if killed_at and len(acked) >= killed_at[0] + AFTER_KILL:
                done.set()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as http:
        async with asyncio.timeout(120):
            await asyncio.gather(*(client(n, http) for n in range(CLIENTS)))
    return acked, failures, killed_at[0]


def _titles(path: Path) -> set[str]:
    if not path.exists():
        return set()
    events = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    args = [e.get("arguments") for e in events if e.get("method") == "tools/call"]
    return {a["title"] for a in args if isinstance(a, dict) and isinstance(a.get("title"), str)}


def test_sigkill_of_one_replica_under_load_loses_no_acknowledged_call(dep: Deployment) -> None:
    victim = 1
    acked, failures, killed_at = asyncio.run(_load(dep, victim))
    assert dep.procs[victim].wait(timeout=30) == -signal.SIGKILL
    assert len(acked) >= killed_at + AFTER_KILL  # the survivors kept serving
    assert all(f in (502, 503, 504) or isinstance(f, str) for f in failures), failures[:5]
    assert len(failures) <= CLIENTS * 2, failures  # only what was in flight on the victim (and its reconnects)
    dep.start(victim)  # its write-ahead log replays what it had acknowledged
    for proc in dep.procs:
        stop(proc)  # graceful: every queued event is written
    trail: set[str] = set()
    for path in dep.trails:
        trail |= _titles(path)
    print(f"SIGKILL under load: {len(acked)} acknowledged ({killed_at} before the kill), "
          f"{len(failures)} failed in flight: {sorted({str(f) for f in failures})}")
    missing = acked - trail
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged calls are in no trail: {sorted(missing)[:5]}"
