#!/usr/bin/env bash
# Make sure the services the test suite needs are up: PostgreSQL on 127.0.0.1:5432 (a user that may
# CREATE DATABASE: each run creates and drops its own `stile_test_<random>`) and Redis on 127.0.0.1:6379.
# Starts the machine's own services when they are down; says exactly what is missing otherwise.
# Another server: STILE_TEST_PG_URL=postgresql://user@host:port/db (any existing db to connect to).
set -uo pipefail

PG_URL="${STILE_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
hostport="${PG_URL#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
PG_HOST="${hostport%%:*}"; PG_PORT="${hostport##*:}"; [ "$PG_PORT" = "$hostport" ] && PG_PORT=5432

need() { command -v "$1" >/dev/null 2>&1 || { echo "services: '$1' not found: $2" >&2; exit 1; }; }
need pg_isready "install the PostgreSQL client tools (Debian: apt-get install postgresql)"
need redis-cli "install Redis (Debian: apt-get install redis-server)"

pg_up() { pg_isready -h "$PG_HOST" -p "$PG_PORT" -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "services: starting the machine's PostgreSQL"
  for version in /etc/postgresql/*; do
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start 2>&1 | sed 's/^/  /'
  done
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  echo "services: starting Redis on 127.0.0.1:6379"
  mkdir -p "${TMPDIR:-/tmp}/stile-redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}/stile-redis" --logfile "${TMPDIR:-/tmp}/stile-redis/redis.log" >/dev/null
fi
for _ in $(seq 1 50); do pg_up && redis_up && break; sleep 0.1; done

ok=1
if ! pg_up; then
  echo "services: FATAL: PostgreSQL is not reachable at $PG_HOST:$PG_PORT. The store tests need it: start it" >&2
  echo "  (Debian: pg_ctlcluster <version> main start) or set STILE_TEST_PG_URL to a server you may CREATE DATABASE on" >&2
  ok=0
fi
if ! redis_up; then
  echo "services: FATAL: Redis is not reachable at 127.0.0.1:6379: start it (redis-server --port 6379)" >&2
  ok=0
fi
# the cross-replica proofs (tests/e2e/test_cluster_*.py) run a real round-robin load balancer
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ] && command -v apt-get >/dev/null 2>&1; then
  echo "services: installing haproxy (apt-get install -y haproxy)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >/dev/null 2>&1; }
fi
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  echo "services: FATAL: haproxy is not installed: the cross-replica tests need it (Debian: apt-get install -y haproxy)" >&2
  ok=0
fi
[ "$ok" = 1 ] || exit 1
echo "services: PostgreSQL $PG_HOST:$PG_PORT and Redis 127.0.0.1:6379 are up"
