"""Command line: `stile serve | check | demo` (thin; calls library code)."""
