#!/usr/bin/env bash
# Starts a throwaway S3 server for the tests (sourced by scripts/test): moto's standalone
# server from the project's .venv (installed from tests/s3/requirements.txt), on a free
# loopback port, with the bucket the tests use. Sets NEPHOS_TEST_S3_ENDPOINT; registers
# nothing itself: call nephos_s3_stop at exit. Returns non-zero when it cannot start.

nephos_s3_start() {
    [ -x .venv/bin/moto_server ] || { echo "scripts/test: moto_server is not installed" >&2; return 1; }
    local port
    port="$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
    NEPHOS_S3_LOG="$(mktemp)"
    .venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$NEPHOS_S3_LOG" 2>&1 &
    NEPHOS_S3_PID=$!
    local endpoint="http://127.0.0.1:$port"
    for _ in $(seq 100); do
        if python3 -c "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='PUT'), timeout=2)" \
            "$endpoint/nephos-test" 2>/dev/null; then
            export NEPHOS_TEST_S3_ENDPOINT="$endpoint"
            echo "scripts/test: throwaway S3 server (moto) on port $port" >&2
            return 0
        fi
        sleep 0.1
    done
    cat "$NEPHOS_S3_LOG" >&2
    return 1
}

nephos_s3_stop() {
    if [ -n "${NEPHOS_S3_PID:-}" ]; then
        kill "$NEPHOS_S3_PID" 2>/dev/null || true
        wait "$NEPHOS_S3_PID" 2>/dev/null || true
        rm -f "$NEPHOS_S3_LOG"
    fi
}
