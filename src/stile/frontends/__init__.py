"""ASGI front door: Streamable HTTP (both eras), legacy HTTP+SSE, health."""
