#!/usr/bin/env bash
# Install Node 22 and the MCP conformance tooling under <repo>/tools/ (idempotent).
#
#   tools/node22       node@22 from npm (bin: tools/node22/node_modules/.bin/node)
#   tools/conf-legacy  @modelcontextprotocol/conformance@0.1.16
#   tools/conf-modern  @modelcontextprotocol/conformance@0.2.0-alpha.12
#   tools/everything   @modelcontextprotocol/server-everything@2026.8.31 (+ loopback.mjs)
#   tools/oauth        oauth2-mock-server@9.3.0 (authorization server for tests/e2e/test_oauth.py)
#
# Each step is skipped when its package is already installed at the pinned version.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS_DIR="$SCRIPT_DIR"          # this script lives in <repo>/tools/

NODE_SPEC="node@22"
LEGACY_VERSION="0.1.16"
MODERN_VERSION="0.2.0-alpha.12"
EVERYTHING_VERSION="2026.8.31"
OAUTH_MOCK_VERSION="9.3.0"

log() { printf '[install-node] %s\n' "$*" >&2; }

command -v npm >/dev/null 2>&1 || { log "npm is required (any Node version) to bootstrap"; exit 1; }

# installed_version DIR PACKAGE -> prints the installed version or nothing
installed_version() {
  local pj="$1/node_modules/$2/package.json"
  [[ -f "$pj" ]] || return 0
  sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$pj" | head -n1
}

# npm_install DIR PACKAGE VERSION_SPEC
npm_install() {
  local dir="$1" pkg="$2" spec="$3"
  mkdir -p "$dir"
  if [[ ! -f "$dir/package.json" ]]; then
    (cd "$dir" && npm init -y >/dev/null)
  fi
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "$pkg@$spec")
}

# 1. Node 22
NODE_DIR="$TOOLS_DIR/node22"
NODE_BIN="$NODE_DIR/node_modules/.bin/node"
if [[ -x "$NODE_BIN" ]] && "$NODE_BIN" --version 2>/dev/null | grep -q '^v22\.'; then
  log "node22 present: $("$NODE_BIN" --version)"
else
  log "installing $NODE_SPEC into $NODE_DIR"
  npm_install "$NODE_DIR" node 22
  "$NODE_BIN" --version
fi
export PATH="$NODE_DIR/node_modules/.bin:$PATH"

# 2./3. conformance suites
for pair in "conf-legacy:$LEGACY_VERSION" "conf-modern:$MODERN_VERSION"; do
  sub="${pair%%:*}"
  ver="${pair#*:}"
  dir="$TOOLS_DIR/$sub"
  have="$(installed_version "$dir" @modelcontextprotocol/conformance)"
  if [[ "$have" == "$ver" ]]; then
    log "$sub present: @modelcontextprotocol/conformance@$have"
  else
    log "installing @modelcontextprotocol/conformance@$ver into $dir"
    npm_install "$dir" @modelcontextprotocol/conformance "$ver"
  fi
done

# 4. server-everything + loopback preload
EV_DIR="$TOOLS_DIR/everything"
have="$(installed_version "$EV_DIR" @modelcontextprotocol/server-everything)"
if [[ "$have" == "$EVERYTHING_VERSION" ]]; then
  log "everything present: @modelcontextprotocol/server-everything@$have"
else
  log "installing @modelcontextprotocol/server-everything@$EVERYTHING_VERSION into $EV_DIR"
  npm_install "$EV_DIR" @modelcontextprotocol/server-everything "$EVERYTHING_VERSION"
fi
if ! cmp -s "$TOOLS_DIR/loopback.mjs" "$EV_DIR/loopback.mjs"; then
  cp "$TOOLS_DIR/loopback.mjs" "$EV_DIR/loopback.mjs"
  log "copied loopback.mjs into $EV_DIR"
fi

# 5. oauth2-mock-server (a real authorization server for the OAuth end-to-end test)
OAUTH_DIR="$TOOLS_DIR/oauth"
have="$(installed_version "$OAUTH_DIR" oauth2-mock-server)"
if [[ "$have" == "$OAUTH_MOCK_VERSION" ]]; then
  log "oauth present: oauth2-mock-server@$have"
else
  log "installing oauth2-mock-server@$OAUTH_MOCK_VERSION into $OAUTH_DIR"
  npm_install "$OAUTH_DIR" oauth2-mock-server "$OAUTH_MOCK_VERSION"
fi
# keep the installed tree out of git (the repo's .gitignore predates this directory)
[[ -f "$OAUTH_DIR/.gitignore" ]] || printf '*\n' > "$OAUTH_DIR/.gitignore"

log "done (node: $("$NODE_BIN" --version))"
