#!/usr/bin/env bash
# deploy/swap.sh: the blue/green swap of the Compose deploy's backend, with the proxy left running.
#
#   deploy/swap.sh green    # start `green` (compose.green.yaml), wait until healthy, point the proxy at
#                           # http://green:8000 (SIGHUP), then stop `app` (blue)
#   deploy/swap.sh blue     # start `app` again, point the proxy back at config/proxy.env's upstream,
#                           # then stop `green`
#
# The choice is kept in the untracked deploy/.state/upstream (DEPLOY_STATE_DIR), which deploy/compose
# merges into the proxy's settings: no tracked file changes. `deploy/compose down --remove-orphans`
# removes green and forgets the choice. Requests keep being answered throughout: the new backend is
# healthy before the proxy switches, and the old one drains its in-flight requests when stopped.
# Settings (env): COMPOSE_FILE (compose.yaml:compose.green.yaml), COMPOSE_PROJECT_NAME (Compose's
# default), SWAP_TIMEOUT (60, seconds for each wait).
set -euo pipefail

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${DEPLOY_STATE_DIR:-$deploy_dir/.state}"
export COMPOSE_FILE="${COMPOSE_FILE:-compose.yaml:compose.green.yaml}"
timeout="${SWAP_TIMEOUT:-60}"

die() { echo "swap.sh: $*" >&2; exit 1; }
dc() { "$deploy_dir/compose" "$@"; }

case "${1:-}" in
    green) new=green old=app ;;
    blue) new=app old=green ;;
    *) die "usage: deploy/swap.sh green|blue (green: switch to compose.green.yaml's backend; blue: back to app)" ;;
esac

proxy="$(dc ps -q proxy 2>/dev/null || true)"
if [ -z "$proxy" ] || [ "$(docker inspect -f '{{.State.Running}}' "$proxy" 2>/dev/null)" != true ]; then
    die "the proxy is not running: start the stack first (deploy/compose up -d)"
fi

wait_healthy() { # wait_healthy SERVICE: until its health check passes, or fail naming why
    local deadline=$((SECONDS + timeout)) id health=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        id="$(dc ps -q "$1" 2>/dev/null || true)"
        health="$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null || true)"
        case "$health" in
            running/healthy) return 0 ;;
            exited/* | dead/*)
                dc logs --tail 20 "$1" >&2 || true
                die "$1 stopped ($health) instead of becoming healthy; its last log lines are above" ;;
        esac
        sleep 0.5
    done
    dc logs --tail 20 "$1" >&2 || true
    die "$1 not healthy within ${timeout}s ($health); its last log lines are above (SWAP_TIMEOUT sets the wait)"
}

echo "swap.sh: starting $new"
dc up -d --no-deps "$new"
wait_healthy "$new"

mkdir -p "$state"
if [ "$new" = green ]; then
    echo "http://green:8000" >"$state/upstream.new"
    mv -f "$state/upstream.new" "$state/upstream"
else
    rm -f "$state/upstream"
fi
since="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
# deploy/compose writes the merged settings before Compose sends the signal.
dc kill -s HUP proxy >/dev/null
want="$(sed -n 's/^PROXY_UPSTREAM=//p' "$state/config/proxy.env" | tail -n 1 | tr -d '"')"
want="${want:-http://127.0.0.1:8000}"
deadline=$((SECONDS + timeout))
until docker logs --since "$since" "$proxy" 2>&1 | grep 'configuration reloaded' | grep -qF "${want#http://}"; do
    if docker logs --since "$since" "$proxy" 2>&1 | grep -q 'reload rejected'; then
        docker logs --since "$since" "$proxy" 2>&1 | grep 'reload rejected' | tail -n 1 >&2
        die "the proxy rejected the new settings (above) and keeps serving from $old; $new is left running"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "no 'configuration reloaded' to $want in the proxy's log within ${timeout}s"
    sleep 0.2
done
echo "swap.sh: the proxy forwards to $want"

echo "swap.sh: stopping $old (it finishes its in-flight requests first)"
dc stop "$old" >/dev/null
echo "swap.sh: done: $new serves; 'deploy/swap.sh $([ "$new" = green ] && echo blue || echo green)' swaps back"
