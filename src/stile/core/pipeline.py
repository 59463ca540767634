"""The policy pipeline: one hook signature, listed outermost first, ending in the router.

Work before `await call_next(ctx)` is request-side, after it response-side (reverse order).
A policy denies by raising a `StileError`; it rewrites the request with `dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from stile.core.context import CallContext, CallNext, Reply


class Policy(Protocol):
    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply: ...


def build(policies: Sequence[Policy], terminal: CallNext) -> CallNext:
    handler = terminal
    for policy in reversed(policies):
        handler = _bind(policy, handler)
    return handler


def _bind(policy: Policy, nxt: CallNext) -> CallNext:
    async def run(ctx: CallContext) -> Reply:
        return await policy(ctx, nxt)

    return run
