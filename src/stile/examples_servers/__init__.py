"""Bundled example upstreams (official `mcp` SDK) used by `stile demo` and the tests."""
