"""Legacy session ids sealed with AES-GCM: any replica with the key opens them; nobody else can."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stile.core.sessions import SessionSealer, decode_key, resolve_key

KEY = secrets.token_bytes(32)
CAPS: dict[str, Any] = {"sampling": {}, "elicitation": {"form": {}}}
INFO = {"name": "agent", "version": "1.2.3"}


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_a_minted_id_opens_to_the_same_session_state() -> None:
    sealer = SessionSealer(KEY)
    token, sess = sealer.mint("2025-06-18", "support", CAPS, INFO)
    opened = sealer.open(token, "support")
    assert opened == sess
    assert (opened.version, opened.virtual_server, opened.client_caps, opened.client_info) == (
        "2025-06-18", "support", CAPS, INFO)


def test_another_sealer_with_the_same_key_opens_the_id_as_a_second_replica_would() -> None:
    token, sess = SessionSealer(KEY).mint("2025-11-25", "vs", {}, None)
    assert SessionSealer(bytes(KEY)).open(token, "vs") == sess


def test_an_id_is_visible_ascii_as_the_mcp_session_id_header_requires() -> None:
    token, _ = SessionSealer(KEY).mint("2025-11-25", "vs", CAPS, INFO)
    assert token and all(0x21 <= ord(c) <= 0x7E for c in token)


def test_two_ids_for_identical_state_differ_and_carry_distinct_nonces() -> None:
    sealer = SessionSealer(KEY)
    (t1, s1), (t2, s2) = sealer.mint("2025-11-25", "vs", {}, None), sealer.mint("2025-11-25", "vs", {}, None)
    assert t1 != t2
    assert s1.nonce != s2.nonce


def test_the_id_does_not_reveal_the_client_info_it_carries() -> None:
    token, _ = SessionSealer(KEY).mint("2025-11-25", "vs", {}, {"name": "very-identifiable-agent"})
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"very-identifiable-agent" not in raw


def test_an_id_sealed_with_another_key_does_not_open() -> None:
    token, _ = SessionSealer(secrets.token_bytes(32)).mint("2025-11-25", "vs", {}, None)
    assert SessionSealer(KEY).open(token, "vs") is None


def test_an_id_minted_for_one_virtual_server_does_not_open_on_another() -> None:
    token, _ = SessionSealer(KEY).mint("2025-11-25", "support", {}, None)
    assert SessionSealer(KEY).open(token, "admin") is None


def test_flipping_any_single_character_of_an_id_makes_it_unopenable() -> None:
    sealer = SessionSealer(KEY)
    token, _ = sealer.mint("2025-11-25", "vs", CAPS, INFO)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i in range(len(token)):
        other = alphabet[(alphabet.index(token[i]) + 1) % len(alphabet)]
        tampered = token[:i] + other + token[i + 1:]
        opened = sealer.open(tampered, "vs")
        # The last character may carry only padding bits; any real change must fail authentication.
        if base64.urlsafe_b64decode(tampered + "==") != base64.urlsafe_b64decode(token + "=="):
            assert opened is None, f"tampered position {i} still opened"


@pytest.mark.parametrize("token", ["", "x", "not-base64!!", "A" * 40, "é" * 10, "A" * 20000, "====", "\x00"])
def test_garbage_ids_open_to_none_instead_of_raising(token: str) -> None:
    assert SessionSealer(KEY).open(token, "vs") is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_opening_arbitrary_text_never_raises_and_never_succeeds(token: str) -> None:
    assert SessionSealer(KEY).open(token, "vs") is None


def test_truncating_an_id_makes_it_unopenable() -> None:
    sealer = SessionSealer(KEY)
    token, _ = sealer.mint("2025-11-25", "vs", {}, None)
    for cut in (1, 4, len(token) // 2, len(token) - 30):
        assert sealer.open(token[:-cut], "vs") is None


# --- keys --------------------------------------------------------------------------------------------


def test_decode_key_accepts_base64_of_exactly_32_bytes() -> None:
    assert decode_key(b64(KEY)) == KEY
    assert decode_key("  " + b64(KEY) + "\n") == KEY


@pytest.mark.parametrize(("text", "why"), [("not base64!", "must be base64"), (b64(b"x" * 16), "got 16")])
def test_decode_key_refuses_malformed_or_short_keys_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_key(text)


def test_resolve_key_prefers_the_environment_over_config(monkeypatch: pytest.MonkeyPatch) -> None:
    env_key, cfg_key = secrets.token_bytes(32), secrets.token_bytes(32)
    monkeypatch.setenv("STILE_SESSION_KEY", b64(env_key))
    assert resolve_key(b64(cfg_key)) == (env_key, "STILE_SESSION_KEY")


def test_resolve_key_uses_config_when_the_environment_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_key = secrets.token_bytes(32)
    monkeypatch.delenv("STILE_SESSION_KEY", raising=False)
    assert resolve_key(b64(cfg_key)) == (cfg_key, "config session_key")


def test_resolve_key_without_any_setting_is_random_per_call_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STILE_SESSION_KEY", raising=False)
    (k1, why), (k2, _) = resolve_key(None), resolve_key(None)
    assert len(k1) == 32 and k1 != k2
    assert "random" in why


def test_resolve_key_refuses_a_malformed_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILE_SESSION_KEY", "too-short")
    with pytest.raises(ValueError):
        resolve_key(None)


# --- owners ------------------------------------------------------------------------------------------


def test_owners_stay_apart_whatever_characters_their_claims_contain() -> None:
    from stile.core.context import Principal
    from stile.core.sessions import owner_of

    assert owner_of(Principal(agent="a:b", user="c", method="jwt")) != owner_of(
        Principal(agent="a", user="b:c", method="jwt"))
    assert owner_of(Principal(agent="a", user=None, method="jwt")) != owner_of(
        Principal(agent="a", user="", method="jwt"))
    assert owner_of(Principal()) == owner_of(None) == ""
