"""Upstream failures explain themselves: the upstream, its URL or command, and the cause in words.

Real sockets and processes: a closed port, a `.invalid` host, an HTTP server answering 500, a stdio
process that exits at once with a message on stderr. Operators (discovery error, `last_error`) get the
target and the cause; clients get the upstream's name and the short cause, never the URL or stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from stile.config.model import GatewayConfig
from stile.core.gateway import Gateway
from stile.wire.errors import UpstreamUnavailable
from tests.support import free_port


async def _discover(upstreams: dict[str, dict[str, object]]) -> Gateway:
    gw = Gateway(GatewayConfig.model_validate({"upstreams": upstreams, "virtual_servers": {"main": {"auth": "none"}}}))
    await gw.start()
    await gw.wait_discovered(timeout=20)
    return gw


@pytest.fixture
async def http_500() -> AsyncIterator[str]:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        await runner.cleanup()


async def test_a_refused_connection_names_the_url_and_says_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    gw = await _discover({"dead": {"url": f"{url}?token=SECRET", "headers": {"X-Api-Key": "SECRET"}}})
    try:
        error = gw.inventories["dead"].error or ""
        assert error == f"{url}: connection refused"
        with pytest.raises(UpstreamUnavailable) as info:
            await gw.upstreams["dead"].request("tools/list", {})
        assert info.value.message == "upstream 'dead': connection refused"  # the client's text: no URL
        assert "SECRET" not in error and "SECRET" not in (gw.upstreams["dead"].last_error or "")
    finally:
        await gw.stop()


async def test_an_sse_upstream_on_a_closed_port_fails_fast_with_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}/sse"
    begun = time.monotonic()
    gw = await _discover({"legacy": {"url": url, "transport": "sse", "connect_timeout": 10}})
    try:
        assert time.monotonic() - begun < 5  # not the 10 s connect timeout
        assert gw.inventories["legacy"].error == f"{url}: connection refused"
    finally:
        await gw.stop()


async def test_an_unknown_host_is_a_dns_failure() -> None:
    gw = await _discover({"nowhere": {"url": "http://stile-test.invalid/mcp"},
                          "nowhere_sse": {"url": "http://stile-test.invalid/sse", "transport": "sse"}})
    try:
        for name, path in (("nowhere", "mcp"), ("nowhere_sse", "sse")):
            error = gw.inventories[name].error or ""
            assert error.startswith(f"http://stile-test.invalid/{path}: DNS lookup failed ("), error
    finally:
        await gw.stop()


async def test_an_upstream_answering_http_500_says_http_status_500(http_500: str) -> None:
    gw = await _discover({"broken": {"url": http_500}})
    try:
        assert gw.inventories["broken"].error == f"{http_500}: initialize failed: HTTP status 500"
    finally:
        await gw.stop()


async def test_a_stdio_process_that_exits_reports_its_code_and_last_stderr_lines_at_once() -> None:
    script = "import sys; print('loading', file=sys.stderr); sys.exit('No module named fake_dep')"
    begun = time.monotonic()
    gw = await _discover({"tool": {"command": [sys.executable, "-c", script], "connect_timeout": 10}})
    try:
        assert time.monotonic() - begun < 5  # not the connect timeout + probe timeout
        error = gw.inventories["tool"].error or ""
        assert error.startswith(f"{sys.executable} -c ") and error.endswith(
            ": process exited with code 1; last stderr: loading | No module named fake_dep"), error
        with pytest.raises(UpstreamUnavailable) as info:
            await gw.upstreams["tool"].request("tools/list", {})
        assert info.value.message == "upstream 'tool': process exited with code 1"  # no stderr for clients
    finally:
        await gw.stop()


async def test_a_missing_stdio_command_says_it_cannot_be_started() -> None:
    gw = await _discover({"tool": {"command": ["stile-no-such-command-xyz"]}})
    try:
        assert gw.inventories["tool"].error == (
            "stile-no-such-command-xyz: cannot start 'stile-no-such-command-xyz': command not found on PATH")
    finally:
        await gw.stop()


async def test_https_to_a_plain_http_server_is_a_tls_error(http_500: str) -> None:
    url = http_500.replace("http://", "https://")
    gw = await _discover({"tls": {"url": url}})
    try:
        error = gw.inventories["tls"].error or ""
        assert error.startswith(f"{url}: TLS error ("), error
    finally:
        await gw.stop()


async def test_a_stdio_process_that_never_answers_names_the_handshake_timeout() -> None:
    gw = await _discover({"mute": {"command": [sys.executable, "-c", "import sys; sys.stdin.read()"],
                                   "connect_timeout": 0.5}})
    try:
        error = gw.inventories["mute"].error or ""
        assert error.endswith(": handshake failed: no answer to initialize within 0.5s"), error
    finally:
        await gw.stop()
