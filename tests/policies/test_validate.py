"""Schema compilation for the validate policy: cached by hash, offline, fail open; paths; config checks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory, View, build_view
from stile.core.context import CallContext, Reply
from stile.policies.registry import check_chains
from stile.policies.validate import SchemaCache, Validate, ValidateConfig, json_path

SCHEMA = {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 0}}, "required": ["limit"]}


def test_equal_schemas_share_one_compiled_validator() -> None:
    cache = SchemaCache()
    first = cache.get(SCHEMA, "s")
    assert first is not None and cache.get(dict(reversed(list(SCHEMA.items()))), "s") is first
    assert cache.get({**SCHEMA, "required": []}, "s") is not first


def test_a_schema_that_does_not_compile_is_logged_once_and_not_validated(caplog: pytest.LogCaptureFixture) -> None:
    cache = SchemaCache()
    broken = {"type": "nope"}
    with caplog.at_level(logging.WARNING, logger="stile.validate"):
        assert cache.get(broken, "inputSchema of tool 'x'") is None
        assert cache.get(broken, "inputSchema of tool 'x'") is None
    assert len([r for r in caplog.records if "does not compile" in r.message]) == 1
    assert cache.get("not a schema", "s") is None and cache.get(None, "s") is None


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_remote_ref_is_never_fetched(http_server: tuple[str, list[str]]) -> None:
    url, seen = http_server
    assert SchemaCache().get({"$ref": f"{url}/schema.json"}, "s") is None  # fail open, offline
    assert seen == []


def test_formats_are_annotations() -> None:
    compiled = SchemaCache().get({"type": "string", "format": "email"}, "s")
    assert compiled is not None and compiled.is_valid("not an email")


def test_first_error_names_the_path_and_bounds_the_message() -> None:
    compiled = SchemaCache().get({"type": "object", "properties": {"a b": {"maxLength": 1}}}, "s")
    assert compiled is not None
    path, message = compiled.first_error({"a b": "x" * 10_000}, "arguments")
    assert path == 'arguments["a b"]' and message.startswith('arguments["a b"]: "xxx') and len(message) < 400


def test_json_path() -> None:
    assert json_path("arguments", ["items", 0, "name"]) == "arguments.items[0].name"
    assert json_path("structuredContent", []) == "structuredContent"


@pytest.mark.parametrize(("policies", "expected"), [
    ({"validate": {"input": "strict"}}, "policies.validate.input"),
    ({"validate": {"virtual_servers": {"v": {"outptu": "warn"}}}}, "policies.validate.virtual_servers.v.outptu"),
    ({"redact": {"detectors": ["emial"]}}, "unknown detector(s) ['emial']"),
    ({"redact": {"action": "drop"}}, "policies.redact.action"),
    ({"redact": {"custom": [{"name": "email", "pattern": "x"}]}}, "not be a built-in name"),
    ({"redact": {"custom": [{"name": "t", "pattern": "("}]}}, "not a valid regular expression"),
    ({"redact": {"custom": [{"name": "t", "pattern": "x*"}]}}, "matches the empty string"),
])
def test_bad_policy_config_is_a_clear_config_error(policies: dict[str, object], expected: str) -> None:
    cfg = GatewayConfig.model_validate({"virtual_servers": {"v": {}}, "policies": policies})
    problems = check_chains(cfg, "stile.yaml")
    assert any(expected in p for p in problems), problems


def _policy(output: str) -> Validate:

    cfg = GatewayConfig.model_validate({"upstreams": {"u": {"url": "http://127.0.0.1:9/mcp"}},
                                        "virtual_servers": {"v": {"upstreams": ["u"]}}})
    tool = {"name": "t", "inputSchema": {"type": "object"}, "outputSchema": SCHEMA}
    view = build_view("v", cfg.virtual_servers["v"], cfg, {"u": Inventory(tools=[tool], ok=True)})

    class Views:
        def view(self, name: str) -> View | None:
            return view

        async def ensure_discovered(self, v: View) -> View:
            return v

    return Validate(ValidateConfig.model_validate({"output": output}), ["v"], Views())


@pytest.mark.parametrize("result", [
    {"task": {"taskId": "1", "status": "working"}},  # a task-augmented call: no tool result yet
    {"resultType": "input_required", "inputRequests": {}},
    {"content": [{"type": "text", "text": "boom"}], "isError": True},
])
async def test_results_that_are_not_complete_tool_results_are_not_checked(result: dict[str, object]) -> None:
    policy = _policy("enforce")
    ctx = CallContext("v", "tools/call", {"name": "u__t", "arguments": {}}, 1, "modern", "2026-07-28")

    async def upstream(c: CallContext) -> Reply:
        return {"result": result}

    assert await policy(ctx, upstream) == {"result": result}


async def test_warn_logs_a_violation_once_per_tool_and_schema(caplog: pytest.LogCaptureFixture) -> None:
    policy = _policy("warn")
    ctx = CallContext("v", "tools/call", {"name": "u__t", "arguments": {}}, 1, "legacy", "2025-11-25")
    bad: Reply = {"result": {"content": [], "structuredContent": {"limit": -1}}}

    async def upstream(c: CallContext) -> Reply:
        return bad

    with caplog.at_level(logging.WARNING, logger="stile.validate"):
        for _ in range(3):
            assert await policy(ctx, upstream) == bad
    warned = [r.getMessage() for r in caplog.records if "validate (warn)" in r.getMessage()]
    assert len(warned) == 1 and "structuredContent.limit: -1 is less than the minimum of 0" in warned[0]
