"""Deployments for the cross-replica proofs: N `stile serve` processes behind a real HAProxy (round robin,
no stickiness), sharing one session key, one state database and one bus (Redis, or a LocalBusServer).

Each replica has its own config file only for its audit trail (a JSONL file) and spool/WAL directory, so a
killed replica can be restarted on its own WAL. Replica ids are r0, r1, ...; `requests_on(i)` reads the
replica's own /metrics, so a test can prove that requests landed on every replica.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.support import REPO, free_port, stop, wait_http, wait_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def require_haproxy() -> str:
    if not Path(HAPROXY).exists():
        pytest.fail("haproxy is not installed: `apt-get install -y haproxy` (tools/services.sh installs it)")
    return HAPROXY


def haproxy_config(port: int, backends: list[int]) -> str:
    servers = "\n".join(f"  server r{i} 127.0.0.1:{p} check inter 200ms fall 1 rise 2"
                        for i, p in enumerate(backends))
    return f"""global
  maxconn 2000
defaults
  mode http
  timeout connect 2s
  timeout client 120s
  timeout server 120s
  timeout tunnel 120s
  retries 2
  option redispatch
  retry-on conn-failure
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /healthz
  http-check expect status 200
{servers}
"""


@dataclass
class Deployment:
    lb: str
    ports: list[int]
    procs: list[subprocess.Popen[bytes]]  # replica i's process (dead until started)
    configs: list[Path]
    trails: list[Path]
    logs: list[Path]
    env: dict[str, str]
    state: str
    tmp: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def start(self, i: int) -> None:
        env = {**os.environ, **self.env, "STILE_REPLICA_ID": f"r{i}"}
        with self.logs[i].open("ab") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "stile", "serve", "--config", str(self.configs[i]),
                                     "--port", str(self.ports[i])],
                                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
        if i < len(self.procs):
            self.procs[i] = proc
        else:
            self.procs.append(proc)
        wait_http(f"{self.url(i)}/healthz", proc, log=self.logs[i])

    def log_tail(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def deployment(config: dict[str, Any], tmp: Path, *, replicas: int, state: str,
               env: dict[str, str]) -> Iterator[Deployment]:
    """`replicas` gateways with `config` (plus per-replica audit) behind HAProxy; all stopped on exit."""
    haproxy = require_haproxy()
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    ports = [free_port() for _ in range(replicas)]
    configs, trails, logs = [], [], []
    for i in range(replicas):
        trail = tmp / f"audit-r{i}.jsonl"
        cfg = {**config, "state": state,
               "audit": {"store": False, "jsonl": str(trail), "spool_dir": str(tmp / f"spool-r{i}")}}
        path = tmp / f"stile-r{i}.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        configs.append(path)
        trails.append(trail)
        logs.append(tmp / f"stile-r{i}.log")
    dep = Deployment("", ports, [], configs, trails, logs, {"STILE_SESSION_KEY": key, **env}, state, tmp)
    lb_port = free_port()
    lb_cfg = tmp / "haproxy.cfg"
    lb_cfg.write_text(haproxy_config(lb_port, ports), encoding="utf-8")
    lb: subprocess.Popen[bytes] | None = None
    try:
        for i in range(replicas):
            dep.start(i)
        lb = subprocess.Popen([haproxy, "-f", str(lb_cfg), "-db"], stdout=subprocess.DEVNULL,
                              stderr=(tmp / "haproxy.log").open("wb"), stdin=subprocess.DEVNULL)
        wait_port(lb_port, lb)
        dep.lb = f"http://127.0.0.1:{lb_port}"
        asyncio.run(_wait_all_up(dep))
        yield dep
    finally:
        if lb is not None:
            stop(lb)
        for proc in dep.procs:
            stop(proc)


async def _wait_all_up(dep: Deployment, deadline: float = 20.0) -> None:
    """Until HAProxy sends requests to every replica (its health checks have passed) and each is ready."""
    async with httpx2.AsyncClient(timeout=5) as http, asyncio.timeout(deadline):
        for i in range(len(dep.ports)):
            while True:
                if (await http.get(f"{dep.url(i)}/readyz")).json().get("status") == "ready":
                    break
                await asyncio.sleep(0.05)
        before = [await requests_on(http, dep, i) for i in range(len(dep.ports))]
        while True:
            await http.get(f"{dep.lb}/readyz")
            for _ in dep.ports:
                await http.post(f"{dep.lb}/mcp/open", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                headers={"Accept": "application/json, text/event-stream"})
            after = [await requests_on(http, dep, i) for i in range(len(dep.ports))]
            if all(a > b for a, b in zip(after, before, strict=True)):
                return


_REQUESTS = re.compile(r"^stile_(?:requests_total|rejected_total)\{[^}]*\} ([0-9.e+]+)$", re.M)


async def requests_on(http: httpx2.AsyncClient, dep: Deployment, i: int) -> float:
    """MCP requests replica `i` has seen (answered or refused by the transport), from its own /metrics."""
    text = (await http.get(f"{dep.url(i)}/metrics")).text
    return sum(float(v) for v in _REQUESTS.findall(text))


async def metric(http: httpx2.AsyncClient, url: str, name: str) -> float | None:
    text = (await http.get(f"{url}/metrics")).text
    found = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else None
