"""The sealed consent links and states of `identity: user_oauth`: forgery, expiry, replay, another browser."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stile.vault.consent_seal import ConsentRefused, Sealer, new_oauth_key, pkce_pair


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _sealer(clock: Clock | None = None) -> Sealer:
    sealer = Sealer(clock or Clock())
    sealer.load(new_oauth_key())
    return sealer


def test_a_link_opens_once_for_the_user_and_upstream_it_names() -> None:
    sealer = _sealer()
    sealed, made = sealer.link("alice", "github", 600)
    opened = sealer.open_link(sealed)
    assert (opened.user, opened.upstream, opened.nonce) == ("alice", "github", made.nonce)
    with pytest.raises(ConsentRefused, match="already used"):
        sealer.open_link(sealed)


def test_an_expired_link_and_state_are_refused() -> None:
    clock = Clock()
    sealer = _sealer(clock)
    sealed, _ = sealer.link("alice", "github", 60)
    other, link = sealer.link("bob", "github", 60)
    state = sealer.state(sealer.open_link(other), "verifier", "binder")
    clock.now += 61
    with pytest.raises(ConsentRefused, match="expired"):
        sealer.open_link(sealed)
    with pytest.raises(ConsentRefused, match="expired"):
        sealer.open_state(state, lambda nonce: "binder")
    assert link.user == "bob"


def test_a_state_needs_the_binder_of_the_browser_that_opened_the_link_and_opens_once() -> None:
    sealer = _sealer()
    link = sealer.open_link(sealer.link("alice", "github", 600)[0])
    state = sealer.state(link, "the-verifier", "browser-a")
    asked: list[str] = []
    with pytest.raises(ConsentRefused, match="another browser"):
        sealer.open_state(state, lambda nonce: asked.append(nonce) or "browser-b")
    with pytest.raises(ConsentRefused, match="another browser"):
        sealer.open_state(state, lambda nonce: None)
    assert asked == [link.nonce]  # the cookie is looked up by the link's nonce
    pending = sealer.open_state(state, lambda nonce: "browser-a")  # the refusals did not consume it
    assert (pending.user, pending.upstream, pending.verifier) == ("alice", "github", "the-verifier")
    with pytest.raises(ConsentRefused, match="already used"):
        sealer.open_state(state, lambda nonce: "browser-a")


def test_a_link_is_not_a_state_and_another_deployment_cannot_open_either() -> None:
    sealer, stranger = _sealer(), _sealer()
    sealed, link = sealer.link("alice", "github", 600)
    with pytest.raises(ConsentRefused, match="not valid"):
        sealer.open_state(sealed, lambda nonce: "x")  # purpose is authenticated
    with pytest.raises(ConsentRefused, match="not valid"):
        stranger.open_link(sealed)
    state = sealer.state(link, "v", "b")
    with pytest.raises(ConsentRefused, match="not valid"):
        sealer.open_link(state)


@given(st.text(max_size=200))
def test_any_garbage_is_refused_cleanly(text: str) -> None:
    sealer = _sealer()
    with pytest.raises(ConsentRefused):
        sealer.open_link(text)
    with pytest.raises(ConsentRefused):
        sealer.open_state(text, lambda nonce: "b")


def test_a_tampered_link_is_refused() -> None:
    sealer = _sealer()
    sealed, _ = sealer.link("alice", "github", 600)
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(ConsentRefused, match="not valid"):
        sealer.open_link(flipped)
    with pytest.raises(ConsentRefused, match="not valid"):
        sealer.open_link(sealed * 100)  # over the size limit


def test_pkce_is_s256_of_the_verifier() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert challenge == digest
    assert pkce_pair()[0] != verifier
