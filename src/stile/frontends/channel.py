"""One request's way back to the client: JSON if nothing precedes the answer, else SSE.

The response starts as a plain JSON reply; the first notification or server->client request
switches it to a request-scoped SSE stream (progress and log messages first, the answer last).
Nothing is sent after the answer. Legacy server->client requests get a gateway-minted id naming this
replica; the client's answer arrives on another POST, possibly at another replica, and resolves the
pending future through `Relay` (forwarded over the bus when the id names another replica).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson

from stile.bus import BusUnavailable
from stile.bus.rpc import Rpc
from stile.frontends.asgi import SSE_HEADERS, Send, send_bytes
from stile.wire import jsonrpc, sse
from stile.wire.errors import ReplicaUnreachable, StileError
from stile.wire.jsonrpc import Message


class ClientReplyError(StileError):
    """The client answered a relayed request with a JSON-RPC error; passed on as is."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "client error")), data=error.get("data"))
        self.jsonrpc_code = int(error.get("code", -32603))


class Relay:
    """Pending server->client requests awaiting the client's answer, each bound to the session that was asked.

    Ids are ``stile-<replica>.<random>``; an answer for another replica's id is cast to it over the bus
    (`relay.answer`). An answer from another session, or for an unknown id, is dropped.
    """

    MAX_PENDING = 10_000

    def __init__(self, rpc: Rpc | None = None) -> None:
        self._pending: dict[str, tuple[asyncio.Future[Message], str]] = {}
        self._rpc = rpc
        self.replica = rpc.replica if rpc is not None else ""
        if rpc is not None:
            rpc.on_cast("relay.answer", self._remote_answer)

    def open(self, owner: str = "") -> tuple[str, asyncio.Future[Message]]:
        if len(self._pending) >= self.MAX_PENDING:
            raise StileError("too many server->client requests are waiting for answers")
        rid = f"stile-{self.replica}.{secrets.token_urlsafe(12)}"
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, owner)
        return rid, fut

    def close(self, rid: str) -> None:
        self._pending.pop(rid, None)

    def answer_here(self, msg: Message, owner: str = "") -> bool:
        entry = self._pending.get(str(msg.get("id")))
        if entry is None or entry[1] != owner or entry[0].done():
            return False
        entry[0].set_result(msg)
        return True

    async def answer(self, msg: Message, owner: str = "") -> None:
        """Resolve the request `msg` answers, here or on the replica its id names."""
        if self.answer_here(msg, owner) or self._rpc is None or not self._rpc.shared:
            return
        rid = msg.get("id")
        replica = rid.removeprefix("stile-").rpartition(".")[0] if isinstance(rid, str) else ""
        if not replica or replica == self.replica:
            return
        try:
            got = await self._rpc.cast(replica, "relay.answer", {"m": msg, "o": owner})
        except BusUnavailable:
            raise ReplicaUnreachable("the replica that asked cannot be reached now; it will time out and "
                                     "the original request can be sent again") from None
        if got == 0:
            raise ReplicaUnreachable("the replica that asked is gone: send the original request again")

    def _remote_answer(self, payload: dict[str, Any], sender: str) -> None:
        msg, owner = payload.get("m"), payload.get("o")
        if isinstance(msg, dict) and isinstance(owner, str):
            self.answer_here(msg, owner)


class ResponseChannel:
    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]], relay: Relay | None,
                 request_timeout: float, keep_alive: float = 15.0, owner: str = "") -> None:
        self._send = send
        self._headers = headers
        self._relay = relay
        self._owner = owner  # the session whose answers the relay accepts
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
        rid, fut = self._relay.open(self._owner)
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
