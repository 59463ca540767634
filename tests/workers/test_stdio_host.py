"""The supervisor's stdio host: one real process shared by several workers' connections over a Unix socket.

Each `HostedStdioUpstream` stands for one worker. Real parts: the stdio fixture is an official-SDK server
(tests/fixtures/pid_stdio.py), the host and the workers talk over a real Unix socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from stile.config.model import UpstreamConfig
from stile.upstreams.base import CallOptions
from stile.upstreams.hosted import HostedStdioUpstream
from stile.wire import jsonrpc
from stile.wire.errors import MethodNotFound, UpstreamUnavailable
from stile.workers.stdio_host import MAX_IN_FLIGHT, StdioHost
from tests.support import REPO
from tests.workers.polling import eventually

CMD = [sys.executable, "-m", "tests.fixtures.pid_stdio"]


@dataclass
class Hosted:
    host: StdioHost
    pids: Path
    workers: list[HostedStdioUpstream]


@pytest.fixture
async def hosted(tmp_path: Path) -> AsyncIterator[Hosted]:
    pids = tmp_path / "pids"
    # legacy: the SDK's stdio server sends server->client requests (sampling) only in a legacy session
    cfg = UpstreamConfig(command=CMD, cwd=str(REPO), env={"PIDS_FILE": str(pids)}, timeout=20, era="legacy")
    host = StdioHost("pids", cfg, tmp_path / "pids.sock", 1 << 20)
    await host.start()
    workers = [HostedStdioUpstream("pids", cfg, str(tmp_path / "pids.sock"), 1 << 20) for _ in range(2)]
    try:
        async with asyncio.timeout(30):
            for w in workers:
                await w.start()
        yield Hosted(host, pids, workers)
    finally:
        for w in workers:
            await w.aclose()
        await host.aclose()


def call(name: str, arguments: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments or {}}
    if meta is not None:
        params["_meta"] = meta
    return params


def text(reply: dict[str, Any]) -> str:
    assert "result" in reply, reply
    out: str = reply["result"]["content"][0]["text"]
    return out


def in_flight(hosted: Hosted) -> int:
    return sum(len(c.calls) for c in hosted.host._connections.values())


def started_pids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_two_workers_share_one_process_and_its_surface(hosted: Hosted) -> None:
    a, b = hosted.workers
    assert a.healthy and b.healthy
    assert a.era == b.era == hosted.host.upstream.era
    assert a.server_info.get("name") == "pids"
    replies = await asyncio.gather(*(w.request("tools/call", call("whoami")) for w in (a, b) for _ in range(5)))
    assert {text(r) for r in replies} == set(started_pids(hosted.pids))
    assert len(started_pids(hosted.pids)) == 1
    listed = await b.request("tools/list", {})
    assert {"whoami", "count_slowly", "ask_llm", "pause"} <= {t["name"] for t in listed["result"]["tools"]}


async def test_the_socket_is_for_this_user_only(hosted: Hosted) -> None:
    assert stat.S_IMODE(os.stat(hosted.host.path).st_mode) == 0o600


async def test_progress_goes_to_the_caller_with_its_own_token_even_when_both_workers_use_the_same(
    hosted: Hosted,
) -> None:
    a, b = hosted.workers
    seen: dict[str, list[Any]] = {"a": [], "b": []}

    def collector(key: str) -> CallOptions:
        async def on_message(msg: dict[str, Any]) -> None:
            seen[key].append(msg["params"]["progressToken"])
        return CallOptions(on_message=on_message, progress_token="stile-1")  # both workers count from 1

    meta = {"progressToken": "stile-1"}
    ra, rb = await asyncio.gather(a.request("tools/call", call("count_slowly", {"steps": 3}, meta), collector("a")),
                                  b.request("tools/call", call("count_slowly", {"steps": 5}, meta), collector("b")))
    assert text(ra) == "counted 3" and text(rb) == "counted 5"
    assert seen == {"a": ["stile-1"] * 3, "b": ["stile-1"] * 5}


async def test_a_server_to_client_request_is_answered_by_the_worker_whose_call_is_in_flight(hosted: Hosted) -> None:
    """The other worker is connected too; the request goes to the connection of the call that caused it.
    (As in one process, stdio cannot relate such a request to a call when several calls are in flight.)"""
    a, b = hosted.workers
    asked: list[str] = []

    async def answer(method: str, params: dict[str, Any]) -> dict[str, Any]:
        asked.append(method)
        return {"role": "assistant", "model": "test", "content": {"type": "text", "text": "forty-two"}}

    reply = await a.request("tools/call", call("ask_llm", {"prompt": "?"}), CallOptions(on_request=answer))
    assert text(reply) == "llm said: forty-two"
    assert asked == ["sampling/createMessage"]
    assert text(await b.request("tools/call", call("whoami"))) == started_pids(hosted.pids)[0]


async def test_a_client_error_answer_reaches_the_process_as_an_error(hosted: Hosted) -> None:
    a, _ = hosted.workers

    async def refuse(method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise MethodNotFound("the client does not support sampling")

    reply = await a.request("tools/call", call("ask_llm", {"prompt": "?"}), CallOptions(on_request=refuse))
    assert "does not support sampling" in orjson.dumps(reply).decode(), reply  # the SDK's error, with the message


async def test_a_cancelled_call_frees_the_connection_for_the_next(hosted: Hosted) -> None:
    a, _ = hosted.workers
    task = asyncio.create_task(a.request("tools/call", call("pause", {"seconds": 30})))
    await eventually(lambda: in_flight(hosted) > 0, "the call reached the host", 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: in_flight(hosted) == 0, "the host let go of the cancelled call", 10)
    assert text(await a.request("tools/call", call("whoami"))) == started_pids(hosted.pids)[0]


async def test_a_killed_process_is_restarted_once_for_all_workers(hosted: Hosted) -> None:
    a, b = hosted.workers
    first = started_pids(hosted.pids)
    os.killpg(int(first[0]), signal.SIGKILL)
    await eventually(lambda: len(started_pids(hosted.pids)) == 2 and hosted.host.upstream.healthy, "restarted", 30)
    replies = [await w.request("tools/call", call("whoami")) for w in (a, b)]
    pids = started_pids(hosted.pids)
    assert len(pids) == 2
    assert {text(r) for r in replies} == {pids[1]}


async def test_a_worker_that_goes_away_fails_its_calls_and_reconnects(hosted: Hosted) -> None:
    a, _ = hosted.workers
    task = asyncio.create_task(a.request("tools/call", call("pause", {"seconds": 30})))
    await eventually(lambda: in_flight(hosted) > 0, "the call reached the host", 10)
    for conn in list(hosted.host._connections.values()):
        conn.writer.close()  # the host side drops every connection
    with pytest.raises(UpstreamUnavailable):
        await task
    assert text(await a.request("tools/call", call("whoami"))) == started_pids(hosted.pids)[0]


async def raw_exchange(path: Path, lines: list[bytes], want: int) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=4 << 20)
    try:
        for line in lines:
            writer.write(line)
        await writer.drain()
        got = []
        async with asyncio.timeout(15):
            while len(got) < want:
                frame = orjson.loads(await reader.readuntil(b"\n"))
                if frame.get("op") == "reply":
                    got.append(frame)
        return got
    finally:
        writer.close()


async def test_garbage_and_malformed_frames_get_errors_not_a_dead_host(hosted: Hosted) -> None:
    lines = [b"not json\n", b"[1,2]\n", b'{"op": "warp"}\n', b'{"op": "call", "id": "x"}\n',
             b'{"op": "call", "id": 1, "method": 7, "params": {}}\n',
             b'{"op": "call", "id": 2, "method": "tools/call", "params": [], "opts": 5}\n',
             b'{"op": "call", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}},'
             b' "opts": {"client_caps": 1, "log_level": [], "client_era": "future"}}\n']
    replies = {r["id"]: r for r in await raw_exchange(hosted.host.path, lines, 3)}
    assert "malformed" in replies[1]["error"]["cause"] and "malformed" in replies[2]["error"]["cause"]
    assert replies[3]["message"]["result"]["content"][0]["text"] == started_pids(hosted.pids)[0]
    a, _ = hosted.workers
    assert text(await a.request("tools/call", call("whoami"))) == started_pids(hosted.pids)[0]


async def test_a_frame_over_the_limit_closes_only_that_connection(hosted: Hosted) -> None:
    reader, writer = await asyncio.open_unix_connection(str(hosted.host.path))
    writer.write(b'{"op": "notify", "method": "x", "params": {"pad": "' + b"x" * (2 << 20) + b'"}}\n')
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(15):
            await writer.drain()
            while True:
                await reader.readuntil(b"\n")  # the state frame, then end of stream
    writer.close()
    a, _ = hosted.workers
    assert text(await a.request("tools/call", call("whoami"))) == started_pids(hosted.pids)[0]


async def test_in_flight_calls_per_connection_are_capped(hosted: Hosted) -> None:
    pause = jsonrpc.dumps({"name": "pause", "arguments": {"seconds": 5}}).decode()
    lines = [f'{{"op": "call", "id": {i}, "method": "tools/call", "params": {pause}}}\n'.encode()
             for i in range(MAX_IN_FLIGHT + 1)]
    replies = await raw_exchange(hosted.host.path, lines, 1)
    assert replies[0]["id"] == MAX_IN_FLIGHT and "in flight" in replies[0]["error"]["cause"]
