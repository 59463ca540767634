"""Protocol revisions and what each era supports."""

from __future__ import annotations

MODERN = "2026-07-28"
LATEST_LEGACY = "2025-11-25"
LEGACY_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
MODERN_VERSIONS = (MODERN,)
ALL_VERSIONS = MODERN_VERSIONS + LEGACY_VERSIONS

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPS = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"

# Methods whose modern requests carry Mcp-Name, and which may answer input_required.
NAMED_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
LIST_METHODS = ("tools/list", "resources/list", "resources/templates/list", "prompts/list")
# Result fields that only the modern era defines; stripped for legacy clients.
MODERN_ONLY_RESULT_KEYS = ("resultType", "ttlMs", "cacheScope")


def negotiate_legacy(requested: object) -> str:
    """The version a legacy server answers to `initialize`: the same, or our latest legacy."""
    if isinstance(requested, str) and requested in LEGACY_VERSIONS:
        return requested
    return LATEST_LEGACY
