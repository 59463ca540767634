"""The secrets vault: envelope-encrypted secrets in the state store, resolved for upstreams (docs/credentials.md)."""
