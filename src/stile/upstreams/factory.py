"""Build the right Upstream for a config entry (a pool of members when it lists `endpoints` or `replicas`)."""

from __future__ import annotations

from stile.config.model import UpstreamConfig
from stile.upstreams.base import DEFAULT_MAX_RESPONSE, Upstream
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.upstreams.hosted import HostedStdioUpstream, hosted_sockets
from stile.upstreams.http import HttpUpstream
from stile.upstreams.pool import build_pool
from stile.upstreams.sse import SseUpstream
from stile.upstreams.stdio import StdioUpstream


def make_upstream(name: str, cfg: UpstreamConfig, max_response: int = DEFAULT_MAX_RESPONSE,
                  credentials: Credentials = NO_CREDENTIALS, *, hosted: bool = True) -> Upstream:
    """`credentials` resolves `${secret:...}` and identity assertions (the vault, built by the composition root).

    In a worker of `stile serve --workers N` a stdio upstream is the supervisor's one process, reached over a
    Unix socket (`hosted`), unless it sets `stdio_per_worker`."""
    if hosted and cfg.kind == "stdio" and not cfg.stdio_per_worker:
        path = hosted_sockets().get(name)
        if path is not None:
            return HostedStdioUpstream(name, cfg, path, max_response)
    if cfg.endpoints is not None or cfg.replicas > 1:
        return build_pool(name, cfg, lambda n, c, m: _make_one(n, c, m, credentials), max_response)
    return _make_one(name, cfg, max_response, credentials)


def _make_one(name: str, cfg: UpstreamConfig, max_response: int = DEFAULT_MAX_RESPONSE,
              credentials: Credentials = NO_CREDENTIALS) -> Upstream:
    kind = cfg.kind
    if kind == "stdio":
        return StdioUpstream(name, cfg, max_response, credentials)
    if kind == "sse":
        return SseUpstream(name, cfg, max_response, credentials)
    return HttpUpstream(name, cfg, max_response, credentials)
