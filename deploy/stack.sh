# shellcheck shell=bash
# deploy/stack.sh: sourced (not run) by deploy/tls-check.sh and deploy/soak.sh. Starts the demo app
# and the proxy from built binaries on loopback ports the kernel picks (port 0, read back from their
# JSON logs, so no free-port race), with a development certificate from a throw-away local CA, and
# stops them. Nothing here builds.
#
#   stack_start BIN_DIR WORK_DIR [PROXY_FLAG...]   # sets STACK_PORT, STACK_CA, STACK_PROXY_PID, STACK_APP_PID
#   stack_stop                                     # SIGTERM both and wait (call it from the caller's EXIT trap)
#
# Both processes get an empty environment (PATH and a HOME inside WORK_DIR) and run in WORK_DIR, so
# no PROXY_*/CORS variable, `.env` or cert/ folder of the caller's changes what is tested. Their
# logs (JSON) go to STACK_LOG_DIR if set, else WORK_DIR/logs.

STACK_PORT=""
STACK_CA=""
STACK_PROXY_PID=""
STACK_APP_PID=""
STACK_LOGS=""

# stack_addr LOG MESSAGE: the `addr` of the JSON log line whose message is MESSAGE, if written yet.
stack_addr() {
    sed -n "s/.*\"message\":\"$2\".*\"addr\":\"\\([^\"]*\\)\".*/\\1/p; s/.*\"addr\":\"\\([^\"]*\\)\".*\"message\":\"$2\".*/\\1/p" "$1" | head -n 1
}

# stack_wait_addr NAME PID LOG MESSAGE: prints the address once logged; fails if the process exits
# or 30 s pass first.
stack_wait_addr() {
    local name=$1 pid=$2 log=$3 message=$4 addr="" deadline=$((SECONDS + 30))
    until addr=$(stack_addr "$log" "$message") && [[ -n $addr ]]; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
            echo "stack.sh: the $name did not start listening; the end of $log:" >&2
            tail -n 20 "$log" | sed 's/^/  | /' >&2
            return 1
        fi
        sleep 0.05
    done
    printf '%s\n' "$addr"
}

stack_start() {
    local bin=$1 work=$2
    shift 2
    local name
    for name in app proxy; do
        [[ -x $bin/$name ]] || { echo "stack.sh: no executable $bin/$name: run 'cargo build -p app -p proxy' first" >&2; return 1; }
    done
    bin=$(cd "$bin" && pwd)
    STACK_LOGS=${STACK_LOG_DIR:-$work/logs}
    mkdir -p "$STACK_LOGS" "$work/home" "$work/data"
    STACK_LOGS=$(cd "$STACK_LOGS" && pwd)
    local clean_env=(env -i PATH="$PATH" HOME="$work/home")

    # The local CA and a certificate from it (30 days: inside Mozilla's 366-day maximum lifespan).
    (cd "$work" && "${clean_env[@]}" "$bin/proxy" --data-dir "$work/data" cert --out-dir "$work/cert" >"$STACK_LOGS/cert.log" 2>&1) ||
        { echo "stack.sh: 'proxy cert' failed:" >&2; cat "$STACK_LOGS/cert.log" >&2; return 1; }
    STACK_CA=$work/data/ca.pem
    [[ -f $STACK_CA ]] || { echo "stack.sh: 'proxy cert' made no $STACK_CA" >&2; return 1; }

    : >"$STACK_LOGS/app.log"
    : >"$STACK_LOGS/proxy.log"
    (cd "$work" && exec "${clean_env[@]}" APP_LISTEN=127.0.0.1:0 APP_LOG_FORMAT=json "$bin/app") >"$STACK_LOGS/app.log" 2>&1 &
    STACK_APP_PID=$!
    local app_addr
    app_addr=$(stack_wait_addr app "$STACK_APP_PID" "$STACK_LOGS/app.log" listening) || return 1

    (cd "$work" && exec "${clean_env[@]}" "$bin/proxy" --listen 127.0.0.1:0 --upstream "http://$app_addr" \
        --tls-cert "$work/cert/cert.pem" --tls-key "$work/cert/key.pem" --data-dir "$work/data" \
        --log-format json "$@") >"$STACK_LOGS/proxy.log" 2>&1 &
    STACK_PROXY_PID=$!
    local proxy_addr
    proxy_addr=$(stack_wait_addr proxy "$STACK_PROXY_PID" "$STACK_LOGS/proxy.log" 'listening (https)') || return 1
    STACK_PORT=${proxy_addr##*:}

    # Listening is logged before the accept loop runs: wait for a completed TLS handshake too.
    local deadline=$((SECONDS + 30))
    until "$bin/proxy" healthcheck --addr "127.0.0.1:$STACK_PORT" >/dev/null 2>&1; do
        if ! kill -0 "$STACK_PROXY_PID" 2>/dev/null || ((SECONDS > deadline)); then
            echo "stack.sh: the proxy on 127.0.0.1:$STACK_PORT never completed a handshake; its log:" >&2
            tail -n 20 "$STACK_LOGS/proxy.log" | sed 's/^/  | /' >&2
            return 1
        fi
        sleep 0.05
    done
}

stack_stop() {
    local pid
    for pid in $STACK_PROXY_PID $STACK_APP_PID; do
        if kill -TERM "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
    done
    STACK_PROXY_PID=""
    STACK_APP_PID=""
}
