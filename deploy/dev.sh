#!/usr/bin/env bash
# The local stack in one command: builds both binaries, makes a development certificate if there is
# none, starts the demo app on loopback and the proxy on https://localhost:8443, and stops both on
# Ctrl-C. If either process exits, dev.sh stops the other at once, names the one that exited, shows
# its last log lines and exits non-zero.
#
#   deploy/dev.sh                                        # the demo app behind the proxy
#   PROXY_UPSTREAM=http://127.0.0.1:5000 deploy/dev.sh   # your own app instead (the demo app is not started)
#   PROXY_LISTEN=0.0.0.0:8443 deploy/dev.sh              # listen on every interface, not only this machine
#   APP_LISTEN=127.0.0.1:8001 deploy/dev.sh              # the demo app on another port (the proxy follows)
#
# Settings come from the usual places: flags are not passed here, so the proxy reads PROXY_* / TLS_* /
# CORS variables from the environment and from `.env` in the repository root (see docs/configuration.md).
# dev.sh's own: DEV_BIN_DIR (use the `app` and `proxy` binaries in this folder instead of building
# release ones), DEV_LOG_DIR (where each process's output is kept; default target/dev-logs).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "dev.sh: $*" >&2; exit 1; }

# A setting given in the environment or in .env (what the proxy itself would read).
setting() {
    if [[ -n ${!1:-} ]]; then
        printf '%s' "${!1}"
    elif [[ -f .env ]]; then
        sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" .env | tail -n 1 | tr -d "\"'"
    fi
}

upstream=$(setting PROXY_UPSTREAM)
demo=yes
[[ -n $upstream ]] && demo=no
app_listen=$(setting APP_LISTEN)
if [[ $demo == yes && -n $app_listen ]]; then
    # The demo app elsewhere than its default: the proxy follows it.
    case $app_listen in
        unix:*) upstream=$app_listen ;;
        *) upstream=http://$app_listen ;;
    esac
    export PROXY_UPSTREAM=$upstream
fi
listen=$(setting PROXY_LISTEN)
if [[ -z $listen ]]; then
    # This machine only by default: the demo users' password is `password`.
    listen=127.0.0.1:8443
    export PROXY_LISTEN=$listen
fi
port=${listen##*:}

if [[ -n ${DEV_BIN_DIR:-} ]]; then
    bin=$DEV_BIN_DIR
else
    cargo build --release --locked -p app -p proxy
    bin=${CARGO_TARGET_DIR:-target}/release
fi
for name in proxy $([[ $demo == yes ]] && echo app); do
    [[ -x $bin/$name ]] || die "no executable $bin/$name: build it (cargo build -p $name) or unset DEV_BIN_DIR"
done

cert=${TLS_CERT_FILE:-cert/cert.pem}
key=${TLS_KEY_FILE:-cert/key.pem}
if [[ ! -f $cert || ! -f $key ]]; then
    echo "dev.sh: no certificate at $cert / $key: generating a development one"
    "$bin/proxy" cert --out-dir "$(dirname "$cert")"
fi

logs=${DEV_LOG_DIR:-target/dev-logs}
mkdir -p "$logs"
names=()
pids=()
tails=()
stop() {
    trap - INT TERM EXIT
    # SIGTERM lets both drain in-flight requests; wait collects them.
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    # The log followers last, so that the drain's log lines are shown.
    kill "${tails[@]}" 2>/dev/null || true
    wait "${tails[@]}" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

start() { # start NAME: runs $bin/NAME with its output in $logs/NAME.log, shown here as it comes
    local log="$logs/$1.log"
    : >"$log"
    "$bin/$1" >"$log" 2>&1 &
    names+=("$1")
    pids+=($!)
    # --pid: the follower ends by itself once the process has exited and its last lines are shown.
    tail -n +1 -f --pid="$!" "$log" 2>/dev/null | sed -u "s/^/[$1] /" &
    tails+=($!)
}

exited() { # exited [PID STATUS]: if a process has exited, names it, shows its log's end, exits 1
    local i status
    for i in "${!pids[@]}"; do
        if [[ ${pids[i]} == "${1:-}" ]]; then
            status=$2
        elif ! kill -0 "${pids[i]}" 2>/dev/null; then
            status=0
            wait "${pids[i]}" || status=$?
        else
            continue
        fi
        {
            echo
            echo "dev.sh: the ${names[i]} exited (status $status); the last lines of $logs/${names[i]}.log:"
            tail -n 15 "$logs/${names[i]}.log" | sed 's/^/  | /'
        } >&2
        if grep -qi 'in use' "$logs/${names[i]}.log"; then
            case ${names[i]} in
                app) echo "dev.sh: another program has the app's port: stop it, or move the demo app with APP_LISTEN (default 127.0.0.1:8000; the proxy follows)" >&2 ;;
                proxy) echo "dev.sh: another program has the proxy's port: stop it, or set PROXY_LISTEN (now $listen)" >&2 ;;
            esac
        fi
        exit 1
    done
}

[[ $demo == yes ]] && start app
start proxy

# Wait for the proxy to complete a TLS handshake (its own health check), not for a fixed time.
deadline=$((SECONDS + 30))
until "$bin/proxy" healthcheck --addr "127.0.0.1:$port" >/dev/null 2>&1; do
    exited
    ((SECONDS <= deadline)) || die "the proxy did not come up within 30 s; its log: $logs/proxy.log"
    sleep 0.2
done
exited

if [[ $demo == yes ]]; then
    cat <<MSG

  The stack is up:  https://localhost:$port/   (listening on $listen)
  Demo login:       behai_nguyen@hotmail.com / password   (or pranav.furedi.10198@gmail.com / password)
  Certificate:      $cert (trust it as cert/README.md explains)
  Logs:             $logs/app.log, $logs/proxy.log
  Ctrl-C stops both.

MSG
else
    cat <<MSG

  The proxy is up:  https://localhost:$port/ -> $upstream   (listening on $listen)
  Certificate:      $cert (trust it as cert/README.md explains)
  Log:              $logs/proxy.log
  Ctrl-C stops it.

MSG
fi
# Stop as soon as either process exits (or on Ctrl-C, through the trap), saying which and why.
status=0
wait -n -p done "${pids[@]}" || status=$?
exited "${done:-}" "$status"
