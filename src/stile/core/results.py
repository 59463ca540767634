"""Result adaptation between eras, and URI rewriting in results of prefixed views."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stile import __version__
from stile.core.context import ClientEra, Reply
from stile.wire.eras import META_SERVER_INFO, MODERN_ONLY_RESULT_KEYS
from stile.wire.errors import INVALID_PARAMS, RESOURCE_NOT_FOUND_LEGACY

STILE_INFO = {"name": "stile", "version": __version__}

if TYPE_CHECKING:
    from stile.core.catalog import View


def adapt_reply(reply: Reply, client_era: ClientEra, upstream_era: str | None) -> Reply:
    """Keep only result/error (ids are the frontend's), shaped for the client's era."""
    if "result" in reply:
        reply = {"result": reply["result"]}
    elif isinstance(reply.get("error"), dict):
        reply = {"error": reply["error"]}
    else:
        reply = {"error": {"code": -32603, "message": "upstream sent neither result nor error"}}
    res = reply.get("result")
    if isinstance(res, dict):
        meta = res.get("_meta")
        if isinstance(meta, dict) and META_SERVER_INFO in meta:
            # the client talks to Stile: the upstream's self-description stays behind the gateway
            rest = {k: v for k, v in meta.items() if k != META_SERVER_INFO}
            if client_era == "modern":
                rest[META_SERVER_INFO] = STILE_INFO
            res = {k: v for k, v in res.items() if k != "_meta"}
            if rest:
                res["_meta"] = rest
            reply = {"result": res}
        if client_era == "legacy":
            if any(k in res for k in MODERN_ONLY_RESULT_KEYS) and res.get("resultType", "complete") == "complete":
                res = {k: v for k, v in res.items() if k not in MODERN_ONLY_RESULT_KEYS}
                return {"result": res}
        elif "resultType" not in res:
            return {"result": {**res, "resultType": "complete"}}
        return reply
    err = reply.get("error")
    if client_era == "modern" and isinstance(err, dict) and err.get("code") == RESOURCE_NOT_FOUND_LEGACY:
        return {"error": {**err, "code": INVALID_PARAMS}}
    return reply


def _rewrite_content(item: Any, view: View, upstream: str) -> Any:
    if not isinstance(item, dict):
        return item
    kind = item.get("type")
    if kind == "resource_link" and isinstance(item.get("uri"), str):
        return {**item, "uri": view.namer.uri(upstream, item["uri"])}
    if kind == "resource" and isinstance(item.get("resource"), dict):
        inner = item["resource"]
        if isinstance(inner.get("uri"), str):
            return {**item, "resource": {**inner, "uri": view.namer.uri(upstream, inner["uri"])}}
    return item


def rewrite_uris(reply: Reply, view: View, upstream: str) -> Reply:
    """Expose upstream URIs inside results under the view's names (only when prefixed)."""
    res = reply.get("result")
    if not view.namer.prefixed or not isinstance(res, dict):
        return reply
    out = dict(res)
    if isinstance(res.get("content"), list):
        out["content"] = [_rewrite_content(c, view, upstream) for c in res["content"]]
    if isinstance(res.get("contents"), list):
        out["contents"] = [
            {**c, "uri": view.namer.uri(upstream, c["uri"])} if isinstance(c, dict) and isinstance(c.get("uri"), str)
            else c for c in res["contents"]
        ]
    if isinstance(res.get("messages"), list):
        out["messages"] = [
            {**m, "content": _rewrite_content(m.get("content"), view, upstream)} if isinstance(m, dict) else m
            for m in res["messages"]
        ]
    return {**reply, "result": out}
