"""Policies by name: the chain of each virtual server is data, built from config.

A policy type is registered with a name, a factory and (optionally) a pydantic schema for its own
config under `policies.<name>`. A virtual server's chain is `virtual_servers.<vs>.chain`, else the
top-level `chain`, else every registered default policy by its `order` (`default_chain()`), outermost
first, and always ends in the router. `observe` must come first (it accounts for every outcome,
denials included) and `access` must be present (it is what narrows the view to the caller's
grants). A new policy (a rate limiter, a cache, a validator) registers itself here; nothing in
`core` changes.

Policies get narrow interfaces (`PolicyDeps`: the config, the view source, the observers), never
the gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from stile.bus import Bus
from stile.config.model import GatewayConfig
from stile.core.catalog import ViewSource
from stile.core.context import CallNext
from stile.core.pipeline import Policy, build
from stile.wire.jsonrpc import Message

if TYPE_CHECKING:
    from stile.observe.observers import Observers

REQUIRED_FIRST = "observe"
REQUIRED = ("observe", "access")
UpstreamListener = Callable[[str, str, Message], None]


@dataclass(frozen=True)
class PolicyDeps:
    cfg: GatewayConfig
    views: ViewSource
    observers: Observers
    # registers a listener told of every upstream notification (upstream, method, message)
    on_upstream_notification: Callable[[UpstreamListener], None] = field(default=lambda listener: None)
    state_url: str | None = None  # the state store (SQLite/Postgres URL), for policies that keep durable state
    lifecycle: list[Any] = field(default_factory=list)  # policies with `async start()`/`aclose()` add themselves
    bus: Bus | None = None  # what replicas and workers share (stile.bus); None or not `shared`: this process only


Factory = Callable[[PolicyDeps, Any], Policy | None]  # None: nothing configured, leave it out of the chain


@dataclass(frozen=True)
class PolicyType:
    name: str
    factory: Factory  # (deps, validated config or None) -> policy
    schema: type[BaseModel] | None = None
    doc: str = ""
    order: int = 100  # place in the default chain, outermost first (observe 0, access 10, ..., see default_chain)
    default: bool = True  # part of the default chain (a policy with nothing configured must cost ~nothing)


_REGISTRY: dict[str, PolicyType] = {}


def register(kind: PolicyType) -> PolicyType:
    if kind.name in _REGISTRY and _REGISTRY[kind.name] is not kind:
        raise ValueError(f"policy {kind.name!r} is already registered")
    _REGISTRY[kind.name] = kind
    return kind


def registered() -> Mapping[str, PolicyType]:
    from stile.policies import builtin  # noqa: F401  (registers the built-in policies on first use)

    return _REGISTRY


def default_chain() -> list[str]:
    """Every default policy by `order`: observe 0, access 10, ratelimit 20, quota 25, rules 30, validate 40,
    redact 50, screen 55, cache 60 (outer policies see the response last, so redaction covers cache hits)."""
    return [k.name for k in sorted(registered().values(), key=lambda k: (k.order, k.name)) if k.default]


def chain_of(cfg: GatewayConfig, vs: str) -> list[str]:
    own = cfg.virtual_servers[vs].chain
    if own is not None:
        return list(own)
    return list(cfg.chain) if cfg.chain is not None else default_chain()


def check_chains(cfg: GatewayConfig, where: str) -> list[str]:
    """Config problems of the chains and of `policies:`, one line each."""
    kinds = registered()
    problems: list[str] = []
    chains = ([("chain", cfg.chain)] if cfg.chain is not None else []) + [(f"virtual_servers.{n}.chain", vs.chain)
                                       for n, vs in cfg.virtual_servers.items() if vs.chain is not None]
    for key, names in chains:
        for i, name in enumerate(names):
            if name not in kinds:
                problems.append(f"{where}: {key}[{i}]: unknown policy {name!r} (known: {sorted(kinds)})")
        if len(set(names)) != len(names):
            problems.append(f"{where}: {key}: a policy appears twice")
        if not names or names[0] != REQUIRED_FIRST:
            problems.append(f"{where}: {key}: must start with {REQUIRED_FIRST!r} (it accounts for every outcome)")
        for name in REQUIRED:
            if name not in names:
                problems.append(f"{where}: {key}: must include {name!r}")
    for name, raw in cfg.policies.items():
        kind = kinds.get(name)
        if kind is None:
            problems.append(f"{where}: policies.{name}: unknown policy (known: {sorted(kinds)})")
        elif kind.schema is None:
            problems.append(f"{where}: policies.{name}: this policy takes no configuration")
        else:
            try:
                kind.schema.model_validate(raw)
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    problems.append(f"{where}: policies.{name}{'.' + loc if loc else ''}: {err['msg']}")
    return problems


def build_chains(deps: PolicyDeps, terminal: CallNext) -> dict[str, CallNext]:
    """One chain per virtual server; a policy type is instantiated once and shared by the chains using it."""
    kinds = registered()
    cfg = deps.cfg
    instances: dict[str, Policy | None] = {}
    chains: dict[str, CallNext] = {}
    for vs in cfg.virtual_servers:
        policies = []
        for name in chain_of(cfg, vs):
            if name not in instances:
                kind = kinds[name]
                raw = cfg.policies.get(name)
                config = kind.schema.model_validate(raw or {}) if kind.schema is not None else None
                instances[name] = kind.factory(deps, config)
            policy = instances[name]
            if policy is not None:
                policies.append(policy)
        chains[vs] = build(policies, terminal)
    return chains
