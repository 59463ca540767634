"""`H1Error.maybe_sent`: False only when the request never left (the pool's retry rule for side effects)."""

from __future__ import annotations

import socket

import pytest

from stile.upstreams.h1 import H1Error, H1Pool
from tests.upstreams.test_h1 import get, pool_for, serving


async def test_a_refused_first_connect_was_not_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = H1Pool(f"http://127.0.0.1:{port}/mcp")
    with pytest.raises(H1Error) as caught:
        await pool.request("POST", {}, b"{}")
    assert caught.value.maybe_sent is False
    await pool.aclose()


async def test_a_request_on_a_dying_keepalive_connection_may_have_been_sent() -> None:
    async with serving() as srv, pool_for(srv) as pool:
        assert (await get(pool, "/chunked"))[0] == 200
        srv.drop_reused = True  # the reused connection dies under the request...
        assert srv._server is not None
        srv._server.close()  # ...and the fresh connection it is retried on is refused
        with pytest.raises(H1Error) as caught:
            await get(pool, "/chunked", "POST", b"{}")
        assert caught.value.maybe_sent is True
        assert srv.dropped == 1  # it did reach the server
