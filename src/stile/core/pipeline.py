"""The policy pipeline: one hook signature, listed outermost first, ending in the router.

Work before `await call_next(ctx)` is request-side, after it response-side (reverse order).
A policy denies by raising a `StileError`; it rewrites the request with `dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

from stile.core.context import CallContext, CallNext, Reply


class Policy(Protocol):
    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply: ...


def build(policies: Sequence[Policy], terminal: CallNext) -> CallNext:
    handler = terminal
    for policy in reversed(policies):
        handler = _bind(policy, handler)
    return handler


class _Bound:
    """`policy` with its `call_next` bound: calling it returns the policy's own coroutine (no wrapper
    coroutine per policy per request, ~10 of them on the default chain)."""

    __slots__ = ("nxt", "policy")

    def __init__(self, policy: Policy, nxt: CallNext) -> None:
        self.policy = policy
        self.nxt = nxt

    def __call__(self, ctx: CallContext) -> Awaitable[Reply]:
        return self.policy(ctx, self.nxt)


def _bind(policy: Policy, nxt: CallNext) -> CallNext:
    return _Bound(policy, nxt)
