"""The config the chart renders runs: Stile started on it with the pod's environment (the token from the
chart's Secret) serves /healthz and /readyz as the probes expect, and /metrics to the ServiceMonitor's bearer
token, not to a remote scraper without it (the scrape arrives through a trusted proxy hop, so the client is
not loopback)."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.deploy.chart import manifests, one
from tests.support import stile_server

REMOTE = {"X-Forwarded-For": "203.0.113.7"}  # a scraper elsewhere in the cluster, seen through the proxy


def _get(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_rendered_config_serves_probes_and_metrics_to_the_monitors_token(tmp_path: Path) -> None:
    values = {"config": {"trusted_proxies": ["127.0.0.1/32"], "audit": {"spool_dir": str(tmp_path / "spool")},
                         "virtual_servers": {}},
              "serviceMonitor": {"enabled": True}}
    docs = manifests(values)
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["stile.yaml"])
    secret = {k: base64.b64decode(v).decode() for k, v in one(docs, "Secret")["data"].items()}
    env = {"STILE_STATE_URL": f"sqlite:///{tmp_path / 'stile.db'}", "STILE_METRICS_TOKEN": secret["metrics-token"],
           "STILE_SESSION_KEY": secret["session-key"]}
    with stile_server(config, env=env) as base:
        assert _get(f"{base}/healthz", REMOTE) == 200
        assert _get(f"{base}/readyz", REMOTE) == 200  # no upstream: nothing to wait for
        assert _get(f"{base}/metrics", REMOTE) == 401
        assert _get(f"{base}/metrics", {**REMOTE, "Authorization": "Bearer not-the-token-at-all"}) == 401
        assert _get(f"{base}/metrics", {**REMOTE, "Authorization": f"Bearer {secret['metrics-token']}"}) == 200
