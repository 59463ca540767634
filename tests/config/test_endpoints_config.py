"""`endpoints` / `replicas` and the pool keys of an upstream: accepted shapes and clear refusals."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from stile.config.load import ConfigError, parse_config
from stile.upstreams.factory import make_upstream
from stile.upstreams.http import HttpUpstream
from stile.upstreams.pool import PooledUpstream

A, B = "http://127.0.0.1:1/mcp", "http://127.0.0.1:2/mcp"
CMD = [sys.executable, "-m", "stile.examples_servers.files_server"]


def problem_of(upstream: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": {"u": upstream}}, "cfg.yaml")
    (problem,) = info.value.problems
    return problem


@pytest.mark.parametrize(("upstream", "says"), [
    ({"url": A, "endpoints": [B]}, "set `endpoints` instead of `url`"),
    ({"endpoints": []}, "at least one URL"),
    ({"endpoints": [A, A]}, "lists a URL twice"),
    ({"endpoints": ["ftp://x/mcp"]}, "endpoint 'ftp://x/mcp' must start with http:// or https://"),
    ({"url": A, "replicas": 2}, "`replicas` is for stdio"),
    ({"endpoints": [A], "replicas": 2}, "`replicas` is for stdio"),
    ({"endpoints": [A], "balance": "random"}, "balance"),
    ({"endpoints": [A], "breaker": {"failures": 0}}, "breaker.failures"),
    ({"endpoints": [A], "ejection": {"max_ejected_percent": 101}}, "ejection.max_ejected_percent"),
    ({"endpoints": [A], "retry_budget": 2}, "retry_budget"),
])
def test_bad_pool_keys_are_refused_clearly(upstream: dict[str, Any], says: str) -> None:
    problem = problem_of(upstream)
    assert problem.startswith("cfg.yaml: upstreams.u"), problem
    assert says in problem, problem


def test_endpoints_and_replicas_build_pools_and_a_single_url_does_not() -> None:
    cfg = parse_config({"upstreams": {"h": {"endpoints": [A, B], "balance": "session"},
                                      "s": {"command": CMD, "replicas": 3},
                                      "one": {"url": A}}}, "cfg.yaml")
    pool = make_upstream("h", cfg.upstreams["h"])
    assert isinstance(pool, PooledUpstream)
    assert [s["url"] for s in pool.endpoint_status()] == [A, B]
    assert [getattr(ep.member, "url", None) for ep in pool.endpoints] == [A, B]
    stdio = make_upstream("s", cfg.upstreams["s"])
    assert isinstance(stdio, PooledUpstream)
    assert [s["url"] for s in stdio.endpoint_status()] == ["stdio#0", "stdio#1", "stdio#2"]
    assert isinstance(make_upstream("one", cfg.upstreams["one"]), HttpUpstream)
