"""A readable diff between an approved and a pending definition (`stile pins diff`).

The description is diffed as text (difflib unified diff, one line per sentence so a sentence slipped into
a one-line description stands out); every other field is flattened to JSON paths
(`inputSchema.properties.repo.type`) and listed as added (+), removed (-) or changed (~).
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _lines(text: object) -> list[str]:
    if not isinstance(text, str):
        return [] if text is None else [json.dumps(text)]
    return [part for line in text.splitlines() for part in _SENTENCE.split(line)]


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """JSON paths of the leaves of `value` (empty objects and arrays are leaves)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = k if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", k) else json.dumps(k)
            out.update(flatten(v, f"{path}.{key}" if path else key))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{path}[{i}]"))
        return out
    return {path: value}


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def definition_diff(approved: dict[str, Any] | None, pending: dict[str, Any]) -> list[str]:
    """Lines describing how `pending` differs from `approved` (everything is new when there is none)."""
    old = approved or {}
    out: list[str] = []
    if old.get("description") != pending.get("description"):
        out.append("description:")
        out.extend("  " + line.rstrip("\n") for line in difflib.unified_diff(
            _lines(old.get("description")), _lines(pending.get("description")), "approved", "pending", lineterm=""))
    before = flatten({k: v for k, v in old.items() if k != "description"})
    after = flatten({k: v for k, v in pending.items() if k != "description"})
    fields: list[str] = []
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            fields.append(f"  - {path}: {_show(before[path])}")
        elif path not in before:
            fields.append(f"  + {path}: {_show(after[path])}")
        elif before[path] != after[path]:
            fields.append(f"  ~ {path}: {_show(before[path])} -> {_show(after[path])}")
    if fields:
        out.append("fields (JSON paths):")
        out.extend(fields)
    return out
