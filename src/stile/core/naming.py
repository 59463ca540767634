"""Name-spacing of exposed names and resource URIs, and its inverse.

Tools and prompts: `<upstream><sep><name>`. Resource URIs: `<upstream>+<uri>` (the upstream name
joins the URI scheme, so the result is still a URI and templates keep their `{vars}`).
"""

from __future__ import annotations

import re

EXPOSED_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class Namer:
    def __init__(self, prefixed: bool, separator: str) -> None:
        self.prefixed = prefixed
        self.separator = separator

    def name(self, upstream: str, name: str) -> str:
        return f"{upstream}{self.separator}{name}" if self.prefixed else name

    def uri(self, upstream: str, uri: str) -> str:
        return f"{upstream}+{uri}" if self.prefixed else uri

    def split_uri(self, exposed: str, upstreams: list[str]) -> tuple[str, str] | None:
        """Inverse of `uri` for prefixed names (unprefixed views need a single upstream)."""
        if not self.prefixed:
            return (upstreams[0], exposed) if len(upstreams) == 1 else None
        up, plus, rest = exposed.partition("+")
        if plus and up in upstreams:
            return up, rest
        return None
