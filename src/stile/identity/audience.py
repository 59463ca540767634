"""Which audience a bearer token must carry, and when the gateway cannot know it.

A JWT is accepted for a virtual server only if its `aud` is that server's canonical URL
(`public_url` + `/mcp/<vs>`), or the issuer's configured `audience`. Without `public_url` the canonical
URL is built from the Host header. On loopback that is safe (the Host check admits loopback names only);
on any other bind `allowed_hosts` is empty by default, so the caller would choose the audience: sending
`Host: other-service` would make a token minted for another service of the same IdP acceptable here.
So off loopback without `public_url`, tokens whose issuer has no fixed `audience` are refused (401,
saying why) and `serve` warns at startup. API keys carry no audience and keep working.
"""

from __future__ import annotations

from stile.config.model import GatewayConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
NO_AUDIENCE = ("bearer token refused: this gateway listens on a non-loopback address without public_url, so it "
               "cannot tell which audience a token must carry (set public_url to the URL clients use)")


def host_sets_audience(cfg: GatewayConfig, bind_host: str) -> bool:
    """True when the Host header may be trusted as the canonical URL (public_url set, or a loopback bind)."""
    return bool(cfg.public_url) or bind_host in LOOPBACK


def audience_warning(cfg: GatewayConfig, bind_host: str) -> str | None:
    """The startup warning for a gateway that will refuse bearer tokens for want of public_url, if any."""
    if host_sets_audience(cfg, bind_host):
        return None
    guarded = sorted(name for name, vs in cfg.virtual_servers.items() if vs.auth != "none")
    if not guarded:
        return None
    return (f"public_url is not set and the gateway binds {bind_host} (not loopback): bearer tokens (JWT) for "
            f"virtual servers {', '.join(guarded)} are refused, because their audience would come from the "
            "caller's Host header; set public_url to the URL clients use (API keys still work)")
