"""The few HTTP calls an OAuth client makes (token endpoint, metadata documents), with limits.

Every call has a deadline and a response size cap; every failure becomes an `OAuthHttpError` whose text is
safe to show (a reason and the `error` code an authorization server returned, never a token, a secret or the
server's free-text description, which may echo what it was sent).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any
from urllib.parse import quote

import aiohttp

MAX_BODY = 64 * 1024
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class OAuthHttpError(Exception):
    """A failed OAuth HTTP exchange; `reason` is safe to show. `status` is the HTTP status (0: none)."""

    def __init__(self, reason: str, status: int = 0, error: str | None = None, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.error = error
        self.timeout = timeout


def basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1 client_secret_basic: both parts form-urlencoded first."""
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


async def _read_json(resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    body = await resp.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise OAuthHttpError(f"{what}: response larger than {MAX_BODY} bytes", resp.status)
    try:
        value = json.loads(body)
    except ValueError:
        raise OAuthHttpError(f"{what}: HTTP {resp.status} with a body that is not JSON", resp.status) from None
    if not isinstance(value, dict):
        raise OAuthHttpError(f"{what}: HTTP {resp.status} with JSON that is not an object", resp.status)
    return value


async def post_form(http: aiohttp.ClientSession, url: str, form: dict[str, str], *, timeout: float,
                    authorization: str | None = None, what: str = "token endpoint") -> dict[str, Any]:
    """POST an application/x-www-form-urlencoded request; the JSON object of a 2xx answer."""
    headers = {"Accept": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        async with http.post(url, data=form, headers=headers, allow_redirects=False,
                             timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status >= 300:
                error = None
                try:
                    got = await _read_json(resp, what)
                    code = got.get("error")
                    error = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None
                except OAuthHttpError:
                    pass
                suffix = f" ({error})" if error else ""
                raise OAuthHttpError(f"{what} answered HTTP {resp.status}{suffix}", resp.status, error)
            return await _read_json(resp, what)
    except TimeoutError:
        raise OAuthHttpError(f"{what}: no answer within {timeout:g}s", timeout=True) from None
    except aiohttp.ClientError as exc:
        raise OAuthHttpError(f"{what} unreachable ({type(exc).__name__})") from None


async def get_json(http: aiohttp.ClientSession, url: str, *, timeout: float, what: str) -> dict[str, Any]:
    """GET a JSON metadata document (no redirects followed)."""
    try:
        async with http.get(url, headers={"Accept": "application/json"}, allow_redirects=False,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise OAuthHttpError(f"{what} answered HTTP {resp.status}", resp.status)
            return await _read_json(resp, what)
    except TimeoutError:
        raise OAuthHttpError(f"{what}: no answer within {timeout:g}s", timeout=True) from None
    except aiohttp.ClientError as exc:
        raise OAuthHttpError(f"{what} unreachable ({type(exc).__name__})") from None


def token_lifetime(answer: dict[str, Any]) -> float | None:
    """`expires_in` seconds of a token response, when valid."""
    value = answer.get("expires_in")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def token_id(token: str) -> str:
    """What the audit trail records of a token: sha256 of its `jti` when it is a JWT with one, else of the token."""
    claims = jwt_claims(token)
    jti = claims.get("jti") if claims is not None else None
    if isinstance(jti, str) and jti:
        return hashlib.sha256(jti.encode()).hexdigest()[:16]
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT received straight from the token endpoint (not verified: it came over the back
    channel from the server we called), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
