"""One request's way back to the client: JSON if nothing precedes the answer, else SSE.

The response starts as a plain JSON reply; the first notification or server->client request
switches it to a request-scoped SSE stream (progress and log messages first, the answer last).
Nothing is sent after the answer. Legacy server->client requests get a gateway-minted id; the
client's answer arrives on another POST and resolves the pending future through `Relay`.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson

from stile.frontends.asgi import SSE_HEADERS, Send, send_bytes
from stile.wire import jsonrpc, sse
from stile.wire.errors import StileError
from stile.wire.jsonrpc import Message


class ClientReplyError(StileError):
    """The client answered a relayed request with a JSON-RPC error; passed on as is."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "client error")), data=error.get("data"))
        self.jsonrpc_code = int(error.get("code", -32603))


class Relay:
    """Pending server->client requests awaiting the client's answer (process-local)."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[Message]] = {}

    def open(self) -> tuple[str, asyncio.Future[Message]]:
        rid = "stile-" + secrets.token_urlsafe(12)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        return rid, fut

    def close(self, rid: str) -> None:
        self._pending.pop(rid, None)

    def answer(self, msg: Message) -> bool:
        fut = self._pending.get(str(msg.get("id")))
        if fut is None or fut.done():
            return False
        fut.set_result(msg)
        return True


class ResponseChannel:
    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]], relay: Relay | None,
                 request_timeout: float, keep_alive: float = 15.0) -> None:
        self._send = send
        self._headers = headers
        self._relay = relay
        self._timeout = request_timeout
        self._lock = asyncio.Lock()
        self.streaming = False
        self.done = False
        self.prefer_sse = False  # the client listed text/event-stream first in Accept

    @property
    def can_request(self) -> bool:
        return self._relay is not None

    async def _start_stream(self) -> None:
        if not self.streaming:
            self.streaming = True
            await self._send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *self._headers]})

    async def _event(self, msg: Message) -> None:
        async with self._lock:
            if self.done:
                return
            await self._start_stream()
            await self._send({"type": "http.response.body", "body": sse.encode(orjson.dumps(msg)),
                              "more_body": True})

    async def notify(self, msg: Message) -> None:
        await self._event(msg)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self._relay is None:
            raise StileError(f"cannot relay {method} to this client")
        rid, fut = self._relay.open()
        try:
            await self._event(jsonrpc.request(rid, method, params))
            async with asyncio.timeout(self._timeout):
                answer = await fut
        except TimeoutError as exc:
            raise StileError(f"client did not answer {method} in time") from exc
        finally:
            self._relay.close(rid)
        if "error" in answer:
            raise ClientReplyError(answer["error"] if isinstance(answer["error"], dict) else {})
        res = answer.get("result")
        return res if isinstance(res, dict) else {}

    async def finish(self, body: Message, status: int = 200, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """`extra` headers (Retry-After on a 429) make the answer a plain JSON response unless already streaming."""
        async with self._lock:
            if self.done:
                return
            self.done = True
            data = orjson.dumps(body)
            if self.prefer_sse and not self.streaming and not extra:
                await self._start_stream()
            if self.streaming:
                await self._send({"type": "http.response.body", "body": sse.encode(data), "more_body": False})
            else:
                await send_bytes(self._send, status, data, [*self._headers, *(extra or ())])

    async def abort(self) -> None:
        """End an SSE stream without an answer (cancelled)."""
        async with self._lock:
            if self.done:
                return
            self.done = True
            await self._start_stream()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
