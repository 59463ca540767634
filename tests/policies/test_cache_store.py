"""The response cache's store and config: LRU by entries and bytes, generations, expiry, config errors."""

from __future__ import annotations

import pytest

from stile.config.model import GatewayConfig
from stile.policies import cache_store
from stile.policies.cache_store import Generations, MemoryStore
from stile.policies.registry import check_chains, default_chain


def test_the_least_recently_used_entry_goes_first_when_entries_exceed_the_bound() -> None:
    store = MemoryStore(max_bytes=1_000, max_entries=2)
    token = Generations().token("up", None)
    store.put("a", b"1", 10.0, token)
    store.put("b", b"2", 10.0, token)
    assert store.get("a", token, 0.0) is not None  # a is now the most recently used
    store.put("c", b"3", 10.0, token)
    assert store.get("b", token, 0.0) is None
    assert store.get("a", token, 0.0) is not None and store.get("c", token, 0.0) is not None


def test_bytes_are_bounded_and_an_entry_larger_than_the_bound_is_not_stored() -> None:
    store = MemoryStore(max_bytes=10, max_entries=100)
    token = Generations().token("up", None)
    assert store.put("a", b"x" * 6, 10.0, token)
    assert store.put("b", b"y" * 4, 10.0, token)
    assert store.bytes == 10
    assert store.put("c", b"z", 10.0, token)
    assert store.get("a", token, 0.0) is None and store.bytes == 5
    assert not store.put("huge", b"h" * 11, 10.0, token)
    assert store.get("huge", token, 0.0) is None
    store.put("b", b"yy", 10.0, token)  # replacing an entry accounts for its old size
    assert store.bytes == 3


def test_the_bytes_a_key_holds_count_against_the_bound() -> None:
    store = MemoryStore(max_bytes=100, max_entries=100)
    token = Generations().token("up", None)
    assert store.put("a", b"x" * 10, 10.0, token, key_bytes=60)
    assert store.bytes == 70
    assert store.put("b", b"y" * 10, 10.0, token, key_bytes=60)
    assert store.get("a", token, 0.0) is None and store.bytes == 70
    assert not store.put("c", b"z", 10.0, token, key_bytes=100)


def test_an_expired_entry_is_a_miss_and_is_dropped() -> None:
    store = MemoryStore(max_bytes=100, max_entries=10)
    token = Generations().token("up", None)
    store.put("a", b"1", 5.0, token)
    assert store.get("a", token, 4.9) is not None
    assert store.get("a", token, 5.0) is None
    assert len(store) == 0 and store.bytes == 0


def test_generations_invalidate_by_upstream_and_by_uri() -> None:
    gens = Generations()
    tool, read, other = gens.token("up", None), gens.token("up", "res://a"), gens.token("up", "res://b")
    gens.resource_updated("up", "res://a")
    assert gens.token("up", "res://a") != read
    assert gens.token("up", "res://b") == other and gens.token("up", None) == tool
    gens.upstream_changed("up")
    assert gens.token("up", None) != tool and gens.token("up", "res://b") != other
    assert gens.token("elsewhere", None) == (0, 0, 0)


def test_forgetting_uri_generations_does_not_revive_what_they_invalidated(monkeypatch: pytest.MonkeyPatch) -> None:
    gens = Generations()
    stale = gens.token("up", "res://a")
    gens.resource_updated("up", "res://a")
    monkeypatch.setattr(cache_store, "MAX_URI_GENERATIONS", 1)
    gens.resource_updated("up", "res://b")  # the table is full: cleared, and the epoch moves
    assert gens.token("up", "res://a") != stale


def test_cache_is_a_default_policy_at_order_60_and_bad_config_is_reported_per_key() -> None:
    chain = default_chain()
    assert "cache" in chain and chain.index("cache") > chain.index("access")
    cfg = GatewayConfig.model_validate({
        "upstreams": {"up": {"url": "http://127.0.0.1:1/mcp"}}, "virtual_servers": {"vs": {}},
        "policies": {"cache": {"enabled": True, "max_bytes": 0, "tools": {"up.t": {"scope": "everyone"}},
                               "colour": "red"}}})
    problems = check_chains(cfg, "stile.yaml")
    assert any("policies.cache.max_bytes" in p for p in problems), problems
    assert any("policies.cache.tools.up.t.scope" in p for p in problems), problems
    assert any("policies.cache.colour" in p for p in problems), problems
