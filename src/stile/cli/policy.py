"""`stile policy test`: what would Stile decide for this principal, tool and arguments, and why."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from stile.config.load import ConfigError, load_config
from stile.config.model import GatewayConfig
from stile.core.catalog import matches, upstreams_of
from stile.core.context import Principal
from stile.policies.access import _Grant
from stile.policies.rules import compile_rules, decide

policy_app = typer.Typer(help="Inspect access-control decisions.", no_args_is_help=True, add_completion=False)


def _principal(spec: str, user: str | None) -> Principal:
    agent, _, roles = spec.partition(":")
    return Principal(agent=agent or None, user=user, roles=tuple(r for r in roles.split(",") if r),
                     method="api_key" if user is None else "jwt")


def explain(cfg: GatewayConfig, vs_name: str | None, principal: Principal, call: str, args: dict[str, Any],
            annotations: dict[str, Any]) -> tuple[bool, list[str]]:
    """The decision and the steps that led to it, in pipeline order."""
    steps: list[str] = []
    upstream, _, tool = call.partition(".")
    names = [vs_name] if vs_name else list(cfg.virtual_servers)
    for name in names:
        vs = cfg.virtual_servers[name]
        where = f"virtual server {name}"
        if upstream not in upstreams_of(vs, cfg):
            steps.append(f"{where}: does not draw from upstream {upstream!r}")
            continue
        if matches(call, vs.deny_tools) or (vs.allow_tools is not None and not matches(call, vs.allow_tools)):
            steps.append(f"{where}: {call} is not in the view (allow_tools/deny_tools)")
            continue
        if vs.auth != "none":
            roles = [cfg.roles[r] for r in principal.roles if r in cfg.roles
                     and (cfg.roles[r].virtual_servers is None or name in (cfg.roles[r].virtual_servers or []))]
            if not roles:
                steps.append(f"{where}: no role of {list(principal.roles)} grants this virtual server (403)")
                continue
            if not _Grant(roles).tool(call, {"annotations": annotations}):
                steps.append(f"{where}: hidden by roles {list(principal.roles)} (answers like an unknown tool)")
                continue
            steps.append(f"{where}: granted by roles {list(principal.roles)}")
        else:
            steps.append(f"{where}: auth: none, anonymous access")
        data = {"principal": principal.as_cel(),
                "tool": {"upstream": upstream, "name": call, "exposed": tool, "annotations": annotations},
                "arguments": args,
                "request": {"virtual_server": name, "method": "tools/call", "time": int(time.time())}}
        decision = decide(compile_rules(cfg.rules), data)
        for rule, would_allow in decision.shadow or ():
            steps.append(f"shadow rule {rule}: would {'allow' if would_allow else 'deny'} (not enforced)")
        if not decision.allowed:
            steps.append(f"DENY by rule {decision.rule}: {decision.reason}")
            return False, steps
        steps.append("ALLOW: no enforcing rule denies")
        return True, steps
    steps.append("DENY: no virtual server exposes this call to this principal")
    return False, steps


@policy_app.command("test")
def test_policy(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway config")],
    principal: Annotated[str, typer.Option("--principal", help="AGENT:ROLE1,ROLE2 (e.g. support-bot:support)")],
    call: Annotated[str, typer.Option("--call", help="upstream.tool")],
    args: Annotated[str, typer.Option("--args", help="arguments as JSON")] = "{}",
    virtual_server: Annotated[str | None, typer.Option("--virtual-server", help="only this one")] = None,
    user: Annotated[str | None, typer.Option("--user", help="the user the agent acts for")] = None,
    annotations: Annotated[str, typer.Option(help="tool annotations as JSON, e.g. {\"readOnlyHint\": true}")] = "{}",
) -> None:
    """Print the decision for one tool call, the rule that decided and why. Exit 0 allow, 1 deny, 2 bad input."""
    try:
        cfg = load_config(config).config
    except ConfigError as exc:
        typer.echo("\n".join(f"error: {p}" for p in exc.problems), err=True)
        raise typer.Exit(2) from exc
    try:
        arguments = json.loads(args)
        ann = json.loads(annotations)
    except json.JSONDecodeError as exc:
        typer.echo(f"error: --args/--annotations must be JSON: {exc.msg}", err=True)
        raise typer.Exit(2) from exc
    if not isinstance(arguments, dict) or not isinstance(ann, dict) or "." not in call:
        typer.echo("error: --args and --annotations must be JSON objects; --call is upstream.tool", err=True)
        raise typer.Exit(2)
    if virtual_server is not None and virtual_server not in cfg.virtual_servers:
        typer.echo(f"error: unknown virtual server {virtual_server!r}", err=True)
        raise typer.Exit(2)
    who = _principal(principal, user)
    for role in who.roles:
        if role not in cfg.roles:
            typer.echo(f"warning: role {role!r} is not defined under `roles:` in {config} "
                       f"(defined: {', '.join(sorted(cfg.roles)) or 'none'}); it grants nothing", err=True)
    if not who.roles:
        typer.echo(f"warning: principal {principal!r} has no roles (write AGENT:ROLE1,ROLE2)", err=True)
    allowed, steps = explain(cfg, virtual_server, who, call, arguments, ann)
    for step in steps:
        typer.echo(step)
    raise typer.Exit(0 if allowed else 1)
