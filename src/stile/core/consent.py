"""Asking a user for consent (`identity: user_oauth`) in the way the calling client understands.

An upstream whose user has not authorized Stile yet raises `ConsentRequired` (the consent URL). A legacy
client that declared `elicitation.url` gets a URL-mode `elicitation/create`; once it accepts, the call waits
for the consent to complete and is retried. A 2026-07-28 client that declared `elicitation.url` gets an
`input_required` result with the same elicitation; its retry carries our `requestState`, which is removed
before the call goes upstream, and waits for the consent to complete (the client answers the elicitation
when the user opens the link, not when they finish). Any other client gets the -32042 error carrying the URL.
"""

from __future__ import annotations

from typing import Any

from stile.core.context import CallContext, Reply
from stile.wire import eras
from stile.wire.errors import ConsentRequired

STATE_PREFIX = "stile-consent:"


def _url_capable(ctx: CallContext) -> bool:
    elicitation = ctx.client_caps.get("elicitation") if isinstance(ctx.client_caps, dict) else None
    return isinstance(elicitation, dict) and "url" in elicitation


def strip_resume(params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the call without our requestState and the consent answer, whether it was a retry after our
    `input_required`)."""
    state = params.get("requestState")
    if isinstance(state, str) and state.startswith(STATE_PREFIX):
        return {k: v for k, v in params.items() if k not in ("requestState", "inputResponses")}, True
    return params, False


async def ask(ctx: CallContext, need: ConsentRequired, resumed: bool = False) -> Reply | None:
    """None: the client accepted and the consent completed, retry the call. A reply: answer it (MRTR).
    Raises `need` when the client cannot be asked or declined. `resumed`: a 2026-07-28 client retrying after
    our `input_required` (its user opened the link): wait for the consent to complete before asking again."""
    if not _url_capable(ctx):
        raise need
    if ctx.era == "modern":
        if ctx.method not in eras.NAMED_METHODS:
            raise need
        if resumed and need.wait is not None and await need.wait():
            return None
        request = {"method": "elicitation/create", "params": need.elicitation()}
        return {"result": {"resultType": "input_required", "inputRequests": {"consent": request},
                           "requestState": STATE_PREFIX + need.elicitation_id}}
    if not ctx.channel.can_request:
        raise need
    answer = await ctx.channel.request("elicitation/create", need.elicitation())
    if not isinstance(answer, dict) or answer.get("action") != "accept":
        raise need
    if need.wait is not None and await need.wait():
        await ctx.channel.notify({"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
                                  "params": {"elicitationId": need.elicitation_id}})
    return None
