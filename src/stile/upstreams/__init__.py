"""Upstream clients: one `Upstream` interface; Streamable HTTP, legacy HTTP+SSE and stdio."""
