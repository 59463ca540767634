"""Identity assertions: claims, caching until shortly before expiry, key rotation, public JWKS."""

from __future__ import annotations

import json

from joserfc import jwt
from joserfc.jwk import KeySet

from stile.vault.assertion import REUSE_MARGIN, Minter, new_signing_key, token_id_hash


def test_claims_and_verification_against_the_published_jwks() -> None:
    m = Minter(clock=lambda: 1_000_000.0)
    m.load([new_signing_key()])
    token, jti = m.mint("https://gw", "alice", "chat-app", "https://up/mcp", "mcp:tools")
    jwks = m.jwks()
    assert all("d" not in k for k in jwks["keys"])
    claims = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"]).claims
    assert claims == {"iss": "https://gw", "sub": "alice", "act": {"sub": "chat-app"}, "aud": "https://up/mcp",
                      "scope": "mcp:tools", "iat": 1_000_000, "nbf": 999_995, "exp": 1_000_060, "jti": jti}
    assert len(token_id_hash(jti)) == 16 and jti not in token_id_hash(jti)


def test_tokens_are_reused_per_caller_until_shortly_before_expiry() -> None:
    now = [1_000_000.0]
    m = Minter(clock=lambda: now[0])
    m.load([new_signing_key()])
    first = m.mint("i", "alice", "app", "aud", "")
    assert m.mint("i", "alice", "app", "aud", "") == first
    assert m.mint("i", "bob", "app", "aud", "") != first
    now[0] += 60 - REUSE_MARGIN - 1
    assert m.mint("i", "alice", "app", "aud", "") == first
    now[0] += 2
    assert m.mint("i", "alice", "app", "aud", "") != first


def test_the_newest_key_signs_and_older_ones_stay_published() -> None:
    old, new = new_signing_key(), new_signing_key()
    m = Minter()
    m.load([new, old])
    token, _ = m.mint("i", "a", None, "aud", "")
    kids = [k["kid"] for k in m.jwks()["keys"]]
    assert kids == [json.loads(new)["kid"], json.loads(old)["kid"]]
    assert jwt.decode(token, KeySet.import_key_set(m.jwks())).header["kid"] == kids[0]
    assert "act" not in jwt.decode(token, KeySet.import_key_set(m.jwks())).claims  # no agent: no actor
