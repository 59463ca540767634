"""Canonical definitions and their hashes: what a pin is computed over.

A pin is ``sha256:<hex>`` of the canonical JSON (sorted keys, no insignificant whitespace, UTF-8, integral
floats written as integers) of the fields that describe an item to a model or a client:
- tools: name, title, description, inputSchema, outputSchema, annotations;
- prompts: name, title, description, arguments;
- resource templates: uriTemplate, name, title, description, mimeType.
Other fields (`_meta`, icons, execution hints) are not pinned: they may change without a re-approval.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PINNED_FIELDS: dict[str, tuple[str, ...]] = {
    "tool": ("name", "title", "description", "inputSchema", "outputSchema", "annotations"),
    "prompt": ("name", "title", "description", "arguments"),
    "template": ("uriTemplate", "name", "title", "description", "mimeType"),
}
# the field naming an item of each kind within its upstream (a template is known by its URI template)
KEY_FIELD = {"tool": "name", "prompt": "name", "template": "uriTemplate"}
# Inventory attribute holding each kind
INVENTORY_FIELD = {"tool": "tools", "prompt": "prompts", "template": "templates"}


def definition(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    """The pinned part of an item (absent fields stay absent)."""
    return {k: item[k] for k in PINNED_FIELDS[kind] if k in item}


def _normal(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Sorted keys, compact separators, non-ASCII kept: equal for equal JSON values whatever their layout."""
    return json.dumps(_normal(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pin_hash(kind: str, item: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of an item's pinned definition."""
    return "sha256:" + hashlib.sha256(canonical_json(definition(kind, item)).encode("utf-8")).hexdigest()
