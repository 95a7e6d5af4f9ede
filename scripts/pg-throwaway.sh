#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 server for the tests (sourced by scripts/test).
# Sets NEPHOS_TEST_POSTGRES_URL and registers a trap that stops it and removes its files.
# Returns non-zero when no server could be started.

nephos_pg_start() {
    local pgbin="" port="${NEPHOS_PG_PORT:-55432}"
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && pgbin="$dir"
    done
    if [ -z "$pgbin" ] && command -v initdb >/dev/null 2>&1; then
        pgbin="$(dirname "$(command -v initdb)")"
    fi
    if [ -z "$pgbin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test: installing PostgreSQL (Debian package)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || return 1
        for dir in /usr/lib/postgresql/*/bin; do
            [ -x "$dir/initdb" ] && pgbin="$dir"
        done
    fi
    [ -n "$pgbin" ] || { echo "scripts/test: PostgreSQL binaries not found" >&2; return 1; }
    NEPHOS_PG_TMP="$(mktemp -d)"
    local as=()
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd -r -M postgres || return 1
        chown postgres:postgres "$NEPHOS_PG_TMP"
        as=(runuser -u postgres --)
    fi
    # Pick a free port near the preferred one (one that can be bound: an outgoing connection
    # may hold the port without listening on it).
    while ! python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; do
        port=$((port + 1))
    done
    "${as[@]}" "$pgbin/initdb" -D "$NEPHOS_PG_TMP/data" -U postgres -A trust -E UTF8 --no-sync >/dev/null || return 1
    "${as[@]}" "$pgbin/pg_ctl" -D "$NEPHOS_PG_TMP/data" -l "$NEPHOS_PG_TMP/log" -w \
        -o "-p $port -k $NEPHOS_PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null || {
        cat "$NEPHOS_PG_TMP/log" >&2
        return 1
    }
    NEPHOS_PG_STOP=("${as[@]}" "$pgbin/pg_ctl" -D "$NEPHOS_PG_TMP/data" -m fast -w stop)
    export NEPHOS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "scripts/test: throwaway PostgreSQL on port $port" >&2
}

nephos_pg_stop() {
    if [ -n "${NEPHOS_PG_TMP:-}" ]; then
        "${NEPHOS_PG_STOP[@]}" >/dev/null 2>&1 || true
        rm -rf "$NEPHOS_PG_TMP"
    fi
}
