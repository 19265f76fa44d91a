#!/usr/bin/env bash
# Starts the machine's PostgreSQL 15 (Debian's cluster tools) for the tests and makes sure role and
# database `dagster` (password `dagster`, allowed to create databases) exist. Idempotent.
# Prints the DSN on stdout (messages go to stderr):  export DAGSTER_TEST_PG_DSN="$(bash .ci/postgres.sh)"
set -euo pipefail

VERSION="${PG_VERSION:-15}"
CLUSTER="${PG_CLUSTER:-main}"
PORT="${PG_PORT:-5432}"
ROLE="${PG_ROLE:-dagster}"
PASSWORD="${PG_PASSWORD:-dagster}"
DATABASE="${PG_DATABASE:-dagster}"

say() { echo "postgres.sh: $*" >&2; }

as_postgres() {
  # psql through the Unix socket authenticates by OS user (peer), so run as `postgres`.
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  elif [ "$(id -un)" = postgres ]; then
    "$@"
  else
    sudo -n -u postgres -- "$@"
  fi
}

if ! command -v pg_ctlcluster >/dev/null || [ ! -x "/usr/lib/postgresql/$VERSION/bin/postgres" ]; then
  # A new machine may lack the server; Debian's package is the one these scripts expect.
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing postgresql-$VERSION"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "postgresql-$VERSION" >&2
  else
    say "PostgreSQL $VERSION is not installed and this user cannot install it"
    exit 1
  fi
fi

if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {found = 1} END {exit !found}'; then
  say "creating cluster $VERSION/$CLUSTER on port $PORT"
  pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT" >&2
fi

# The socket directory lives on tmpfs on some machines and is gone after a reboot.
if [ "$(id -u)" -eq 0 ]; then
  install -d -o postgres -g postgres -m 2775 /var/run/postgresql
fi

status=0
pg_ctlcluster "$VERSION" "$CLUSTER" status >/dev/null 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
  say "starting cluster $VERSION/$CLUSTER"
  if ! pg_ctlcluster "$VERSION" "$CLUSTER" start >&2; then
    tail -n 30 "/var/log/postgresql/postgresql-$VERSION-$CLUSTER.log" >&2 || true
    exit 1
  fi
fi

for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.5
done
if ! pg_isready -q -h 127.0.0.1 -p "$PORT"; then
  say "cluster $VERSION/$CLUSTER does not accept connections on 127.0.0.1:$PORT (see pg_lsclusters)"
  exit 1
fi

as_postgres psql -p "$PORT" -X -q -v ON_ERROR_STOP=1 -v role="$ROLE" -v password="$PASSWORD" >&2 <<'SQL'
SELECT format('CREATE ROLE %I', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'password')
\gexec
SQL
as_postgres psql -p "$PORT" -X -q -v ON_ERROR_STOP=1 -v role="$ROLE" -v db="$DATABASE" >&2 <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
SQL

echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
