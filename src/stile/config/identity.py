"""Identity and access-control config: `state`, `auth`, `roles`, `rules` (public keys; keep them working)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JwtIssuerConfig(_Strict):
    issuer: str
    jwks_url: str | None = None
    jwks: dict[str, object] | None = Field(default=None, description="static keys, as a JWKS document")
    audience: str | list[str] | None = None  # default: the virtual server's canonical URL
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    roles_claim: str | None = "groups"
    leeway: int = Field(default=30, ge=0, le=60)

    @model_validator(mode="after")
    def _keys(self) -> JwtIssuerConfig:
        if (self.jwks_url is None) == (self.jwks is None):
            raise ValueError("set exactly one of `jwks_url` or `jwks`")
        return self


class DeclaredKey(_Strict):
    """An API key declared in config (GitOps): only its hash, as printed by `stile keys hash`."""

    name: str
    hash: str
    roles: list[str] = Field(default_factory=list)


class AuthConfig(_Strict):
    api_keys: bool = True
    key_cache_seconds: float = Field(default=2.0, ge=0, le=60)  # a revocation elsewhere takes effect within this
    keys: list[DeclaredKey] = Field(default_factory=list)
    jwt: list[JwtIssuerConfig] = Field(default_factory=list)
    scopes_supported: list[str] = Field(default_factory=list)
    authorization_servers: list[str] = Field(default_factory=list)  # default: the JWT issuers


class RoleConfig(_Strict):
    """What a role grants on the virtual servers it names. Everything is denied unless allowed; deny wins."""

    virtual_servers: list[str] | None = None  # None: every virtual server
    allow_tools: list[str] = Field(default_factory=list)
    deny_tools: list[str] = Field(default_factory=list)
    allow_resources: list[str] = Field(default_factory=list)  # `upstream.uri` globs; empty: no resource
    deny_resources: list[str] = Field(default_factory=list)
    allow_prompts: list[str] = Field(default_factory=list)  # `upstream.prompt` globs; empty: no prompt
    deny_prompts: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=list)  # globs over the virtual server's passthrough_methods
    read_only: bool = False  # only tools annotated readOnlyHint: true


class RuleConfig(_Strict):
    name: str
    allow: str | None = None
    deny: str | None = None
    reason: str = "denied by policy"
    mode: Literal["enforce", "shadow"] = "enforce"

    @model_validator(mode="after")
    def _one(self) -> RuleConfig:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("set exactly one of `allow` or `deny` (a CEL expression)")
        return self
