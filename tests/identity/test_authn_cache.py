"""The authenticator answers repeated credentials from memory: known keys, and unknown ones too.

A well-formed key the store does not know used to cost one database query per request, so a client
retrying a wrong key (or a flood of one) hit the store every time. Store queries are counted through a
wrapper around a real SQLite key store.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from stile.config.model import GatewayConfig
from stile.identity import authn
from stile.identity.authn import Authenticator, AuthRequired
from stile.stores.keys import ApiKeyRecord, KeyStore, open_key_store

UNKNOWN = "stile_" + "0" * 16 + "_" + "x" * 43


class CountingStore:
    def __init__(self, inner: KeyStore) -> None:
        self.inner = inner
        self.verifies = 0

    async def create(self, name: str, roles: Sequence[str], expires_at: datetime | None) -> tuple[str, ApiKeyRecord]:
        return await self.inner.create(name, roles, expires_at)

    async def verify(self, presented: str) -> ApiKeyRecord | None:
        self.verifies += 1
        return await self.inner.verify(presented)

    async def list(self) -> builtins.list[ApiKeyRecord]:
        return await self.inner.list()

    async def revoke(self, name_or_id: str) -> bool:
        return await self.inner.revoke(name_or_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def counted(tmp_path: Path) -> AsyncIterator[tuple[Authenticator, CountingStore]]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    auth = Authenticator(GatewayConfig.model_validate({"auth": {"key_cache_seconds": 5}}), url)
    store = CountingStore(open_key_store(url))
    auth._store = store
    try:
        yield auth, store
    finally:
        await auth.aclose()


async def refused(auth: Authenticator, key: str) -> bool:
    try:
        await auth.authenticate({"x-api-key": key}, "http://127.0.0.1/mcp/v")
    except AuthRequired:
        return True
    return False


async def test_an_unknown_key_presented_again_does_not_query_the_store_again(
        counted: tuple[Authenticator, CountingStore]) -> None:
    auth, store = counted
    for _ in range(50):
        assert await refused(auth, UNKNOWN)
    assert store.verifies == 1


async def test_the_negative_entry_lasts_key_cache_seconds(counted: tuple[Authenticator, CountingStore],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    auth, store = counted
    now = [1000.0]
    monkeypatch.setattr(authn.time, "monotonic", lambda: now[0])
    assert await refused(auth, UNKNOWN)
    now[0] += 4.9
    assert await refused(auth, UNKNOWN)
    assert store.verifies == 1
    now[0] += 0.2
    assert await refused(auth, UNKNOWN)
    assert store.verifies == 2


async def test_the_negative_cache_is_bounded(counted: tuple[Authenticator, CountingStore],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    auth, store = counted
    monkeypatch.setattr(authn, "CACHE_SIZE", 8)
    keys = [f"stile_{i:016x}_" + "y" * 43 for i in range(20)]
    for key in keys:
        assert await refused(auth, key)
    assert store.verifies == 20
    assert await refused(auth, keys[-1])  # the most recent are still remembered
    assert store.verifies == 20
    assert await refused(auth, keys[0])  # the oldest were dropped
    assert store.verifies == 21
    assert auth.cached_refusals() <= 8


async def test_a_known_key_still_authenticates_and_is_cached(counted: tuple[Authenticator, CountingStore]) -> None:
    auth, store = counted
    key, _ = await store.create("ci", ["r"], None)
    for _ in range(10):
        principal = await auth.authenticate({"x-api-key": key}, "http://127.0.0.1/mcp/v")
        assert principal.agent == "ci"
    assert store.verifies == 1


async def test_with_key_cache_seconds_zero_every_request_checks_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    auth = Authenticator(GatewayConfig.model_validate({"auth": {"key_cache_seconds": 0}}), url)
    store = CountingStore(open_key_store(url))
    auth._store = store
    try:
        for _ in range(3):
            assert await refused(auth, UNKNOWN)
        assert store.verifies == 3
    finally:
        await auth.aclose()
