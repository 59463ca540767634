"""The built-in policies, registered by name (imported by the registry on first use).

A new policy module calls `register(PolicyType(...))` at import time and is imported here (one line).
"""

from __future__ import annotations

from typing import Any

from stile.core.pipeline import Policy
from stile.observe.policy import Observe
from stile.policies import (  # noqa: F401  (they register themselves)
    cache,
    flows,
    quota,
    ratelimit,
    redact,
    screen,
    validate,
)
from stile.policies.access import AccessControl
from stile.policies.registry import PolicyDeps, PolicyType, register
from stile.policies.rules import Rules


def _observe(deps: PolicyDeps, config: Any) -> Policy:
    o = deps.observers
    anonymous = frozenset(n for n, vs in deps.cfg.virtual_servers.items() if vs.auth == "none")
    return Observe(deps.views, o.metrics, o.audit, o.tracing, anonymous)


def _access(deps: PolicyDeps, config: Any) -> Policy:
    return AccessControl(deps.cfg, deps.views)


def _rules(deps: PolicyDeps, config: Any) -> Policy:
    return Rules(deps.cfg.rules, deps.views)


OBSERVE = register(PolicyType("observe", _observe, doc="metrics, audit and tracing of every outcome", order=0))
ACCESS = register(PolicyType("access", _access, doc="roles narrow the view; no role: 403", order=10))
RULES = register(PolicyType("rules", _rules, doc="CEL rules on tools/call and prompts/get", order=30))
