#!/usr/bin/env bash
# deploy/dev-test.sh: the test of deploy/dev.sh with real processes, on loopback, in seconds:
#   1. the app's port already taken: dev.sh stops at once, names the app, shows its log, exits non-zero;
#   2. PROXY_UPSTREAM set (your own app) and the proxy's port taken: no demo app, no demo login, the
#      proxy named;
#   3. PROXY_UPSTREAM set, all free: "The proxy is up", and SIGTERM stops it;
#   4. the demo stack (the app on another port, which the proxy follows) up and answering, then the
#      app killed: dev.sh names it, stops the proxy and exits 1.
# It uses built binaries (DEV_BIN_DIR, default target/debug: run `cargo build` first), a temporary
# HOME, certificate and log folder; the last line is "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir="${DEV_BIN_DIR:-target/debug}"
for name in app proxy; do
    [[ -x $bin_dir/$name ]] || { echo "dev-test.sh: no $bin_dir/$name: run 'cargo build' (or set DEV_BIN_DIR)" >&2; exit 1; }
done
bin_dir="$(cd "$bin_dir" && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/dev-test.XXXXXX")"
holder=""
dev=""
# Keeps the script's own exit status: the `wait` for a process it just killed returns 143, which
# `set -e` would otherwise make the script's.
cleanup() {
    local rc=$?
    if [[ -n $dev ]]; then kill "$dev" 2>/dev/null && wait "$dev" 2>/dev/null || true; fi
    if [[ -n $holder ]]; then kill "$holder" 2>/dev/null && wait "$holder" 2>/dev/null || true; fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT

passed=0
failed=0
check() { # check DESCRIPTION COMMAND...
    local what="$1"
    shift
    if "$@"; then passed=$((passed + 1)); echo "ok   - $what"; else failed=$((failed + 1)); echo "FAIL - $what"; fi
}

# A port that something listens on (and never answers), for the test's lifetime.
python3 -c '
import signal, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
signal.pause()' >"$tmp/held" &
holder=$!
deadline=$((SECONDS + 10))
until [[ -s $tmp/held ]]; do
    ((SECONDS < deadline)) || { echo "dev-test.sh: the port holder did not start" >&2; exit 1; }
    sleep 0.05
done
held="$(cat "$tmp/held")"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# dev_sh NAME ENV... COMMAND...: runs COMMAND (dev.sh) with the test's settings (and ENV), output in
# $tmp/NAME.out. It replaces the shell it runs in, so that `dev_sh … &` gives dev.sh's own pid.
dev_sh() {
    local name="$1"
    shift
    exec env -u PROXY_UPSTREAM -u PROXY_LISTEN -u APP_LISTEN HOME="$tmp/home" DEV_BIN_DIR="$bin_dir" \
        DEV_LOG_DIR="$tmp/logs-$name" TLS_CERT_FILE="$tmp/cert/cert.pem" TLS_KEY_FILE="$tmp/cert/key.pem" \
        "$@" >"$tmp/$name.out" 2>&1
}

# run_dev NAME ENV...: runs dev.sh to its end (at most 60 s).
run_dev() {
    local name="$1"
    shift
    (dev_sh "$name" "$@" timeout 60 deploy/dev.sh)
}

# start_dev NAME LINE ENV...: starts dev.sh in the background ($dev) and waits until its output
# shows LINE, it exits, or 60 s pass.
start_dev() {
    local name="$1" line="$2"
    shift 2
    : >"$tmp/$name.out"
    dev_sh "$name" "$@" deploy/dev.sh &
    dev=$!
    local deadline=$((SECONDS + 60))
    until grep -q "$line" "$tmp/$name.out"; do
        if ! kill -0 "$dev" 2>/dev/null || ((SECONDS > deadline)); then break; fi
        sleep 0.1
    done
}

echo "== 1. the app's port is taken"
rc=0
run_dev app-taken APP_LISTEN="127.0.0.1:$held" PROXY_LISTEN="127.0.0.1:$(free_port)" || rc=$?
check "dev.sh exits non-zero, and not by the test's timeout (rc $rc)" test "$rc" != 0 -a "$rc" != 124
check "it names the app as the process that exited" grep -q 'dev.sh: the app exited (status 64)' "$tmp/app-taken.out"
check "it shows the app's last log lines (address in use)" grep -qi '  | .*in use' "$tmp/app-taken.out"
check "it says what to do" grep -q "another program has the app's port" "$tmp/app-taken.out"
check "it never said the stack is up" bash -c "! grep -q 'The stack is up' '$tmp/app-taken.out'"

echo "== 2. PROXY_UPSTREAM set, the proxy's port is taken"
rc=0
run_dev proxy-taken PROXY_UPSTREAM="http://127.0.0.1:$(free_port)" PROXY_LISTEN="127.0.0.1:$held" || rc=$?
check "dev.sh exits non-zero (rc $rc)" test "$rc" != 0 -a "$rc" != 124
check "it names the proxy" grep -q 'dev.sh: the proxy exited' "$tmp/proxy-taken.out"
check "it says what to do" grep -q "another program has the proxy's port" "$tmp/proxy-taken.out"
check "the demo app was not started, and no demo login printed" \
    bash -c "! grep -q '^\[app\]' '$tmp/proxy-taken.out' && [ ! -e '$tmp/logs-proxy-taken/app.log' ] && ! grep -qi 'demo login' '$tmp/proxy-taken.out'"

echo "== 3. PROXY_UPSTREAM set, ports free: up, then SIGTERM"
port="$(free_port)"
start_dev up 'The proxy is up' PROXY_UPSTREAM="http://127.0.0.1:$(free_port)" PROXY_LISTEN="127.0.0.1:$port"
check "dev.sh says the proxy is up, pointing at the given upstream" grep -q "The proxy is up:  https://localhost:$port/ -> http://127.0.0.1:" "$tmp/up.out"
check "no demo login with PROXY_UPSTREAM set" bash -c "! grep -qi 'demo login' '$tmp/up.out'"
kill -TERM "$dev"
rc=0
wait "$dev" || rc=$?
dev=""
check "SIGTERM stops it (rc $rc) and the proxy with it (its port is free again)" \
    bash -c "[ '$rc' = 130 ] && ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null"

echo "== 4. the demo stack up, then the app dies: dev.sh stops the proxy and says so"
port="$(free_port)"
start_dev demo 'The stack is up' APP_LISTEN="127.0.0.1:$(free_port)" PROXY_LISTEN="127.0.0.1:$port"
check "dev.sh says the stack is up, with the demo login" bash -c "grep -q 'The stack is up' '$tmp/demo.out' && grep -q 'Demo login' '$tmp/demo.out'"
login="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$tmp/cert/cert.pem" \
    --resolve "localhost:$port:127.0.0.1" "https://localhost:$port/auth/login" 2>&1 || true)"
check "the proxy reaches the demo app on its APP_LISTEN port: /auth/login $login" test "$login" = 200
app_pid="$(pgrep -P "$dev" -x app || true)"
[[ -n $app_pid ]] && kill -KILL "$app_pid"
rc=0
wait "$dev" || rc=$?
dev=""
check "when the app dies, dev.sh exits 1 (rc $rc), naming it" \
    bash -c "[ '$rc' = 1 ] && grep -q 'dev.sh: the app exited (status 137)' '$tmp/demo.out'"
check "... and the proxy is stopped with it (its port is free again)" \
    bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null"

if ((failed > 0)) || [[ -n ${DEV_TEST_VERBOSE:-} ]]; then
    for f in "$tmp"/*.out; do echo "--- $f"; tail -n 30 "$f"; done
fi
echo
echo "dev-test: $passed passed, $failed failed"
((failed == 0))
