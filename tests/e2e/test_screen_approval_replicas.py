"""An admin approval of a quarantined definition reaches every replica sharing the bus (here a host's Unix
bus, as `--workers` runs it): approved through replica A's admin API, the tool appears on replica B, in
both eras, without a restart or a config change."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from tests.e2e.test_cluster_local import BusThread
from tests.e2e.test_screens import ADMIN_KEY, KEY, Env, _admin, client, gateway_config, poison_upstream
from tests.support import stile_server


async def _names(env: Env, era: str) -> list[str]:
    async with client(env, "quar_m", era) as c:
        return list(await c.names())


async def test_an_approval_on_one_replica_releases_the_definition_on_the_other(tmp_path: Path) -> None:
    sock = tmp_path / "bus.sock"
    with ExitStack() as stack:
        url = stack.enter_context(poison_upstream())
        stack.enter_context(BusThread(sock))
        envs = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            base = stack.enter_context(stile_server(gateway_config(url, tmp_path / name), env={
                "STILE_BUS_URL": f"unix://{sock}", "STILE_REPLICA_ID": f"replica-{name}"}))
            envs.append(Env(base, url))
        a, b = envs
        for env in envs:
            for era in ("modern", "legacy"):
                assert "add" not in await _names(env, era)
        async with client(b, "quar_m", "legacy") as listener, aiohttp.ClientSession() as http:
            stream = await http.get(f"{b.base}/mcp/quar_m", headers={  # replica B's GET stream: list_changed
                "Accept": "text/event-stream", "Mcp-Session-Id": str(listener.session),
                "MCP-Protocol-Version": "2025-11-25", "X-API-Key": KEY})
            assert stream.status == 200
            status, body = await _admin(http, a.base, "GET", "quarantined", ADMIN_KEY)
            digest = next(q["digest"] for q in body["quarantined"] if q["ref"].endswith(".add"))
            status, body = await _admin(http, a.base, "POST", f"approve?digest={digest}", ADMIN_KEY)
            assert status == 200 and body["replicas"] == 1, body
            async with asyncio.timeout(20):  # the cast reaches replica B, which tells its clients
                async for line in stream.content:
                    if b"notifications/tools/list_changed" in line:
                        break
            stream.close()
        names = await _names(b, "modern")
        assert "add" in names and "lookup" not in names, names
        assert "add" in await _names(b, "legacy")
