"""Governance of what upstreams offer: tool pinning (rug-pull defence) and lookalike detection."""
