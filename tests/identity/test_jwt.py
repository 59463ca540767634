"""JWT verifier: happy paths and every applicable item of the attack checklist in docs/security.md §4."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from stile.identity.jwt import MAX_TOKEN_LENGTH, IssuerConfig, JwtVerifier, TokenError, VerifiedToken

ISS = "https://issuer.example"
AUD = "https://stile.example/mcp"
NOW = 1_800_000_000.0
HMAC_SECRET = b"0123456789abcdef0123456789abcdef"  # 32 bytes


# --- helpers ---------------------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def enc(value: Any) -> str:
    return b64(value.encode() if isinstance(value, str) else json.dumps(value).encode())


def sign(alg: str, key: Key, signing_input: str) -> str:
    return b64(JWSRegistry.algorithms[alg].sign(signing_input.encode(), key))


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "exp": NOW + 300, "iat": NOW - 10}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def make(key: Key, alg: str = "RS256", *, header: dict[str, Any] | str | None = None,
         payload: dict[str, Any] | str | None = None, kid: str | None = "k1") -> str:
    """A token built by hand (so malformed headers survive), signed by ``key`` with ``alg``."""
    if header is None:
        header = {"alg": alg, "typ": "at+jwt", **({"kid": kid} if kid else {})}
    signing_input = f"{enc(header)}.{enc(claims() if payload is None else payload)}"
    return f"{signing_input}.{sign(alg, key, signing_input)}"


def jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


class JwksServer:
    def __init__(self) -> None:
        self.doc: dict[str, Any] | bytes = {"keys": []}
        self.status = 200
        self.count = 0
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.count += 1
        if isinstance(self.doc, bytes):
            return web.Response(status=self.status, body=self.doc, content_type="application/json")
        return web.json_response(self.doc, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/jwks"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture(scope="module")
def rsa() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1"})


@pytest.fixture(scope="module")
def ec() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "k1"})


@pytest.fixture(scope="module")
def ed() -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})


@pytest.fixture(scope="module")
def attacker() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1"})


@pytest.fixture
async def server(rsa: RSAKey) -> AsyncIterator[JwksServer]:
    srv = JwksServer()
    srv.doc = jwks(rsa)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


VerifierFactory = Callable[..., JwtVerifier]


@pytest.fixture
def verifier(server: JwksServer, clock: Clock) -> VerifierFactory:
    def build(**over: Any) -> JwtVerifier:
        config: dict[str, Any] = {"issuer": ISS, "audience": AUD, "jwks_url": server.url}
        config.update(over)
        return JwtVerifier([IssuerConfig(**config)], now=clock)
    return build


async def rejected(v: JwtVerifier, token: str, detail: str = "", **kw: Any) -> TokenError:
    with pytest.raises(TokenError) as info:
        await v.verify(token, **kw)
    assert detail.lower() in info.value.detail.lower(), info.value.detail
    return info.value


# --- happy paths -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "alg"), [("rsa", "RS256"), ("ec", "ES256"), ("ed", "EdDSA")])
async def test_happy_path_per_algorithm(kind: str, alg: str, server: JwksServer, verifier: VerifierFactory,
                                        request: pytest.FixtureRequest) -> None:
    key: Key = request.getfixturevalue(kind)
    server.doc = jwks(key)
    v = verifier()
    for _ in range(3):
        tok = await v.verify(make(key, alg))
        assert tok == VerifiedToken(subject="alice", client_id=None, issuer=ISS, roles=(), claims=claims(),
                                    email=None)
    assert server.count == 1  # cached


async def test_static_keys_and_token_without_kid(ec: ECKey, clock: Clock) -> None:
    v = JwtVerifier([IssuerConfig(ISS, AUD, algorithms=("ES256",), static_keys=jwks(ec))], now=clock)
    assert (await v.verify(make(ec, "ES256", kid=None))).subject == "alice"


async def test_hs256_with_explicit_allowlist_and_long_key(clock: Clock) -> None:
    key = OctKey.import_key(HMAC_SECRET, parameters={"kid": "k1"})
    v = JwtVerifier([IssuerConfig(ISS, AUD, algorithms=("HS256",), static_keys=jwks_private(key))], now=clock)
    assert (await v.verify(make(key, "HS256"))).subject == "alice"
    await rejected(v, make(OctKey.import_key(b"x" * 32, parameters={"kid": "k1"}), "HS256"), "bad signature")


def jwks_private(*keys: Key) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=True) for k in keys]}


@pytest.mark.parametrize(("value", "roles"), [
    (["admin", "dev"], ("admin", "dev")),
    ("admin  dev ops", ("admin", "dev", "ops")),
    (None, ()),
    ([], ()),
])
async def test_roles_mapping(value: Any, roles: tuple[str, ...], rsa: RSAKey, verifier: VerifierFactory) -> None:
    tok = await verifier().verify(make(rsa, payload=claims(groups=value)))
    assert tok.roles == roles


async def test_custom_roles_claim_and_bad_roles(rsa: RSAKey, verifier: VerifierFactory) -> None:
    v = verifier(roles_claim="roles")
    assert (await v.verify(make(rsa, payload=claims(roles=["a"], groups=["b"])))).roles == ("a",)
    await rejected(v, make(rsa, payload=claims(roles=["a", 1])), "roles")
    await rejected(v, make(rsa, payload=claims(roles={"a": 1})), "roles")
    assert (await verifier(roles_claim=None).verify(make(rsa, payload=claims(groups=["b"])))).roles == ()


async def test_client_id_and_email(rsa: RSAKey, verifier: VerifierFactory) -> None:
    v = verifier()
    tok = await v.verify(make(rsa, payload=claims(azp="app-1", client_id="other", email="a@example.com")))
    assert (tok.client_id, tok.email) == ("app-1", "a@example.com")
    assert (await v.verify(make(rsa, payload=claims(client_id="app-2")))).client_id == "app-2"
    await rejected(v, make(rsa, payload=claims(sub=42)), "sub")


# --- §4.1 alg none ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
@pytest.mark.parametrize("signature", ["", "stripped"])
async def test_1_alg_none(alg: str, signature: str, rsa: RSAKey, verifier: VerifierFactory) -> None:
    real = make(rsa).split(".")
    header = enc({"alg": alg, "kid": "k1"})
    token = f"{header}.{real[1]}." if signature == "" else f"{header}.{real[1]}"
    await rejected(verifier(), token)


async def test_1_empty_signature_with_real_alg(rsa: RSAKey, verifier: VerifierFactory) -> None:
    head, body, _ = make(rsa).split(".")
    await rejected(verifier(), f"{head}.{body}.", "signature")


# --- §4.2 HS confusion -----------------------------------------------------------------------------------------

def public_forms(rsa: RSAKey) -> dict[str, bytes]:
    pub = rsa.get_op_key("verify")
    return {
        "pem": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pkcs1": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "ssh": pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk": json.dumps(rsa.as_dict(private=False)).encode(),
    }


@pytest.mark.parametrize("form", ["pem", "pkcs1", "ssh", "jwk"])
@pytest.mark.parametrize("hs", ["HS256", "HS384", "HS512"])
async def test_2_hs_confusion_with_public_key_as_secret(form: str, hs: str, rsa: RSAKey,
                                                        verifier: VerifierFactory) -> None:
    header = enc({"alg": hs, "kid": "k1"})
    body = enc(claims())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[hs]
    # HMAC by hand so joserfc's own key guards don't interfere with forging the token
    mac = hmac.new(public_forms(rsa)[form], f"{header}.{body}".encode(), digest).digest()
    token = f"{header}.{body}.{b64(mac)}"
    await rejected(verifier(), token, "not allowed")  # RS-only issuer
    # an HS issuer whose key set also holds the RSA public key: the RSA key is never used as a secret
    good = OctKey.import_key(HMAC_SECRET, parameters={"kid": "k2"})
    doc = {"keys": [*jwks(rsa)["keys"], *jwks_private(good)["keys"]]}
    v = JwtVerifier([IssuerConfig(ISS, AUD, algorithms=(hs,), static_keys=doc)], now=Clock())
    await rejected(v, token)


def test_2_hs_and_asymmetric_never_share_an_allowlist(rsa: RSAKey) -> None:
    doc = jwks_private(OctKey.import_key(HMAC_SECRET))
    with pytest.raises(ValueError, match="share"):
        config_check(algorithms=("RS256", "HS256"), static_keys=doc)


def config_check(**kw: Any) -> JwtVerifier:
    return JwtVerifier([IssuerConfig(ISS, AUD, **kw)])


# --- §4.3 kid injection, unknown kid ---------------------------------------------------------------------------

@pytest.mark.parametrize("kid", ["../../../../etc/passwd", "' OR '1'='1", "k1\0", "/dev/null", "x" * 300, "k1 "])
async def test_3_kid_injection(kid: str, rsa: RSAKey, server: JwksServer, verifier: VerifierFactory) -> None:
    v = verifier()
    await rejected(v, make(rsa, kid=kid))
    assert server.count <= 2  # initial fetch + at most one bounded refetch


async def test_3_kid_wrong_type(rsa: RSAKey, verifier: VerifierFactory) -> None:
    for kid in (1, ["k1"], {"a": 1}, ""):
        await rejected(verifier(), make(rsa, header={"alg": "RS256", "kid": kid}), "kid")


async def test_3_unknown_kid_refetch_is_bounded(rsa: RSAKey, server: JwksServer, verifier: VerifierFactory,
                                                clock: Clock) -> None:
    v = verifier(min_refetch_interval=30.0)
    await v.verify(make(rsa))
    assert server.count == 1
    results = await asyncio.gather(*(v.verify(make(rsa, kid=f"nope{i}")) for i in range(20)),
                                   return_exceptions=True)
    assert all(isinstance(r, TokenError) for r in results)
    assert server.count == 2
    clock.t += 29
    await rejected(v, make(rsa, kid="nope", payload=claims(exp=clock.t + 60)))
    assert server.count == 2
    clock.t += 1
    await rejected(v, make(rsa, kid="nope", payload=claims(exp=clock.t + 60)))
    assert server.count == 3
    assert (await v.verify(make(rsa, payload=claims(exp=clock.t + 60)))).subject == "alice"


# --- §4.4 jku / x5u / jwk / x5c --------------------------------------------------------------------------------

@pytest.mark.parametrize("param", ["jku", "x5u", "jwk", "x5c"])
@pytest.mark.parametrize("signer", ["attacker", "rsa"])
async def test_4_key_location_headers_rejected(param: str, signer: str, rsa: RSAKey, attacker: RSAKey,
                                               verifier: VerifierFactory) -> None:
    evil = JwksServer()
    evil.doc = jwks(attacker)
    await evil.start()
    try:
        key = attacker if signer == "attacker" else rsa
        value: Any = {"jku": evil.url, "x5u": evil.url, "jwk": attacker.as_dict(private=False),
                      "x5c": ["MIIB"]}[param]
        await rejected(verifier(), make(key, header={"alg": "RS256", "kid": "k1", param: value}), param)
        assert evil.count == 0  # never dereferenced
    finally:
        await evil.stop()


# --- §4.5 crit (and other unknown parameters) ------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{"crit": ["exp"], "exp": 1}, {"crit": []}, {"crit": ["b64"], "b64": False},
                                   {"zip": "DEF"}, {"cty": "JWT"}, {"enc": "A256GCM"}, {"foo": "bar"}])
async def test_5_crit_and_unknown_header_parameters(extra: dict[str, Any], rsa: RSAKey,
                                                    verifier: VerifierFactory) -> None:
    await rejected(verifier(), make(rsa, header={"alg": "RS256", "kid": "k1", **extra}), "not allowed")


# --- §4.6 iss exact match --------------------------------------------------------------------------------------

@pytest.mark.parametrize("iss", ["https://issuer.exampl", "https://issuer.example/", "https://issuer.example.evil",
                                 "HTTPS://ISSUER.EXAMPLE", "issuer.example", "", [ISS], None, 1])
async def test_6_iss_exact(iss: Any, rsa: RSAKey, verifier: VerifierFactory) -> None:
    await rejected(verifier(), make(rsa, payload=claims(iss=iss)), "issuer")


async def test_6_issuer_selects_its_own_keys(rsa: RSAKey, ec: ECKey, clock: Clock) -> None:
    other = IssuerConfig("https://other.example", AUD, static_keys=jwks(ec))
    mine = IssuerConfig(ISS, AUD, static_keys=jwks(rsa))
    v = JwtVerifier([mine, other], now=clock)
    assert (await v.verify(make(ec, "ES256", payload=claims(iss="https://other.example")))).issuer == other.issuer
    await rejected(v, make(rsa, payload=claims(iss="https://other.example")), "no key")
    await rejected(v, make(ec, "ES256"), "no key")


# --- §4.7 aud --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("aud", "ok"), [
    (AUD, True), ([AUD], True), (["https://x.example", AUD], True),
    (AUD + "/", False), ("https://stile.example", False), (AUD.upper(), False), (["https://x.example"], False),
    ([], False), (None, False), ([AUD, 1], False), ({"aud": AUD}, False), (1, False),
])
async def test_7_aud(aud: Any, ok: bool, rsa: RSAKey, verifier: VerifierFactory) -> None:
    token = make(rsa, payload=claims(aud=aud))
    if ok:
        assert (await verifier().verify(token)).subject == "alice"
    else:
        await rejected(verifier(), token, "aud")


async def test_7_aud_override_and_configured_list(rsa: RSAKey, verifier: VerifierFactory) -> None:
    vs = "https://stile.example/servers/a"
    v = verifier()
    assert (await v.verify(make(rsa, payload=claims(aud=vs)), audience=vs)).subject == "alice"
    await rejected(v, make(rsa), "aud", audience=vs)  # the configured audience no longer applies
    v2 = verifier(audience=["https://a.example", AUD])
    assert (await v2.verify(make(rsa))).subject == "alice"
    unset_values: list[str | list[str]] = ["", []]
    for unset in unset_values:  # no configured audience: only a per-call audience can match
        v3 = verifier(audience=unset)
        await rejected(v3, make(rsa), "aud")
        await rejected(v3, make(rsa, payload=claims(aud="")), "aud", audience="")
        assert (await v3.verify(make(rsa), audience=AUD)).subject == "alice"


# --- §4.8 exp / nbf / iat and leeway ---------------------------------------------------------------------------

@pytest.mark.parametrize(("claim", "offset", "ok"), [
    ("exp", 31, True), ("exp", -29, True), ("exp", -30, False), ("exp", -31, False), ("exp", -3600, False),
    ("nbf", 29, True), ("nbf", 30, True), ("nbf", 31, False), ("nbf", -100, True),
    ("iat", 29, True), ("iat", 30, True), ("iat", 31, False), ("iat", -100, True),
])
async def test_8_time_claims_leeway(claim: str, offset: int, ok: bool, rsa: RSAKey, verifier: VerifierFactory) -> None:
    token = make(rsa, payload=claims(**{claim: NOW + offset}))
    if ok:
        assert (await verifier(leeway=30).verify(token)).subject == "alice"
    else:
        await rejected(verifier(leeway=30), token, claim)


@pytest.mark.parametrize("exp", [None, "1900000000", True, [NOW + 60], {"v": 1}])
async def test_8_exp_required_and_numeric(exp: Any, rsa: RSAKey, verifier: VerifierFactory) -> None:
    await rejected(verifier(), make(rsa, payload=claims(exp=exp)), "exp")


@pytest.mark.parametrize("leeway", [-1, 61, 3600])
def test_8_leeway_bounded(leeway: int, rsa: RSAKey) -> None:
    with pytest.raises(ValueError, match="leeway"):
        config_check(static_keys=jwks(rsa), leeway=leeway)


# --- §4.9 typ --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("typ", "ok"), [
    ("JWT", True), ("jwt", True), ("at+jwt", True), ("application/at+jwt", True), ("AT+JWT", True),
    ("refresh+jwt", False), ("id_token+jwt", False), ("logout+jwt", False), ("JOSE", False), ("JWE", False),
    ("", False), (1, False), (["JWT"], False),
])
async def test_9_typ(typ: Any, ok: bool, rsa: RSAKey, verifier: VerifierFactory) -> None:
    token = make(rsa, header={"alg": "RS256", "kid": "k1", "typ": typ})
    if ok:
        assert (await verifier().verify(token)).subject == "alice"
    else:
        await rejected(verifier(), token, "typ")


# --- §4.10 / §4.11 sizes, segments, JWE ------------------------------------------------------------------------

async def test_10_oversized_token_rejected_before_decoding(rsa: RSAKey, server: JwksServer,
                                                           verifier: VerifierFactory) -> None:
    v = verifier()
    big = make(rsa, payload=claims(pad="x" * MAX_TOKEN_LENGTH))
    await rejected(v, big, "longer")
    await rejected(v, "a" * (MAX_TOKEN_LENGTH + 1), "longer")
    await rejected(v, enc({"alg": "RS256", "x": "y" * 100_000}) + ".e30.sig", "longer")
    assert server.count == 0  # never got as far as the keys


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "a.b.c.d.e", "....", "a..c", "..", ".."])
async def test_10_segment_count_and_empty_segments(token: str, verifier: VerifierFactory) -> None:
    await rejected(verifier(), token)


async def test_11_jwe_rejected(verifier: VerifierFactory) -> None:
    header = enc({"alg": "RSA-OAEP-256", "enc": "A256GCM", "zip": "DEF"})
    await rejected(verifier(), f"{header}.{b64(b'k' * 32)}.{b64(b'iv')}.{b64(b'ct' * 100)}.{b64(b'tag')}",
                   "segments")


async def test_10_non_string_token(verifier: VerifierFactory) -> None:
    await rejected(verifier(), b"a.b.c")  # type: ignore[arg-type]


# --- §4.12 canonical base64url, duplicate JSON keys ------------------------------------------------------------

def noncanonical(segment: str) -> str:
    """Same bytes, different last character (unused trailing bits set)."""
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for c in alphabet:
        alt = segment[:-1] + c
        if alt != segment and base64.urlsafe_b64decode(alt + "=" * (-len(alt) % 4)) == raw:
            return alt
    raise AssertionError("segment length is a multiple of 4")


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize("mutation", ["pad", "trailing-bits", "plus-slash", "space", "newline"])
async def test_12_non_canonical_base64(part: int, mutation: str, rsa: RSAKey, verifier: VerifierFactory) -> None:
    # an RSA-2048 signature is 342 chars; pick claims/header whose encodings are not multiples of 4 either
    token = make(rsa, header={"alg": "RS256", "kid": "k1"}, payload=claims(sub="bob"))
    segs = token.split(".")
    assert all(len(s) % 4 for s in segs)
    seg = segs[part]
    segs[part] = {"pad": seg + "=" * (-len(seg) % 4), "trailing-bits": noncanonical(seg),
                  "plus-slash": seg.replace("-", "+").replace("_", "/") if ("-" in seg or "_" in seg) else seg + "+",
                  "space": seg[:5] + " " + seg[5:], "newline": seg + "\n"}[mutation]
    assert (await verifier().verify(token)).subject == "bob"
    await rejected(verifier(), ".".join(segs), "base64")


CLAIMS_PREFIX = f'{{"iss":"{ISS}","aud":"{AUD}"'


@pytest.mark.parametrize(("where", "raw"), [
    ("header", '{"alg":"RS256","kid":"k1","alg":"none"}'),
    ("header", '{"alg":"RS256","kid":"k1","kid":"k2"}'),
    ("claims", CLAIMS_PREFIX + ',"exp":1900000000,"aud":"other"}'),
    ("claims", CLAIMS_PREFIX + ',"exp":1900000000,"sub":"a","sub":"admin"}'),
    ("claims", CLAIMS_PREFIX + ',"exp":NaN}'),
    ("claims", CLAIMS_PREFIX + ',"exp":Infinity}'),
    ("claims", CLAIMS_PREFIX + ',"exp":-Infinity}'),
    ("claims", '["not", "an", "object"]'),
    ("header", '"RS256"'),
    ("header", '{"alg":"RS256"'),
    ("claims", "\xff\xfe"),
])
async def test_12_strict_json(where: str, raw: str, rsa: RSAKey, verifier: VerifierFactory) -> None:
    token = make(rsa, header=raw) if where == "header" else make(rsa, payload=raw)
    await rejected(verifier(), token, where)


# --- §4.13 HMAC key length and other config errors -------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 16, 31])
def test_13_short_hmac_key_rejected_at_config(size: int) -> None:
    doc = {"keys": [{"kty": "oct", "k": b64(b"k" * size), "kid": "k1"}]}
    with pytest.raises(ValueError, match="at least 32 bytes"):
        config_check(algorithms=("HS256",), static_keys=doc)


def test_13_hs_needs_an_oct_key(rsa: RSAKey) -> None:
    with pytest.raises(ValueError, match="oct"):
        config_check(algorithms=("HS256",), static_keys=jwks(rsa))
    with pytest.raises(ValueError, match="static"):
        config_check(algorithms=("HS256",), jwks_url="https://issuer.example/jwks")
    with pytest.raises(ValueError):
        config_check(algorithms=("HS256",), static_keys={"keys": [{"kty": "oct", "k": ""}]})


async def test_13_hmac_key_shorter_than_hash_unusable(clock: Clock) -> None:
    key = OctKey.import_key(HMAC_SECRET, parameters={"kid": "k1"})  # 32 bytes: fine for HS256, not HS512
    v = JwtVerifier([IssuerConfig(ISS, AUD, algorithms=("HS512",), static_keys=jwks_private(key))], now=clock)
    await rejected(v, make(key, "HS512"), "no key")


@pytest.mark.parametrize("kw", [
    {"algorithms": ("none",)}, {"algorithms": ()}, {"algorithms": ("RS1",)}, {"audience": [""]}, {"audience": [1]},
    {"jwks_url": "http://issuer.example/jwks"}, {"jwks_url": "ftp://127.0.0.1/jwks"},
    {"static_keys": {"keys": []}}, {"static_keys": {"nokeys": 1}},
    {"jwks_refresh_after": 7200.0}, {"issuer": ""},
])
def test_config_errors(kw: dict[str, Any], rsa: RSAKey) -> None:
    base: dict[str, Any] = {"issuer": ISS, "audience": AUD, "static_keys": jwks(rsa)}
    if "jwks_url" in kw:
        base.pop("static_keys")
    base.update(kw)
    with pytest.raises(ValueError):
        JwtVerifier([IssuerConfig(**base)])


def test_config_needs_issuers_once(rsa: RSAKey) -> None:
    with pytest.raises(ValueError):
        JwtVerifier([])
    config = IssuerConfig(ISS, AUD, static_keys=jwks(rsa))
    with pytest.raises(ValueError, match="twice"):
        JwtVerifier([config, config])
    with pytest.raises(ValueError, match="exactly one"):
        JwtVerifier([IssuerConfig(ISS, AUD, static_keys=jwks(rsa), jwks_url="https://issuer.example/jwks")])


# --- §4.14 JWKS rotation ---------------------------------------------------------------------------------------

async def test_14_new_kid_appears(rsa: RSAKey, ec: ECKey, server: JwksServer, verifier: VerifierFactory) -> None:
    v = verifier()
    await v.verify(make(rsa))
    new = ECKey.generate_key("P-256", parameters={"kid": "k2"})
    server.doc = jwks(rsa, new)
    assert (await v.verify(make(new, "ES256", kid="k2"))).subject == "alice"
    assert server.count == 2
    assert (await v.verify(make(rsa))).subject == "alice"
    assert server.count == 2


async def test_14_removed_key_rejected_after_refetch(rsa: RSAKey, server: JwksServer, verifier: VerifierFactory,
                                                     clock: Clock) -> None:
    v = verifier(jwks_refresh_after=300.0)
    await v.verify(make(rsa))
    new = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    server.doc = jwks(new)
    clock.t += 299
    assert (await v.verify(make(rsa, payload=claims(exp=clock.t + 60)))).subject == "alice"  # cache still fresh
    clock.t += 1  # refresh due: the set is replaced and k1 is gone
    await rejected(v, make(rsa, payload=claims(exp=clock.t + 60)), "no key")
    assert (await v.verify(make(new, kid="k2", payload=claims(exp=clock.t + 60)))).subject == "alice"


async def test_14_removed_key_rejected_after_unknown_kid_refetch(rsa: RSAKey, server: JwksServer,
                                                                 verifier: VerifierFactory) -> None:
    v = verifier()
    await v.verify(make(rsa))
    new = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    server.doc = jwks(new)
    assert (await v.verify(make(new, kid="k2"))).subject == "alice"
    await rejected(v, make(rsa), "no key")


async def test_14_same_kid_new_key(rsa: RSAKey, server: JwksServer, verifier: VerifierFactory, clock: Clock) -> None:
    v = verifier()
    await v.verify(make(rsa))
    replacement = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    server.doc = jwks(replacement)
    await rejected(v, make(replacement), "bad signature")  # same kid: no refetch on a bad signature
    clock.t += 300
    assert (await v.verify(make(replacement, payload=claims(exp=clock.t + 60)))).subject == "alice"


@pytest.mark.parametrize("outage", ["http-503", "garbage", "stopped", "too-big"])
async def test_14_endpoint_down(outage: str, rsa: RSAKey, server: JwksServer, verifier: VerifierFactory,
                                clock: Clock) -> None:
    v = verifier(jwks_refresh_after=300.0, jwks_max_age=3600.0, min_refetch_interval=30.0)
    await v.verify(make(rsa))
    if outage == "http-503":
        server.status = 503
    elif outage == "garbage":
        server.doc = b'{"keys": [], "keys": []}'
    elif outage == "too-big":
        server.doc = json.dumps({"keys": [], "pad": "x" * 300_000}).encode()
    else:
        await server.stop()
    count = server.count
    clock.t += 1000  # past refresh_after, within max_age: cached keys still serve
    assert (await v.verify(make(rsa, payload=claims(exp=clock.t + 60)))).subject == "alice"
    if outage != "stopped":
        assert server.count == count + 1
    clock.t += 10  # failed attempts are rate-limited too
    assert (await v.verify(make(rsa, payload=claims(exp=clock.t + 60)))).subject == "alice"
    if outage != "stopped":
        assert server.count == count + 1
    clock.t = NOW + 3600  # stale: fail closed
    err = await rejected(v, make(rsa, payload=claims(exp=clock.t + 60)), "no usable jwks")
    assert err.reason == "signing keys unavailable"


async def test_14_first_fetch_fails_closed(rsa: RSAKey, server: JwksServer, verifier: VerifierFactory,
                                           clock: Clock) -> None:
    server.status = 500
    v = verifier()
    await rejected(v, make(rsa), "no usable jwks")
    await rejected(v, make(rsa), "no usable jwks")
    assert server.count == 1
    server.status = 200
    clock.t += 30
    assert (await v.verify(make(rsa, payload=claims(exp=clock.t + 60)))).subject == "alice"


async def test_14_jwks_skips_unusable_and_symmetric_keys(rsa: RSAKey, server: JwksServer,
                                                         verifier: VerifierFactory) -> None:
    secret = OctKey.import_key(HMAC_SECRET, parameters={"kid": "h"})
    enc_key = {**rsa.as_dict(private=False), "kid": "e", "use": "enc"}
    server.doc = {"keys": [{"kty": "RSA", "kid": "bad"}, {"kty": "XYZ"}, "junk", enc_key,
                           *jwks_private(secret)["keys"], *jwks(rsa)["keys"]]}
    v = verifier(algorithms=("RS256",))
    assert (await v.verify(make(rsa))).subject == "alice"
    await rejected(v, make(rsa, kid="e"), "no key")


async def test_key_alg_pins_the_algorithm(clock: Clock) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "PS256"})
    v = JwtVerifier([IssuerConfig(ISS, AUD, algorithms=("RS256", "PS256"), static_keys=jwks(key))], now=clock)
    assert (await v.verify(make(key, "PS256"))).subject == "alice"
    await rejected(v, make(key, "RS256"), "no key")


async def test_ec_curve_must_match_alg(clock: Clock) -> None:
    key = ECKey.generate_key("P-384", parameters={"kid": "k1"})
    v = JwtVerifier([IssuerConfig(ISS, AUD, algorithms=("ES256", "ES384"), static_keys=jwks(key))], now=clock)
    assert (await v.verify(make(key, "ES384"))).subject == "alice"
    forged = make(key, "ES384").split(".")
    header = enc({"alg": "ES256", "kid": "k1"})
    await rejected(v, f"{header}.{forged[1]}.{forged[2]}", "no key")


async def test_signature_over_tampered_claims(rsa: RSAKey, verifier: VerifierFactory) -> None:
    head, _, sig = make(rsa).split(".")
    await rejected(verifier(), f"{head}.{enc(claims(sub='admin'))}.{sig}", "bad signature")


async def test_default_clock_and_fetch(rsa: RSAKey, server: JwksServer) -> None:
    v = JwtVerifier([IssuerConfig(ISS, AUD, jwks_url=server.url)])  # time.time() and the H1Pool fetch
    now = time.time()
    assert (await v.verify(make(rsa, payload=claims(exp=now + 60, iat=now)))).subject == "alice"
    await rejected(v, make(rsa, payload=claims(exp=now - 120, iat=now - 600)), "exp")
    assert server.count == 1


async def test_token_is_never_logged(rsa: RSAKey, server: JwksServer, verifier: VerifierFactory,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    v = verifier()
    good = make(rsa)
    await v.verify(good)
    bad = make(rsa, kid="unknown")
    err = await rejected(v, bad)
    server.status = 500
    await rejected(v, make(rsa, kid="other"))
    for token in (good, bad):
        for part in token.split("."):
            assert part not in caplog.text
            assert part not in err.detail and part not in str(err)
