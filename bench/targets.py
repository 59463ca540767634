"""What the load generator can be pointed at: the upstream itself, Stile, a reference proxy, peers.

Every target exposes one MCP URL and one process (tree) whose CPU and memory are measured. Targets
that cannot be installed or started raise ``Unavailable`` with the reason; the runner records it and
goes on with the others.

Layout of upstreams per scenario (see ``bench.scenarios.Scenario``):
  * ``direct`` and ``proxy``: one upstream with ``direct_tools`` tools;
  * ``stile`` and the peers: ``stile_upstreams`` upstreams with ``stile_tools`` tools each.
Upstreams with the same tool count are shared between targets (runs are sequential).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import PEERS_DIR, PY, REPO, Pinning, Proc, Procs, Unavailable, free_port, http_json, taskset
from bench.scenarios import Scenario


def policies_on(upstreams: list[str]) -> tuple[dict[str, Any], str]:
    """`--policies on`: API-key authentication, a role granting every tool, and one CEL rule on arguments.

    Returns the config additions and the key the load generator sends (X-API-Key). Metrics and the
    audit trail are on in every Stile run unless `--observe off`. Rate limits (in memory: per agent and per
    tool) and quotas (per agent, per tool in cost units) are configured too, high enough never to fire, so
    the run measures what they cost when they do not.
    """
    from stile.stores.keys import hash_for_config

    key = "stile_bench_" + secrets.token_urlsafe(32)
    extra = {
        "auth": {"api_keys": True, "keys": [{"name": "bench", "hash": hash_for_config(key), "roles": ["bench"]}]},
        "roles": {"bench": {"allow_tools": [f"{u}.*" for u in upstreams]}},
        "rules": [{"name": "no-forbidden-text", "deny": 'has(arguments.text) && arguments.text == "forbidden"',
                   "reason": "forbidden text"}],
        "policies": {
            "ratelimit": {"limits": [{"key": "agent", "rate": "1000000000/s"},
                                     {"key": "tool", "rate": "1000000000/s"}]},
            "quota": {"quotas": [{"name": "bench-agent", "key": "agent", "limit": 1e15},
                                 {"name": "bench-tool", "key": "tool", "limit": 1e15, "unit": "cost"}]},
        },
    }
    return extra, key

FASTMCP_SPEC = ["fastmcp==4.2.3", "mcp==2.3.0"]  # 4.2.3 installs beside mcp 2.3.0 (checked 2026-11-24)
CONTEXTFORGE_SPEC = ["mcp-contextforge-gateway==1.1.0"]  # needs Python >= 3.12
PY312_CANDIDATES = ("/root/.pyenv/versions/3.12.1/bin/python", "python3.12", "python3.13")


@dataclass
class Env:
    procs: Procs
    pin: Pinning
    workdir: Path
    upstream_kind: str = "fast"  # fast | sdk
    policies: str = "off"
    observe: str = "default"  # default (metrics + audit to the SQLite state store) | off (no audit) | trace
    otlp_url: str | None = None  # the do-nothing collector of `--observe trace`, started once
    stile_exe: Path = REPO / ".venv" / "bin" / "stile"
    log: Any = print


@dataclass
class Upstream:
    url: str
    proc: Proc
    tools: int


class UpstreamPool:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.by_tools: dict[int, list[Upstream]] = {}

    def get(self, tools: int, count: int) -> list[Upstream]:
        have = self.by_tools.setdefault(tools, [])
        while len(have) < count:
            have.append(self._start(tools, len(have)))
        return have[:count]

    def _start(self, tools: int, index: int) -> Upstream:
        env = self.env
        name = f"upstream-{env.upstream_kind}-{tools}t-{index}"
        if env.upstream_kind == "sdk":
            port = free_port()
            argv = [PY, "-m", "bench.upstream_sdk", "--port", str(port), "--tools", str(tools)]
            proc = env.procs.start(name, taskset(env.pin.client, argv))
            env.procs.wait_http(proc, f"http://127.0.0.1:{port}/healthz", timeout=30)
        else:
            argv = [PY, "-m", "bench.upstream_fast", "--port", "0", "--tools", str(tools)]
            proc = env.procs.start(name, taskset(env.pin.client, argv))
            port = env.procs.wait_ready_line(proc)
        return Upstream(f"http://127.0.0.1:{port}/mcp", proc, tools)

    def all(self) -> list[Upstream]:
        return [u for group in self.by_tools.values() for u in group]

    def stop(self) -> None:
        for u in self.all():
            self.env.procs.stop(u.proc)
        self.by_tools.clear()


@dataclass
class Target:
    """Base: a started target has ``url``, ``proc`` (the process tree under test) and ``upstreams``."""

    env: Env
    name: str = "target"
    role: str = "gateway"  # direct | reference | gateway | peer
    url: str = ""
    proc: Proc | None = None
    upstreams: list[Upstream] = field(default_factory=list)
    tool_names: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    load_env: dict[str, str] = field(default_factory=dict)  # extra environment for the load generator

    def start(self, scn: Scenario, pool: UpstreamPool) -> None:
        raise NotImplementedError

    def tool(self, scn: Scenario) -> str | None:
        return None if scn.tool is None else self.tool_names.get(scn.tool, scn.tool)

    def server_pids(self) -> list[int]:
        return self.proc.tree_pids() if self.proc else []

    def upstream_pids(self) -> list[int]:
        if self.role == "direct":
            return []
        return [pid for u in self.upstreams for pid in u.proc.tree_pids()]

    def stop(self) -> None:
        if self.proc is not None and self.role != "direct":
            self.env.procs.stop(self.proc)
        self.proc = None


class Direct(Target):
    """The upstream itself: the baseline every added-latency figure subtracts."""

    def __init__(self, env: Env) -> None:
        super().__init__(env, name="direct", role="direct")

    def start(self, scn: Scenario, pool: UpstreamPool) -> None:
        (up,) = pool.get(scn.direct_tools, 1)
        self.upstreams, self.url, self.proc = [up], up.url, up.proc
        self.info = {"upstream": self.env.upstream_kind, "tools": scn.direct_tools}


class Stile(Target):
    def __init__(self, env: Env) -> None:
        super().__init__(env, name="stile", role="gateway")

    def config(self, scn: Scenario, ups: list[Upstream]) -> dict[str, Any]:
        names = ["fast"] if len(ups) == 1 else [f"up{i + 1}" for i in range(len(ups))]
        vs: dict[str, Any] = {"upstreams": names, "auth": "none"}
        if scn.stile_prefix is not None:
            vs["prefix"] = scn.stile_prefix
        cfg: dict[str, Any] = {
            "upstreams": {n: {"url": u.url} for n, u in zip(names, ups, strict=True)},
            "virtual_servers": {"bench": vs},
        }
        if self.env.observe == "off":
            cfg["audit"] = {"store": False}
        elif self.env.observe == "trace":
            cfg["tracing"] = {"enabled": True, "otlp_endpoint": self.env.otlp_url, "sample_ratio": 1.0}
        if self.env.policies == "on":
            extra, key = policies_on(names)
            del vs["auth"]
            cfg.update(extra)
            cfg["state"] = f"sqlite:///{self.env.workdir / 'stile-bench-state.db'}"
            self.load_env = {"STILE_BENCH_HEADERS": json.dumps({"X-API-Key": key})}
        return cfg

    def start(self, scn: Scenario, pool: UpstreamPool) -> None:
        import yaml

        exe = Path(self.env.stile_exe)
        if not exe.exists():
            raise Unavailable(f"{exe} does not exist (the gateway's `stile` entry point is not installed yet)")
        ups = pool.get(scn.stile_tools, scn.stile_upstreams)
        if self.env.observe == "trace" and self.env.otlp_url is None:
            sink = self.env.procs.start("otlp-sink", taskset(self.env.pin.client, [PY, "-m", "bench.otlp_sink"]))
            self.env.otlp_url = f"http://127.0.0.1:{self.env.procs.wait_ready_line(sink)}/v1/traces"
        cfg_path = self.env.workdir / f"stile-{scn.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config(scn, ups), sort_keys=False), encoding="utf-8")
        port = free_port()
        argv = [str(exe), "serve", "--config", str(cfg_path), "--host", "127.0.0.1", "--port", str(port)]
        proc = self.env.procs.start("stile", taskset(self.env.pin.server, argv))
        self.proc, self.upstreams = proc, ups
        try:
            self.env.procs.wait_http(proc, f"http://127.0.0.1:{port}/healthz", timeout=30)
        except Unavailable as exc:
            self.stop()
            raise Unavailable(f"stile did not become healthy: {exc}") from exc
        self.url = f"http://127.0.0.1:{port}/mcp/bench"
        self.info = {"config": str(cfg_path), "policies": self.env.policies, "observe": self.env.observe,
                     "tree": _git_describe()}


class ReferenceProxy(Target):
    """bench/proxy_ref.py: uvicorn + aiohttp pass-through, the floor for a Python proxy."""

    def __init__(self, env: Env) -> None:
        super().__init__(env, name="proxy", role="reference")

    def start(self, scn: Scenario, pool: UpstreamPool) -> None:
        (up,) = pool.get(scn.direct_tools, 1)
        argv = [PY, "-m", "bench.proxy_ref", "--upstream", up.url, "--port", "0"]
        proc = self.env.procs.start("proxy", taskset(self.env.pin.server, argv))
        self.proc, self.upstreams = proc, [up]
        port = self.env.procs.wait_ready_line(proc)
        self.env.procs.wait_http(proc, f"http://127.0.0.1:{port}/healthz", timeout=15)
        self.url = f"http://127.0.0.1:{port}/mcp/bench"
        self.info = {"what": "uvicorn raw ASGI + aiohttp pass-through (bench/proxy_ref.py)"}


def _git_describe() -> str:
    """The source Stile ran from: HEAD plus '+dirty' when src/ has uncommitted changes."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=REPO)
    return (rev.stdout.strip() or "?") + ("+dirty" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------------------------------
# peers
def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(name: str, python: str, spec: list[str], probe: str, log: Any) -> Path:
    """Create bench/.peers/<name> with ``spec`` installed unless ``probe`` already imports there."""
    venv = PEERS_DIR / name
    vpy = venv / "bin" / "python"
    if vpy.exists():
        ok = subprocess.run([str(vpy), "-c", probe], capture_output=True, timeout=120)
        if ok.returncode == 0:
            return venv
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    logfile = PEERS_DIR / f"{name}-install.log"
    log(f"  installing {' '.join(spec)} into {venv} (log: {logfile}) ...")
    with logfile.open("w", encoding="utf-8") as out:
        steps = [[python, "-m", "venv", str(venv)], [str(vpy), "-m", "pip", "install", "-q", *spec]]
        for step in steps:
            try:
                rc = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise Unavailable(f"{' '.join(step[:3])} failed: {exc!r}") from exc
            if rc != 0:
                tail = logfile.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-6:]
                raise Unavailable(f"`{' '.join(step)}` exited {rc}: " + " | ".join(tail))
    ok = subprocess.run([str(vpy), "-c", probe], capture_output=True, timeout=120)
    if ok.returncode != 0:
        raise Unavailable(f"installed but `{probe}` fails: {ok.stderr.decode(errors='replace')[-400:]}")
    return venv


def _pip_version(venv: Path, dist: str) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True,
        timeout=60,
    )
    return out.stdout.decode().strip() or "?"


class FastMCPProxy(Target):
    def __init__(self, env: Env) -> None:
        super().__init__(env, name="fastmcp", role="peer")

    def start(self, scn: Scenario, pool: UpstreamPool) -> None:
        venv = ensure_venv("fastmcp", _base_python(), FASTMCP_SPEC, "import fastmcp.server", self.env.log)
        ups = pool.get(scn.stile_tools, scn.stile_upstreams)
        names = ["fast"] if len(ups) == 1 else [f"up{i + 1}" for i in range(len(ups))]
        port = free_port()
        argv = [str(venv / "bin" / "python"), str(REPO / "bench" / "peer_fastmcp.py"), "--port", str(port)]
        for n, u in zip(names, ups, strict=True):
            argv += ["--upstream", f"{n}={u.url}"]
        proc = self.env.procs.start("fastmcp", taskset(self.env.pin.server, argv), env={"FASTMCP_LOG_LEVEL": "WARNING"})
        self.proc, self.upstreams = proc, ups
        try:
            self.env.procs.wait_http(proc, f"http://127.0.0.1:{port}/healthz", timeout=60)
        except Unavailable:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.info = {
            "fastmcp": _pip_version(venv, "fastmcp"),
            "mcp": _pip_version(venv, "mcp"),
            "venv": str(venv),
            "layout": "create_proxy(url)" if len(ups) == 1 else "create_proxy(MCPConfig), <name>_ prefixes",
        }


def _python312() -> str:
    for cand in PY312_CANDIDATES:
        path = cand if os.path.isabs(cand) else shutil.which(cand)
        if path and os.path.exists(path):
            return path
    raise Unavailable("no Python >= 3.12 found (ContextForge needs it); looked for " + ", ".join(PY312_CANDIDATES))


class ContextForge(Target):
    """IBM ContextForge (mcp-contextforge-gateway) as shipped: one uvicorn worker, SQLite, memory cache.

    Settings (env): AUTH_REQUIRED=false, RATE_LIMITING_ENABLED=false, TOOL_RATE_LIMIT high,
    SSRF_ALLOW_LOCALHOST=true, PLUGINS_ENABLED=false, UI/admin API off, USE_STATEFUL_SESSIONS on or off.
    Registration: POST /gateways per upstream (STREAMABLEHTTP), POST /servers with all tool ids,
    clients call /servers/<id>/mcp. ContextForge renames tools to ``<gateway>-<tool with - for _>``.
    """

    def __init__(self, env: Env, stateful: bool) -> None:
        name = "contextforge-stateful" if stateful else "contextforge"
        super().__init__(env, name=name, role="peer")
        self.stateful = stateful

    def start(self, scn: Scenario, pool: UpstreamPool) -> None:
        # importing mcpgateway needs its secrets in the environment: probe the installed version instead
        probe = "import importlib.metadata as m; m.version('mcp-contextforge-gateway')"
        venv = ensure_venv("cf", _python312(), CONTEXTFORGE_SPEC, probe, self.env.log)
        ups = pool.get(scn.stile_tools, scn.stile_upstreams)
        names = ["fast"] if len(ups) == 1 else [f"up{i + 1}" for i in range(len(ups))]
        run_dir = PEERS_DIR / f"cf-run-{self.name}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        port = free_port()
        password = "Bench-" + secrets.token_urlsafe(18)
        env = {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MCG_HOST": "127.0.0.1",
            "MCG_PORT": str(port),
            "DATABASE_URL": f"sqlite:///{run_dir}/mcp.db",
            "AUTH_REQUIRED": "false",
            "MCPGATEWAY_UI_ENABLED": "false",
            "MCPGATEWAY_ADMIN_API_ENABLED": "false",
            "JWT_SECRET_KEY": secrets.token_urlsafe(40),
            "AUTH_ENCRYPTION_SECRET": secrets.token_urlsafe(40),
            "PLATFORM_ADMIN_EMAIL": "admin@example.com",
            "PLATFORM_ADMIN_PASSWORD": password,
            "DEFAULT_USER_PASSWORD": password,
            "BASIC_AUTH_PASSWORD": password,
            "SSRF_ALLOW_LOCALHOST": "true",
            "SSRF_ALLOW_PRIVATE_NETWORKS": "true",
            "RATE_LIMITING_ENABLED": "false",
            "TOOL_RATE_LIMIT": "1000000",
            "CACHE_TYPE": "memory",
            "USE_STATEFUL_SESSIONS": "true" if self.stateful else "false",
            "LOG_LEVEL": "ERROR",
            "PLUGINS_ENABLED": "false",
            "MCPGATEWAY_A2A_ENABLED": "false",
            "OBSERVABILITY_ENABLED": "false",
        }
        exe = venv / "bin" / "mcpgateway"
        argv = [str(exe), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        proc = self.env.procs.start(self.name, taskset(self.env.pin.server, argv), env=env, cwd=run_dir)
        self.proc, self.upstreams = proc, ups
        base = f"http://127.0.0.1:{port}"
        try:
            self.env.procs.wait_http(proc, f"{base}/health", timeout=120)
            token = self._token(venv, env, run_dir)
            auth = {"Authorization": f"Bearer {token}"}
            tool_ids: list[str] = []
            for n, u in zip(names, ups, strict=True):
                status, body = http_json(
                    "POST",
                    f"{base}/gateways",
                    {"name": n, "url": u.url, "transport": "STREAMABLEHTTP"},
                    auth,
                    120,
                )
                if status not in (200, 201) or not isinstance(body, dict):
                    raise Unavailable(f"POST /gateways -> {status}: {str(body)[:300]}")
                status, tools = http_json("GET", f"{base}/tools?limit=0&gateway_id={body['id']}", None, auth, 60)
                if status != 200 or not isinstance(tools, list):
                    raise Unavailable(f"GET /tools -> {status}: {str(tools)[:300]}")
                for t in tools:
                    tool_ids.append(t["id"])
                    if n == names[0]:
                        self.tool_names[t.get("originalName") or t["name"]] = t["name"]
            server = {"server": {"name": "bench", "associated_tools": tool_ids}, "visibility": "public"}
            status, body = http_json("POST", f"{base}/servers", server, auth, 120)
            if status not in (200, 201) or not isinstance(body, dict):
                raise Unavailable(f"POST /servers -> {status}: {str(body)[:300]}")
        except Unavailable:
            self.stop()
            raise
        self.url = f"{base}/servers/{body['id']}/mcp"
        self.info = {
            "mcp-contextforge-gateway": _pip_version(venv, "mcp-contextforge-gateway"),
            "mcp": _pip_version(venv, "mcp"),
            "stateful_sessions": self.stateful,
            "registered_tools": len(tool_ids),
            "tool_names": dict(list(self.tool_names.items())[:3]),
            "uvicorn_workers": 1,
        }

    @staticmethod
    def _token(venv: Path, env: dict[str, str], run_dir: Path) -> str:
        argv = [
            str(venv / "bin" / "python"),
            "-m",
            "mcpgateway.utils.create_jwt_token",
            "--username",
            "admin@example.com",
            "--exp",
            "120",
            "--admin",
        ]
        out = subprocess.run(argv, capture_output=True, timeout=120, env={**os.environ, **env}, cwd=run_dir)
        lines = out.stdout.decode().strip().splitlines()
        if out.returncode != 0 or not lines or lines[-1].count(".") != 2:
            raise Unavailable(f"could not mint an admin JWT: {out.stderr.decode(errors='replace')[-300:]}")
        return lines[-1].strip()


TARGETS = {"direct": Direct, "stile": Stile, "proxy": ReferenceProxy}
PEERS: dict[str, Callable[[Env], list[Target]]] = {
    "fastmcp": lambda env: [FastMCPProxy(env)],
    "contextforge": lambda env: [ContextForge(env, stateful=False), ContextForge(env, stateful=True)],
    "contextforge-stateless": lambda env: [ContextForge(env, stateful=False)],
    "contextforge-stateful": lambda env: [ContextForge(env, stateful=True)],
}


def make_targets(names: list[str], peers: list[str], env: Env) -> list[Target]:
    out: list[Target] = []
    for n in names:
        if n not in TARGETS:
            raise SystemExit(f"unknown target {n!r}; choose from {', '.join(TARGETS)}")
        out.append(TARGETS[n](env))
    for p in peers:
        if p not in PEERS:
            raise SystemExit(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
        out.extend(PEERS[p](env))
    return out
