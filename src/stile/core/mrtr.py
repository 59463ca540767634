"""Bridging legacy server->client requests to modern clients as MRTR `input_required` results.

A legacy upstream asks mid-call (sampling, elicitation, roots); a 2026-07-28 client cannot be
asked on the wire, so Stile answers the client `input_required` with those requests and a sealed
`requestState`, keeps the upstream call open, and resumes it when the client retries with
`inputResponses`. Pending calls are process-local (the retry must reach the same replica) and
expire after PENDING_TTL seconds; the state is AES-GCM sealed and bound to the tool, the method and the
principal (`owner_of`): another caller presenting it gets the same answer as for an unknown state.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stile.core.context import Reply
from stile.tasks import spawn
from stile.wire.errors import InvalidParams, StileError

PENDING_TTL = 300.0
STATE_PREFIX = "stile1."
_AAD = b"stile-mrtr-v1"
AskFn = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(eq=False)
class _Ask:
    key: str
    method: str
    params: dict[str, Any]
    answer: asyncio.Future[dict[str, Any]]


@dataclass(eq=False)
class Pending:
    task: asyncio.Task[Reply] | None = None
    asks: asyncio.Queue[_Ask] = field(default_factory=asyncio.Queue)
    open_asks: dict[str, _Ask] = field(default_factory=dict)
    binding: str = ""
    owner: str = ""
    expires: float = 0.0
    counter: int = 0


class InputBridge:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._pending: dict[str, Pending] = {}

    def owns(self, params: dict[str, Any]) -> bool:
        state = params.get("requestState")
        return isinstance(state, str) and state.startswith(STATE_PREFIX)

    async def start(self, call: Callable[[AskFn], Coroutine[Any, Any, Reply]], binding: str,
                    owner: str = "") -> Reply:
        """Run an upstream call whose server->client requests become input requests."""
        pending = Pending(binding=binding, owner=owner)

        async def ask(method: str, params: dict[str, Any]) -> dict[str, Any]:
            pending.counter += 1
            item = _Ask(f"r{pending.counter}", method, params, asyncio.get_running_loop().create_future())
            pending.asks.put_nowait(item)
            async with asyncio.timeout(PENDING_TTL):
                return await item.answer

        pending.task = spawn(call(ask), name="mrtr-call")
        return await self._drive(pending)

    async def resume(self, params: dict[str, Any], binding: str, owner: str = "") -> Reply:
        pid = self._open(params.get("requestState"), binding, owner)
        pending = self._pending.get(pid) if pid is not None else None
        if pid is None or pending is None or pending.owner != owner or pending.expires < time.monotonic():
            raise InvalidParams("requestState is unknown or expired: send the original request again without it")
        del self._pending[pid]
        responses = params.get("inputResponses")
        responses = responses if isinstance(responses, dict) else {}
        for key, ask in list(pending.open_asks.items()):
            if key in responses and not ask.answer.done():
                value = responses[key]
                ask.answer.set_result(value if isinstance(value, dict) else {})
                del pending.open_asks[key]
        return await self._drive(pending)

    async def _drive(self, pending: Pending) -> Reply:
        assert pending.task is not None
        while not pending.open_asks:
            getter = spawn(pending.asks.get(), name="mrtr-ask")
            await asyncio.wait((pending.task, getter), return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                ask = getter.result()
                pending.open_asks[ask.key] = ask
                while not pending.asks.empty():
                    more = pending.asks.get_nowait()
                    pending.open_asks[more.key] = more
                break
            getter.cancel()
            return pending.task.result()
        pid = secrets.token_urlsafe(12)
        pending.expires = time.monotonic() + PENDING_TTL
        self._pending[pid] = pending
        self._expire_later(pid)
        requests = {k: {"method": a.method, "params": a.params} for k, a in pending.open_asks.items()}
        return {"result": {"resultType": "input_required", "inputRequests": requests,
                           "requestState": self._seal(pid, pending.binding, pending.owner)}}

    def _expire_later(self, pid: str) -> None:
        def drop() -> None:
            pending = self._pending.pop(pid, None)
            if pending is not None:
                for ask in pending.open_asks.values():
                    if not ask.answer.done():
                        ask.answer.set_exception(StileError("the client never answered the input request"))

        asyncio.get_running_loop().call_later(PENDING_TTL, drop)

    def _seal(self, pid: str, binding: str, owner: str) -> str:
        nonce = secrets.token_bytes(12)
        body = orjson.dumps({"p": pid, "b": binding, "o": owner, "t": int(time.time())})
        return STATE_PREFIX + base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, body, _AAD)).decode()

    def _open(self, state: Any, binding: str, owner: str) -> str | None:
        if not isinstance(state, str) or not state.startswith(STATE_PREFIX):
            return None
        try:
            raw = base64.urlsafe_b64decode(state[len(STATE_PREFIX):])
            data = orjson.loads(self._aead.decrypt(raw[:12], raw[12:], _AAD))
        except (binascii.Error, ValueError, InvalidTag):
            return None
        if not isinstance(data, dict) or data.get("b") != binding or data.get("o") != owner:
            return None
        pid = data.get("p")
        return pid if isinstance(pid, str) else None
