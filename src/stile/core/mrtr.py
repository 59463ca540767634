"""Bridging legacy server->client requests to modern clients as MRTR `input_required` results.

A legacy upstream asks mid-call (sampling, elicitation, roots); a 2026-07-28 client cannot be
asked on the wire, so Stile answers the client `input_required` with those requests and a sealed
`requestState`, keeps the upstream call open, and resumes it when the client retries with
`inputResponses`. A pending call lives in the process that runs it; the sealed state names that replica,
so a retry that lands on another one is forwarded to it over the bus (`mrtr.resume`, a deadline) and its
answer comes back the same way; a dead or unreachable owner gives a retryable `ReplicaUnreachable`.
Pending calls expire after PENDING_TTL seconds; the state is AES-GCM sealed and bound to the tool, the method and the
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

from stile.bus import BusUnavailable
from stile.bus.rpc import ReplicaGone, Rpc
from stile.core.context import Reply
from stile.tasks import spawn
from stile.wire.errors import InvalidParams, ReplicaUnreachable, StileError, remote_error

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
    def __init__(self, key: bytes, rpc: Rpc | None = None, resume_timeout: float = 60.0) -> None:
        self._aead = AESGCM(key)
        self._pending: dict[str, Pending] = {}
        self._rpc = rpc
        self.replica = rpc.replica if rpc is not None else ""
        self.resume_timeout = resume_timeout
        if rpc is not None:
            rpc.on_call("mrtr.resume", self._serve_resume)

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
        opened = self._open(params.get("requestState"), binding, owner)
        if opened is not None and opened[1] not in ("", self.replica) and self._rpc is not None \
                and self._rpc.shared:
            return await self._resume_remote(opened[1], params, binding, owner)
        pid = opened[0] if opened is not None else None
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

    async def _resume_remote(self, replica: str, params: dict[str, Any], binding: str, owner: str) -> Reply:
        assert self._rpc is not None
        again = "send the original request again without requestState"
        try:
            got = await self._rpc.call(replica, "mrtr.resume", {"params": params, "binding": binding, "owner": owner},
                                       self.resume_timeout)
        except ReplicaGone:
            raise ReplicaUnreachable(f"the replica holding this call is gone: {again}") from None
        except BusUnavailable:
            raise ReplicaUnreachable(f"the replica holding this call cannot be reached now: {again}") from None
        except TimeoutError:
            raise ReplicaUnreachable(f"the replica holding this call did not answer in time: {again}") from None
        error = got.get("error")
        if isinstance(error, dict):
            raise remote_error(error, got.get("status"))
        reply = got.get("reply")
        if not isinstance(reply, dict):
            raise ReplicaUnreachable(f"the replica holding this call answered nothing usable: {again}")
        return reply

    async def _serve_resume(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Another replica got the retry of a call pending here; the state names this replica (else refused)."""
        params, binding, owner = payload.get("params"), payload.get("binding"), payload.get("owner")
        if not isinstance(params, dict) or not isinstance(binding, str) or not isinstance(owner, str):
            return {"error": InvalidParams("malformed resume").to_error()}
        opened = self._open(params.get("requestState"), binding, owner)
        if opened is None or opened[1] != self.replica:
            return {"error": InvalidParams("requestState is unknown or expired: send the original request "
                                           "again without it").to_error()}
        try:
            return {"reply": await self.resume(params, binding, owner)}
        except StileError as exc:
            return {"error": exc.to_error(), "status": exc.http_status}

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
        body = orjson.dumps({"p": pid, "b": binding, "o": owner, "t": int(time.time()), "r": self.replica})
        return STATE_PREFIX + base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, body, _AAD)).decode()

    def _open(self, state: Any, binding: str, owner: str) -> tuple[str, str] | None:
        """(pending id, owning replica) of a state sealed for `binding` and `owner`, else None."""
        if not isinstance(state, str) or not state.startswith(STATE_PREFIX):
            return None
        try:
            raw = base64.urlsafe_b64decode(state[len(STATE_PREFIX):])
            data = orjson.loads(self._aead.decrypt(raw[:12], raw[12:], _AAD))
        except (binascii.Error, ValueError, InvalidTag):
            return None
        if not isinstance(data, dict) or data.get("b") != binding or data.get("o") != owner:
            return None
        pid, replica = data.get("p"), data.get("r", "")
        return (pid, replica) if isinstance(pid, str) and isinstance(replica, str) else None
