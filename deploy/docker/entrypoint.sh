#!/bin/sh
# The image's entry point. `serve` (the default CMD) runs the gateway on the mounted config:
#   stile serve --config $STILE_CONFIG --host $STILE_HOST --port $STILE_PORT --log-level $STILE_LOG_LEVEL
#               [--workers $STILE_WORKERS, when set] [further CMD arguments]
# Anything else runs `stile ARGS` (e.g. `docker run IMAGE check --offline --config /etc/stile/stile.yaml`).
set -eu
if [ "$#" -eq 0 ] || [ "$1" = serve ]; then
  [ "$#" -gt 0 ] && shift
  if [ ! -r "$STILE_CONFIG" ]; then
    echo "stile: no readable config at $STILE_CONFIG: mount one there (a ConfigMap, or" \
         "-v \$PWD/stile.yaml:$STILE_CONFIG:ro) or point STILE_CONFIG at it" >&2
    exit 64
  fi
  if [ -n "${STILE_WORKERS:-}" ]; then
    set -- --workers "$STILE_WORKERS" "$@"
  fi
  set -- serve --config "$STILE_CONFIG" --host "$STILE_HOST" --port "$STILE_PORT" \
    --log-level "$STILE_LOG_LEVEL" "$@"
fi
exec stile "$@"
