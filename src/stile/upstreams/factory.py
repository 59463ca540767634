"""Build the right Upstream for a config entry."""

from __future__ import annotations

from stile.config.model import UpstreamConfig
from stile.upstreams.base import Upstream
from stile.upstreams.http import HttpUpstream
from stile.upstreams.sse import SseUpstream
from stile.upstreams.stdio import StdioUpstream


def make_upstream(name: str, cfg: UpstreamConfig) -> Upstream:
    kind = cfg.kind
    if kind == "stdio":
        return StdioUpstream(name, cfg)
    if kind == "sse":
        return SseUpstream(name, cfg)
    return HttpUpstream(name, cfg)
