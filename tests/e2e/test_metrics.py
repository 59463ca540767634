"""GET /metrics: Prometheus text that prometheus_client's own parser reads, with real counts."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.support import notes_upstream, stile_server


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with notes_upstream() as url:
        config = {"upstreams": {"notes": {"url": url}}, "virtual_servers": {"v": {"auth": "none"}}}
        with stile_server(config) as base_url:
            yield base_url


def _samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_calls_are_counted_by_tool_upstream_and_outcome(base: str) -> None:
    async with Client(f"{base}/mcp/v", mode="2026-07-28") as client:
        for _ in range(3):
            await client.call_tool("notes__list_notes", {})
        await client.call_tool("notes__get_note", {"note_id": 999})  # the tool raises: isError
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("nope", {})
    samples = _samples(base)
    def count(tool: str, upstream: str, outcome: str) -> float:
        labels = (("method", "tools/call"), ("outcome", outcome), ("tool", tool), ("upstream", upstream),
                  ("virtual_server", "v"))
        return samples.get(("stile_requests_total", labels), 0.0)
    assert count("notes__list_notes", "notes", "ok") == 3
    assert count("notes__get_note", "notes", "is_error") == 1
    assert count("(unknown)", "", "error") == 1  # client-chosen names never become label values
    hist = samples[("stile_request_seconds_count", (("method", "tools/call"), ("virtual_server", "v")))]
    assert hist == 5
    assert samples[("stile_upstream_up", (("era", "modern"), ("upstream", "notes")))] == 1.0
