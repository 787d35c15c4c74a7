# shellcheck shell=bash
# The whole system for a check that drives it from outside: the
# `serve-system` binary of crates/system-tests (fresh databases, a fresh
# broker namespace, the edge's rate limits lifted). Sourced, not run.
#
#   ts_start LOG     build and start it, wait until it is ready (120 s at
#                    most), set TS_GATEWAY (http://127.0.0.1:PORT) and
#                    TS_READY (the JSON it wrote)
#   ts_stop          SIGTERM it and wait for its clean stop (it drops its
#                    databases and broker objects), SIGKILL after 30 s
#
# Needs PostgreSQL and RabbitMQ running (scripts/services).

TS_PID=
TS_READY=
# shellcheck disable=SC2034 # read by the scripts that source this
TS_GATEWAY=

ts_start() {
    local log=$1
    cargo build --locked -q -p signalbox-system-tests --bin serve-system
    TS_READY=$(mktemp -u "${TMPDIR:-/tmp}/signalbox-system.XXXXXX.json")
    target/debug/serve-system "$TS_READY" >"$log" 2>&1 &
    TS_PID=$!
    local deadline=$((SECONDS + 120))
    until [[ -s "$TS_READY" ]]; do
        if ! kill -0 "$TS_PID" 2>/dev/null; then
            echo "serve-system exited during start-up; the end of its log ($log):" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "serve-system not ready after 120 s; see $log" >&2
            return 1
        fi
        sleep 0.2
    done
    # shellcheck disable=SC2034 # read by the scripts that source this
    TS_GATEWAY=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["gateway"])' "$TS_READY")
}

ts_stop() {
    [[ -n "$TS_PID" ]] || return 0
    kill -TERM "$TS_PID" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$TS_PID" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "serve-system did not stop within 30 s; killing it" >&2
            kill -KILL "$TS_PID" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$TS_PID" 2>/dev/null || true
    rm -f "$TS_READY"
    TS_PID=
}
