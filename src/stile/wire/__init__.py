"""Sans-I/O MCP wire layer: JSON-RPC parsing, errors, eras, headers and SSE framing.

Nothing in this package imports asyncio or an HTTP library (pinned by a test).
"""
