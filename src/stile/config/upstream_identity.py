"""Per-user identity to upstreams: `token_exchange` (RFC 8693) and `user_oauth` (authorization code + PKCE).

Both blocks sit under an upstream (`upstreams.<name>.token_exchange` / `.oauth`); client secrets are vault
references (`${secret:NAME}`), never literals (docs/credentials.md).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SECRET_ONLY = re.compile(r"\$\{secret:[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\}")
_URL = re.compile(r"^https?://[^\s]+$")
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret_ref(value: str | None) -> str | None:
    if value is not None and not _SECRET_ONLY.fullmatch(value):
        raise ValueError("a client secret must be a vault reference `${secret:NAME}` (stile secrets set NAME)")
    return value


def _url(value: str | None) -> str | None:
    if value is not None and not _URL.match(value):
        raise ValueError(f"{value!r} must be an http:// or https:// URL")
    return value


class TokenExchangeConfig(_Strict):
    """RFC 8693: the caller's validated token is exchanged at `token_endpoint` for one meant for the upstream."""

    token_endpoint: str
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: str  # ${secret:NAME}
    audience: str | None = None  # default: the upstream's `url`
    resource: str | None = None  # RFC 8707 resource; default: the upstream's `url`
    scopes: list[str] = Field(default_factory=list)
    subject_token_type: str = ACCESS_TOKEN_TYPE
    timeout: float = Field(default=10.0, gt=0, le=120)
    reuse_margin: float = Field(default=30.0, ge=0, le=3600, description="stop reusing a token this close to exp")
    max_cached: int = Field(default=10_000, ge=1, le=1_000_000)

    @field_validator("client_secret")
    @classmethod
    def _secret(cls, value: str) -> str | None:
        return _secret_ref(value)

    @field_validator("token_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str | None:
        return _url(value)


class UserOAuthConfig(_Strict):
    """Stile as the OAuth client of the upstream's authorization server, one consent per user."""

    client_id: str = Field(min_length=1, max_length=256)
    client_secret: str | None = None  # ${secret:NAME}; absent: a public client (PKCE only)
    resource_metadata: str | None = None  # RFC 9728 URL; default: discovered beside the upstream's `url`
    issuer: str | None = None  # the authorization server Stile is registered with (its metadata must say so)
    authorization_endpoint: str | None = None  # with token_endpoint: no discovery at all
    token_endpoint: str | None = None
    scopes: list[str] = Field(default_factory=list)
    match_user: bool = Field(default=False, description="the approving account's `sub` must be the Stile user")
    consent_seconds: float = Field(default=600.0, gt=0, le=3600, description="a consent link's lifetime")
    timeout: float = Field(default=10.0, gt=0, le=120)
    refresh_margin: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("client_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return _secret_ref(value)

    @field_validator("resource_metadata", "issuer", "authorization_endpoint", "token_endpoint")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return _url(value)

    @model_validator(mode="after")
    def _both_endpoints(self) -> UserOAuthConfig:
        if (self.authorization_endpoint is None) != (self.token_endpoint is None):
            raise ValueError("set both `authorization_endpoint` and `token_endpoint`, or neither (discovery)")
        if self.client_secret is not None and self.issuer is None and self.token_endpoint is None:
            # discovery starts from the upstream's own metadata: it must not choose where the secret goes
            raise ValueError("a `client_secret` needs `issuer` (or `token_endpoint`): the client secret is sent "
                             "only to the authorization server it was issued by")
        return self
