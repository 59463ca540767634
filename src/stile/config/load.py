"""Load a YAML config file into a validated GatewayConfig, with errors that say where and what."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stile.config.model import GatewayConfig


class ConfigError(Exception):
    """A config problem; `problems` lists one `file: key.path: what` line per defect."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedConfig:
    path: Path | None
    config: GatewayConfig


def _split_ref(ref: str) -> tuple[str, str]:
    upstream, dot, rest = ref.partition(".")
    return upstream, rest if dot else ""


def _glob_upstream(pattern: str) -> str:
    return _split_ref(pattern)[0]


def check_references(cfg: GatewayConfig, where: str) -> list[str]:
    """Unknown upstream references are load-time errors."""
    problems: list[str] = []
    known = set(cfg.upstreams)
    for vs_name, vs in cfg.virtual_servers.items():
        base = f"{where}: virtual_servers.{vs_name}"
        for i, up in enumerate(vs.upstreams or []):
            if up not in known:
                problems.append(f"{base}.upstreams[{i}]: unknown upstream {up!r} (known: {sorted(known)})")
        lists = {
            "allow_tools": vs.allow_tools or [], "deny_tools": vs.deny_tools,
            "allow_resources": vs.allow_resources or [], "deny_resources": vs.deny_resources,
            "allow_prompts": vs.allow_prompts or [], "deny_prompts": vs.deny_prompts,
        }
        for key, patterns in lists.items():
            for i, pattern in enumerate(patterns):
                up = _glob_upstream(pattern)
                if "." not in pattern:
                    problems.append(f"{base}.{key}[{i}]: {pattern!r} must be written upstream.name")
                elif not any(ch in up for ch in "*?[") and up not in known:
                    problems.append(f"{base}.{key}[{i}]: unknown upstream {up!r} in {pattern!r}")
                elif any(ch in up for ch in "*?[") and not any(
                    re.fullmatch(_glob_to_re(up), k) for k in known
                ):
                    problems.append(f"{base}.{key}[{i}]: {pattern!r} matches no upstream")
        for section in ("tools", "prompts"):
            for ref in getattr(vs, section):
                up = _split_ref(ref)[0]
                if "." not in ref:
                    problems.append(f"{base}.{section}.{ref}: must be written upstream.name")
                elif up not in known:
                    problems.append(f"{base}.{section}.{ref}: unknown upstream {up!r}")
    for ref in cfg.costs:
        up = _glob_upstream(ref)
        if not any(ch in up for ch in "*?[") and up not in known:
            problems.append(f"{where}: costs.{ref}: unknown upstream {up!r}")
    return problems


def _glob_to_re(glob: str) -> str:
    return fnmatch.translate(glob)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, missing: list[str], where: str = "") -> Any:
    """Replace ${NAME} and ${NAME:-default} in string values from the environment."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            got = os.environ.get(m.group(1))
            if got is not None:
                return got
            if m.group(2) is not None:
                return m.group(2)
            missing.append(f"{where or '(top level)'}: environment variable {m.group(1)} is not set")
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, missing, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, missing, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


_SECRET_REF = re.compile(r"\$\{secret:([^}]*)\}")
_SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SECRET_PLACES = re.compile(r"upstreams\.[^.]+\.((headers|env)\.[^.]+|(token_exchange|oauth)\.client_secret)")


def secret_reference_problems(value: Any, where: str = "") -> list[str]:
    """`${secret:NAME}` (resolved from the vault, never at load) only in upstream `headers` and `env`, with
    valid names: anywhere else it would silently stay a literal string."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in secret_reference_problems(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in secret_reference_problems(v, f"{where}[{i}]")]
    if not isinstance(value, str):
        return []
    problems = []
    for m in _SECRET_REF.finditer(value):
        if not _SECRET_PLACES.fullmatch(where):
            problems.append(f"{where}: ${{secret:...}} is only resolved in upstreams.<name>.headers, .env "
                            "and .token_exchange/.oauth.client_secret")
        elif not _SECRET_NAME.fullmatch(m.group(1)):
            problems.append(f"{where}: bad secret name {m.group(1)!r} (1-128 of [A-Za-z0-9_.-])")
    return problems


def parse_config(data: Any, where: str = "<config>") -> GatewayConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: top level must be a mapping"])
    missing: list[str] = []
    data = expand_env(data, missing)  # `${secret:NAME}` does not match `_VAR`: it stays literal here
    missing += secret_reference_problems(data)
    if missing:
        raise ConfigError([f"{where}: {m}" for m in missing])
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{where}: {loc}: {err['msg']}")
        raise ConfigError(problems) from exc
    problems = check_references(cfg, where) + check_identity(cfg, where) + check_chains(cfg, where)
    if problems:
        raise ConfigError(problems)
    return cfg


def check_identity(cfg: GatewayConfig, where: str) -> list[str]:
    """Roles name existing virtual servers and upstreams; rules compile (CEL)."""
    # Imported here: config is the bottom layer, and these pull in the CEL runtime and the JWT stack.
    from stile.policies.rules import RuleError, compile_rules

    problems: list[str] = []
    for name, role in cfg.roles.items():
        for i, vs in enumerate(role.virtual_servers or []):
            if vs not in cfg.virtual_servers:
                problems.append(f"{where}: roles.{name}.virtual_servers[{i}]: unknown virtual server {vs!r}")
        for key in ("allow_tools", "deny_tools", "allow_resources", "deny_resources", "allow_prompts",
                    "deny_prompts"):
            for i, pattern in enumerate(getattr(role, key)):
                up = _glob_upstream(pattern)
                if "." not in pattern:
                    problems.append(f"{where}: roles.{name}.{key}[{i}]: {pattern!r} must be written upstream.name")
                elif not any(ch in up for ch in "*?[") and up not in cfg.upstreams:
                    problems.append(f"{where}: roles.{name}.{key}[{i}]: unknown upstream {up!r} in {pattern!r}")
    if cfg.auth.jwt:
        from stile.identity.authn import issuer_configs
        from stile.identity.jwt import JwtVerifier

        try:
            JwtVerifier(issuer_configs(cfg))
        except ValueError as exc:
            problems.append(f"{where}: auth.jwt: {exc}")
    for i, rule in enumerate(cfg.rules):
        try:
            compile_rules([rule])
        except RuleError as exc:
            problems.append(f"{where}: rules[{i}] ({rule.name}): {str(exc).split(': ', 1)[-1]}")
    return problems


def check_chains(cfg: GatewayConfig, where: str) -> list[str]:
    """Policy chains name registered policies (observe first, access present); `policies:` validate;
    passthrough methods route to upstreams the virtual server draws from."""
    from stile.core.catalog import upstreams_of
    from stile.policies.registry import check_chains as check
    from stile.wire.methods import METHODS

    problems = check(cfg, where)
    for vs_name, vs in cfg.virtual_servers.items():
        ups = upstreams_of(vs, cfg)
        for method, up in vs.passthrough_methods.items():
            key = f"{where}: virtual_servers.{vs_name}.passthrough_methods.{method}"
            if up not in ups:
                problems.append(f"{key}: upstream {up!r} is not one this virtual server draws from ({ups})")
            if method in METHODS:
                problems.append(f"{key}: {method} is an MCP method Stile handles itself")
    return problems


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one).

    Keys brought in by a `<<:` merge may still be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> LoadedConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"{p}:{at}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    from stile.config.paths import resolve_paths

    return LoadedConfig(path=p, config=resolve_paths(parse_config(data, str(p)), p.parent))


def state_url_for(loaded: LoadedConfig) -> str:
    """The state store URL: `state` from config, else stile.db beside the config file."""
    if loaded.config.state:
        return loaded.config.state
    base = loaded.path.parent if loaded.path is not None else Path.cwd()
    return f"sqlite:///{(base / 'stile.db').resolve()}"
