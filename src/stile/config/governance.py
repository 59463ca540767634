"""`governance:` config: tool pinning against rug pulls (public keys; keep them working)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PinningMode = Literal["block", "flag", "off"]
KINDS = ("tool", "prompt", "template")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_UPSTREAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def parse_ref(ref: str) -> tuple[str | None, str, str]:
    """``[kind:]upstream.name`` -> (kind or None, upstream, name); ValueError when malformed.

    Tools are the default kind; templates are named by their URI template (``template:files.file:///{p}``).
    """
    kind: str | None = None
    head, sep, rest = ref.partition(":")
    if sep and head in KINDS:
        kind, ref = head, rest
    upstream, dot, name = ref.partition(".")
    if not dot or not name or not _UPSTREAM.match(upstream):
        raise ValueError(f"{ref!r} must be `upstream.name` (optionally `prompt:` or `template:` first)")
    return kind, upstream, name


def format_ref(kind: str, upstream: str, name: str) -> str:
    return f"{upstream}.{name}" if kind == "tool" else f"{kind}:{upstream}.{name}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GovernanceConfig(_Strict):
    """Pinning: the definition hash of each tool, prompt and resource template is recorded on first sight
    (or approved ahead here in `pins`); a changed definition, or one that appears later, is hidden (`block`)
    or served and flagged (`flag`) until `stile pins approve`. `off` records nothing."""

    pinning: PinningMode = "flag"
    # approved ahead: `[kind:]upstream.name` -> `sha256:<hex>` (wins over approvals in the state store)
    pins: dict[str, str] = Field(default_factory=dict)
    # seconds between re-reads of the pin table, so approvals made elsewhere (CLI, another replica) apply
    pin_poll_seconds: float = Field(default=10.0, gt=0)

    @field_validator("pins")
    @classmethod
    def _pins(cls, value: dict[str, str]) -> dict[str, str]:
        for ref, digest in value.items():
            parse_ref(ref)
            if not _HASH.match(digest):
                raise ValueError(f"pins[{ref!r}]: {digest!r} is not `sha256:` followed by 64 lowercase hex digits")
        return value

    def pin_index(self) -> dict[tuple[str, str, str], str]:
        """(kind, upstream, name) -> approved hash, from `pins`."""
        out: dict[tuple[str, str, str], str] = {}
        for ref, digest in self.pins.items():
            kind, upstream, name = parse_ref(ref)
            out[(kind or "tool", upstream, name)] = digest
        return out
