"""Lookalike tools: a name or description confusingly close to one another upstream already offers.

A malicious upstream can shadow a trusted tool by offering `list_issues`, `list-issues`, `l\u0456st_issues`
(Cyrillic i) or `llst_issues` beside it, hoping the model picks the wrong one. Two tools on different
upstreams look alike when
- their normalised names (NFKC, lowercase, separators `_ - . / : space` removed, homoglyphs folded:
  Cyrillic/Greek letters that look Latin, `0`->`o`, `1`/`i`/`|`->`l`, `rn`->`m`, `vv`->`w`) are within
  edit distance 2 when the shorter normalised name has at least 8 characters, 1 when it has 4 to 7,
  0 (equal after folding) when shorter, so `fetch`/`patch` and `get`/`set` pass, or
- their descriptions are identical after collapsing whitespace and case (and at least 10 characters long).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

_SEPARATORS = str.maketrans("", "", "_-./: \t")
# letters from other scripts that render like Latin ones, and digits that pass for letters
_HOMOGLYPHS = str.maketrans(
    "\u0430\u0432\u0435\u0451\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0455\u0456\u0457"
    "\u0458\u0501\u04bb\u04cf\u051b\u051d\u044c\u03b1\u03b2\u03b5\u03b7\u03b9\u03ba\u03bd\u03bf\u03c1"
    "\u03c4\u03c5\u03c7\u03c9\u03f201i|!35$@",
    "abeekmhopctyxslljdhlqwbabenlkvoptuxwcollllessa",
)
MIN_DESCRIPTION = 10


@lru_cache(maxsize=65536)
def normalise(name: str) -> str:
    """The form two names are compared in (see the module docstring)."""
    text = unicodedata.normalize("NFKC", name).lower().translate(_SEPARATORS).translate(_HOMOGLYPHS)
    return text.replace("rn", "m").replace("vv", "w")


def distance(a: str, b: str, cap: int = 3) -> int:
    """Levenshtein distance, stopping early once it exceeds `cap` (returns cap + 1 then)."""
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > cap:
            return cap + 1
        prev = cur
    return min(prev[-1], cap + 1)


def within(a: str, b: str, k: int) -> bool:
    """Edit distance of `a` and `b` is at most `k` (small k: common ends stripped, then at most 3^k branches)."""
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    end = 0
    while end < len(a) and end < len(b) and a[-1 - end] == b[-1 - end]:
        end += 1
    if end:
        a, b = a[:-end], b[:-end]
    if not a or not b:
        return max(len(a), len(b)) <= k
    if k == 0 or abs(len(a) - len(b)) > k:
        return False
    return within(a[1:], b[1:], k - 1) or within(a[1:], b, k - 1) or within(a, b[1:], k - 1)


def _description(text: object) -> str:
    return " ".join(text.split()).lower() if isinstance(text, str) else ""


def alike(name_a: str, desc_a: object, name_b: str, desc_b: object) -> str | None:
    """Why two tools look alike (a short reason), or None."""
    na, nb = normalise(name_a), normalise(name_b)
    if na and nb:
        shorter = min(len(na), len(nb))
        limit = 2 if shorter >= 8 else 1 if shorter >= 4 else 0
        d = next((n for n in range(limit + 1) if within(na, nb, n)), None)
        if d is not None:
            return "same name" if name_a == name_b else f"names {name_a!r} and {name_b!r} differ by {d} after " \
                "folding case, separators and lookalike characters"
    da = _description(desc_a)
    if len(da) >= MIN_DESCRIPTION and da == _description(desc_b):
        return "identical description"
    return None


@dataclass(frozen=True)
class Tool:
    upstream: str
    name: str
    description: object  # the upstream's `description` (a string unless it misbehaves)


@dataclass(frozen=True)
class Lookalike:
    new: Tool
    existing: Tool
    reason: str

    def message(self) -> str:
        return (f"tool {self.new.upstream}.{self.new.name} looks like {self.existing.upstream}."
                f"{self.existing.name}: {self.reason}")


MAX_EDITS = 2


def _deletions(text: str, k: int = MAX_EDITS) -> set[str]:
    """`text` with up to `k` characters deleted: two strings within edit distance k share one of these."""
    out, frontier = {text}, {text}
    for _ in range(k):
        frontier = {w[:i] + w[i + 1:] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


def lookalikes(new: Iterable[Tool], existing: Iterable[Tool]) -> list[Lookalike]:
    """Each (new, existing) pair on different upstreams that look alike.

    Candidates come from an index of the existing names' deletion neighbourhoods (and of descriptions),
    so thousands of tools cost milliseconds, not a comparison of every pair; `alike` confirms each.
    """
    by_variant: dict[str, list[Tool]] = {}
    by_description: dict[str, list[Tool]] = {}
    for other in existing:
        for variant in _deletions(normalise(other.name)):
            by_variant.setdefault(variant, []).append(other)
        text = _description(other.description)
        if len(text) >= MIN_DESCRIPTION:
            by_description.setdefault(text, []).append(other)
    out: list[Lookalike] = []
    for tool in new:
        seen: set[tuple[str, str]] = set()
        candidates = [o for v in _deletions(normalise(tool.name)) for o in by_variant.get(v, ())]
        candidates += by_description.get(_description(tool.description), [])
        for other in candidates:
            if other.upstream == tool.upstream or (other.upstream, other.name) in seen:
                continue
            seen.add((other.upstream, other.name))
            reason = alike(tool.name, tool.description, other.name, other.description)
            if reason is not None:
                out.append(Lookalike(tool, other, reason))
    return out


def pairs(tools: Iterable[Tool]) -> list[Lookalike]:
    """Every unordered pair of tools on different upstreams that look alike (for `stile check`)."""
    listed = list(tools)
    found = lookalikes(listed, listed)
    out, kept = [], set()
    for hit in found:
        key = frozenset({(hit.new.upstream, hit.new.name), (hit.existing.upstream, hit.existing.name)})
        if key not in kept:
            kept.add(key)
            out.append(hit)
    return out
