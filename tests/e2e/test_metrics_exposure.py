"""What /metrics and /readyz reveal, to whom, and how much a client can make them grow; forwarded addresses.

Two real gateways on loopback in front of the bundled notes upstream:
- `direct`: no `trusted_proxies`; clients are who their TCP peer says (127.0.0.1).
- `proxied`: `trusted_proxies: [127.0.0.0/8]`, so a loopback client sending `X-Forwarded-For: 203.0.113.7`
  stands for a remote client behind a proxy: that is how the tests reach the non-loopback branches while
  every socket stays on 127.0.0.1. It also has a metrics token, an admin key, a dead upstream and a tiny
  series cap.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stile.stores.keys import hash_for_config
from tests.e2e.helpers import LEGACY_HEADERS, initialize_body, modern_headers, modern_meta
from tests.support import free_port, notes_upstream, stile_server

DEV_KEY = "stile_dev_" + secrets.token_urlsafe(32)
STRANGER_KEY = "stile_stranger_" + secrets.token_urlsafe(32)
OPS_KEY = "stile_ops_" + secrets.token_urlsafe(32)
METRICS_TOKEN = secrets.token_urlsafe(32)
REMOTE = {"X-Forwarded-For": "203.0.113.7"}  # through the trusted (loopback) proxy: a remote client
SECRET_IN_URL = "hunter2-do-not-leak"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Gw:
    base: str
    trail: Path


def _keys() -> dict[str, Any]:
    return {"key_cache_seconds": 0, "keys": [
        {"name": "dev-bot", "hash": hash_for_config(DEV_KEY), "roles": ["dev"]},
        {"name": "stranger", "hash": hash_for_config(STRANGER_KEY), "roles": ["elsewhere"]},
        {"name": "ops", "hash": hash_for_config(OPS_KEY), "roles": ["admin"]}]}


ROLES = {"dev": {"allow_tools": ["notes.list_notes"]},
         "elsewhere": {"virtual_servers": ["open"], "allow_tools": ["notes.*"]},
         "admin": {"allow_tools": ["notes.*"]}}


@pytest.fixture(scope="module")
def notes() -> Iterator[str]:
    with notes_upstream() as url:
        yield url


@pytest.fixture(scope="module")
def direct(notes: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    tmp = tmp_path_factory.mktemp("direct")
    config = {"state": f"sqlite:///{tmp / 'state.db'}", "upstreams": {"notes": {"url": notes}},
              "virtual_servers": {"open": {"auth": "none"}, "keyed": {}}, "auth": _keys(), "roles": ROLES,
              "audit": {"store": False, "jsonl": str(tmp / "audit.jsonl")}}
    with stile_server(config) as base:
        yield Gw(base, tmp / "audit.jsonl")


@pytest.fixture(scope="module")
def proxied(notes: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    tmp = tmp_path_factory.mktemp("proxied")
    dead = f"http://127.0.0.1:{free_port()}/mcp?token={SECRET_IN_URL}"
    config = {"state": f"sqlite:///{tmp / 'state.db'}",
              "upstreams": {"notes": {"url": notes}, "down": {"url": dead, "connect_timeout": 1}},
              "virtual_servers": {"open": {"auth": "none", "upstreams": ["notes"]},
                                  "keyed": {"upstreams": ["notes"]}},
              "auth": _keys(), "roles": ROLES, "trusted_proxies": ["127.0.0.0/8"],
              "metrics": {"token": "${STILE_TEST_METRICS_TOKEN}"},
              "limits": {"max_metric_series": 10},
              "audit": {"store": False, "jsonl": str(tmp / "audit.jsonl")}}
    with stile_server(config, env={"STILE_TEST_METRICS_TOKEN": METRICS_TOKEN}) as base:
        yield Gw(base, tmp / "audit.jsonl")


async def _get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}{path}", headers=headers or {}) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


def _parse(text: bytes) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


async def _samples(base: str) -> Samples:
    status, _, body = await _get(base, "/metrics")
    assert status == 200, body
    return _parse(body)


async def _call(base: str, vs: str, name: str, key: str | None) -> dict[str, Any]:
    headers = modern_headers("tools/call", name)
    if key is not None:
        headers["X-API-Key"] = key
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": {}, "_meta": modern_meta()}}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/mcp/{vs}", json=body, headers=headers) as r:
        answer: dict[str, Any] = await r.json(content_type=None)
        return answer


async def _legacy_session(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with http.post(url, json=initialize_body(), headers=LEGACY_HEADERS) as r:
        assert r.status == 200
        sid = r.headers["mcp-session-id"]
    headers = {**LEGACY_HEADERS, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    async with http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers) as r:
        assert r.status == 202
    return headers


async def _legacy_methods(base: str, methods: list[str]) -> None:
    url = f"{base}/mcp/open"
    async with aiohttp.ClientSession() as http:
        headers = await _legacy_session(http, url)

        async def one(i: int, method: str) -> None:
            async with http.post(url, json={"jsonrpc": "2.0", "id": i, "method": method, "params": {}},
                                 headers=headers) as r:
                await r.read()
                assert r.status == 200

        for start in range(0, len(methods), 50):
            await asyncio.gather(*(one(start + i, m) for i, m in enumerate(methods[start:start + 50])))


def _series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def _event(trail: Path, pred: Any, deadline_s: float = 10.0) -> dict[str, Any]:
    """The first audit event matching `pred`, waiting for the writer (it batches every ~10 ms)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if trail.exists():
            for line in trail.read_text().splitlines():
                event: dict[str, Any] = json.loads(line)
                if pred(event):
                    return event
        time.sleep(0.05)  # polling a file the gateway writes, with a deadline; not a test sleep
    raise AssertionError(f"no matching audit event in {trail} within {deadline_s}s")


# --- labels: the caller's view, the gateway's vocabulary ------------------------------------------------------


async def test_a_hidden_tool_is_labelled_exactly_like_an_unknown_one(direct: Gw) -> None:
    hidden = await _call(direct.base, "keyed", "notes__add_note", DEV_KEY)  # dev may only list notes
    unknown = await _call(direct.base, "keyed", "no_such_tool", DEV_KEY)
    assert hidden["error"]["code"] == unknown["error"]["code"]
    forbidden = await _call(direct.base, "keyed", "notes__get_note", STRANGER_KEY)  # no role for `keyed`
    assert "error" in forbidden
    visible = await _call(direct.base, "keyed", "notes__list_notes", DEV_KEY)
    assert "result" in visible
    samples = await _samples(direct.base)
    tools = {s["tool"] for s in _series(samples, "stile_requests_total") if s["virtual_server"] == "keyed"}
    assert tools == {"(unknown)", "notes__list_notes"}  # the hidden names never appear
    key = ("stile_requests_total", (("method", "tools/call"), ("outcome", "error"), ("tool", "(unknown)"),
                                    ("upstream", ""), ("virtual_server", "keyed")))
    assert samples[key] == 2  # hidden + unknown: the same series
    assert _series(samples, "stile_denials_total")  # the Forbidden one is still counted as a denial


async def test_client_chosen_method_names_do_not_create_series(direct: Gw) -> None:
    methods = [f"x/{secrets.token_hex(8)}" for _ in range(2000)] + ["y" * 100_000 + str(i) for i in range(20)]
    await _legacy_methods(direct.base, [*methods, "ping"])
    status, _, body = await _get(direct.base, "/metrics")
    assert status == 200
    assert len(body) < 64 * 1024, len(body)
    samples = _parse(body)
    series = _series(samples, "stile_requests_total")
    assert len(series) < 30, len(series)
    assert {s["method"] for s in series if s["virtual_server"] == "open"} >= {"other", "ping", "initialize"}
    other = ("stile_requests_total", (("method", "other"), ("outcome", "error"), ("tool", ""), ("upstream", ""),
                                      ("virtual_server", "open")))
    assert samples[other] == len(methods)
    assert all(len(v) <= 128 for s in series for v in s.values())
    status, _, _ = await _get(direct.base, "/healthz")
    assert status == 200


async def test_the_series_count_of_a_family_is_capped_and_the_overflow_counted(proxied: Gw) -> None:
    await _legacy_methods(proxied.base, ["ping", "tools/list", "prompts/list", "resources/list",
                                         "resources/templates/list", "completion/complete", "logging/setLevel",
                                         "prompts/get", "resources/read", "tools/call", "x/unknown"])
    samples = await _samples(proxied.base)
    series = _series(samples, "stile_requests_total")
    assert len(series) <= 11  # the cap (10) + the one overflow label set
    overflow = [s for s in series if s["method"] == "(overflow)"]
    assert len(overflow) == 1 and set(overflow[0].values()) == {"(overflow)"}
    dropped = samples[("stile_metric_series_overflow_total", (("family", "stile_requests"),))]
    assert dropped >= 1


# --- who may read /metrics and /readyz ------------------------------------------------------------------------


async def test_metrics_from_loopback_needs_no_credentials(proxied: Gw, direct: Gw) -> None:
    assert (await _get(direct.base, "/metrics"))[0] == 200
    assert (await _get(proxied.base, "/metrics"))[0] == 200  # the proxy itself, no forwarded client


async def test_metrics_for_a_remote_client_needs_the_token_or_an_admin(proxied: Gw) -> None:
    status, headers, body = await _get(proxied.base, "/metrics", REMOTE)
    assert status == 401 and b"stile_requests" not in body
    assert headers["www-authenticate"].startswith("Bearer")
    wrong = await _get(proxied.base, "/metrics", {**REMOTE, "Authorization": "Bearer " + METRICS_TOKEN[:-1] + "x"})
    assert wrong[0] == 401
    status, _, body = await _get(proxied.base, "/metrics", {**REMOTE, "Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200 and b"stile_requests_total" in body
    assert (await _get(proxied.base, "/metrics", {**REMOTE, "X-API-Key": OPS_KEY}))[0] == 200
    status, _, body = await _get(proxied.base, "/metrics", {**REMOTE, "X-API-Key": DEV_KEY})
    assert status == 403 and b"stile_requests" not in body


async def test_a_refused_metrics_read_is_audited_with_the_forwarded_address(proxied: Gw) -> None:
    marker = secrets.token_hex(4)
    assert (await _get(proxied.base, "/metrics", {"X-Forwarded-For": "198.51.100.23", "Mcp-Name": marker}))[0] == 401
    event = _event(proxied.trail, lambda e: e.get("virtual_server") == "(metrics)" and e.get("tool") == marker)
    assert (event["outcome"], event["client_address"]) == ("unauthenticated", "198.51.100.23")


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
async def test_metrics_and_readyz_refuse_a_rebound_host_or_foreign_origin(direct: Gw, path: str) -> None:
    status, _, body = await _get(direct.base, path, {"Host": "attacker.example"})
    assert status == 421 and b"stile_" not in body and b"upstreams" not in body
    status, _, body = await _get(direct.base, path, {"Origin": "http://attacker.example"})
    assert status == 403 and b"stile_" not in body and b"upstreams" not in body
    status, _, body = await _get(direct.base, "/healthz", {"Host": "attacker.example"})
    assert json.loads(body) == {"status": "ok"}  # liveness stays exempt and says nothing else


async def test_the_metrics_token_is_served_whatever_the_host_as_prometheus_scrapes_pod_ips(proxied: Gw) -> None:
    pod_ip = {"Host": "10.42.0.17:8080"}  # not loopback, not an allowed host: 421 for everything else
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    status, _, body = await _get(proxied.base, "/metrics", {**pod_ip, **bearer})
    assert status == 200 and b"stile_requests_total" in body
    for refused in ({**pod_ip}, {**pod_ip, "Authorization": "Bearer not-the-token"},
                    {**pod_ip, **bearer, "Origin": "http://attacker.example"}):
        status, _, body = await _get(proxied.base, "/metrics", refused)
        assert status in (421, 403) and b"stile_" not in body, refused
    status, _, _ = await _get(proxied.base, "/readyz", {**pod_ip, **bearer})
    assert status == 421  # the exception is the token-bearing /metrics only


async def test_readyz_tells_a_remote_client_only_status_and_era(proxied: Gw) -> None:
    status, _, body = await _get(proxied.base, "/readyz", REMOTE)
    assert status == 503
    answer = json.loads(body)
    assert answer["status"] == "degraded"
    assert answer["upstreams"]["down"] == {"ready": False, "era": None}
    assert answer["upstreams"]["notes"] == {"ready": True, "era": "modern"}
    assert SECRET_IN_URL.encode() not in body and b"127.0.0.1" not in body
    status, _, body = await _get(proxied.base, "/readyz")  # an operator on the host sees why
    assert status == 503 and json.loads(body)["upstreams"]["down"]["error"]


# --- the audited client address -------------------------------------------------------------------------------


async def test_a_direct_client_cannot_choose_its_audited_address(direct: Gw) -> None:
    forged = {**modern_headers("tools/list"), "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.7"}
    async with aiohttp.ClientSession() as http, http.post(f"{direct.base}/mcp/keyed", headers=forged,
                                                          json={"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                                                                "params": {"_meta": modern_meta()}}) as r:
        assert r.status == 401
    event = _event(direct.trail, lambda e: e.get("outcome") == "unauthenticated" and e.get("virtual_server") == "keyed")
    assert event["client_address"] == "127.0.0.1"


@pytest.mark.parametrize(("headers", "expected"), [
    ({"X-Forwarded-For": "6.6.6.6, 10.1.2.3, 127.0.0.9"}, "10.1.2.3"),  # the right-most untrusted hop
    ({"Forwarded": 'for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"'}, "2001:db8::17"),
])
async def test_through_a_trusted_proxy_the_forwarded_address_is_audited(proxied: Gw, headers: dict[str, str],
                                                                        expected: str) -> None:
    marker = secrets.token_hex(4)
    hdrs = {**modern_headers("tools/list"), **headers, "Mcp-Name": marker}
    async with aiohttp.ClientSession() as http, http.post(f"{proxied.base}/mcp/keyed", headers=hdrs,
                                                          json={"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                                                                "params": {"_meta": modern_meta()}}) as r:
        assert r.status == 401
    event = _event(proxied.trail, lambda e: e.get("tool") == marker)
    assert event["client_address"] == expected
