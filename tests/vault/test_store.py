"""The secret store on SQLite and PostgreSQL: versions, envelope encryption, rewrap, what list shows."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stile.stores.keys import async_url
from stile.vault.keyring import Keyring, VaultError, key_id
from stile.vault.store import SecretStore

PG_URL = os.environ.get("STILE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
K1, K2 = secrets.token_bytes(32), secrets.token_bytes(32)


@pytest.fixture(params=["sqlite", "postgres"])
async def where(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    table = f"stile_test_secrets_{secrets.token_hex(6)}"
    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else PG_URL
    yield url, table
    if request.param == "postgres":
        engine = create_async_engine(async_url(url))
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
        finally:
            await engine.dispose()


async def test_set_rotate_and_read_the_newest_version(where: tuple[str, str]) -> None:
    store = SecretStore(*where[:1], Keyring(K1), table=where[1])
    try:
        assert await store.set("gh", b"v-first-9q") == 1
        with pytest.raises(VaultError, match="already exists"):
            await store.set("gh", b"again")
        with pytest.raises(VaultError, match="no secret named"):
            await store.rotate("nope", b"x")
        assert await store.rotate("gh", b"v-second-7z") == 2
        assert await store.latest(["gh", "missing"]) == {"gh": b"v-second-7z"}
        assert [v for v, _ in await store.versions("gh")] == [2, 1]
        [info] = await store.list()
        assert (info.name, info.versions, info.latest) == ("gh", 2, 2)
        assert "v-second" not in repr(info) and "v-first" not in repr(info)
        assert await store.delete("gh") and not await store.delete("gh")
        assert await store.latest(["gh"]) == {}
    finally:
        await store.aclose()


async def test_values_are_stored_encrypted_and_bound_to_their_row(where: tuple[str, str]) -> None:
    url, table = where
    store = SecretStore(url, Keyring(K1), table=table)
    try:
        await store.set("a", b"plain-value-a")
        await store.set("b", b"plain-value-b")
        engine = create_async_engine(async_url(url))
        try:
            async with engine.begin() as conn:
                rows = (await conn.execute(sa.text(f'SELECT * FROM "{table}"'))).all()
                assert not any(b"plain-value" in str(tuple(r)).encode() for r in rows)
                # move b's ciphertext onto a's row: authenticated data (name, version) makes it fail
                await conn.execute(sa.text(f'UPDATE "{table}" SET ciphertext = (SELECT ciphertext FROM "{table}" '
                                           f"WHERE name = 'b'), wrapped_key = (SELECT wrapped_key FROM \"{table}\" "
                                           "WHERE name = 'b') WHERE name = 'a'"))
        finally:
            await engine.dispose()
        with pytest.raises(VaultError, match="does not authenticate"):
            await store.latest(["a"])
    finally:
        await store.aclose()


async def test_rewrap_moves_every_data_key_to_the_new_master_key(where: tuple[str, str]) -> None:
    url, table = where
    old = SecretStore(url, Keyring(K1), table=table)
    try:
        await old.set("a", b"va")
        await old.rotate("a", b"va2")
        await old.set("b", b"vb")
        during = SecretStore(url, Keyring(K2, (K1,)), table=table)  # a gateway mid-rewrap reads both
        try:
            assert await old.rewrap(Keyring(K2)) == 3
            assert await during.latest(["a", "b"]) == {"a": b"va2", "b": b"vb"}
            assert await old.rewrap(Keyring(K2)) == 0  # idempotent
        finally:
            await during.aclose()
    finally:
        await old.aclose()
    new_only = SecretStore(url, Keyring(K2), table=table)
    try:
        assert await new_only.latest(["a", "b"]) == {"a": b"va2", "b": b"vb"}
    finally:
        await new_only.aclose()
    old_only = SecretStore(url, Keyring(K1), table=table)
    try:
        with pytest.raises(VaultError, match=f"master key {key_id(K2)}"):
            await old_only.latest(["a"])
    finally:
        await old_only.aclose()


async def test_bad_names_and_values_are_refused(tmp_path: Path) -> None:
    store = SecretStore(f"sqlite:///{tmp_path / 's.db'}", Keyring(K1))
    try:
        for name in ("", "-x", "a b", "x" * 200, "a/b"):
            with pytest.raises(VaultError, match="bad secret name"):
                await store.set(name, b"v")
        with pytest.raises(VaultError, match="empty"):
            await store.set("ok", b"")
        with pytest.raises(VaultError, match="at most"):
            await store.set("ok", b"x" * 70_000)
    finally:
        await store.aclose()


async def test_prune_keeps_only_the_newest_versions(where: tuple[str, str]) -> None:
    store = SecretStore(*where[:1], Keyring(K1), table=where[1])
    try:
        for i in range(4):
            await store.rotate("stile.oauth.up.abc", f"grant-{i}".encode(), create=True)
        assert await store.prune("stile.oauth.up.abc", keep=1) == 3
        assert [v for v, _ in await store.versions("stile.oauth.up.abc")] == [4]
        assert await store.prune("stile.oauth.up.abc", keep=1) == 0
        assert await store.rotate("stile.oauth.up.abc", b"grant-5") == 5  # numbering goes on
        assert await store.latest(["stile.oauth.up.abc"]) == {"stile.oauth.up.abc": b"grant-5"}
        assert await store.prune("nothing-here") == 0
    finally:
        await store.aclose()
