#!/usr/bin/env bash
# The local stack in one command: builds both binaries, makes a development certificate if there is
# none, starts the app on loopback and the proxy on https://localhost:8443, and stops both on Ctrl-C.
#
# Settings come from the usual places: flags are not passed here, so the proxy reads PROXY_* / TLS_* /
# CORS variables from the environment and from `.env` in the repository root (see docs/configuration.md).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p app -p proxy
bin=target/release
[[ -n ${CARGO_TARGET_DIR:-} ]] && bin=$CARGO_TARGET_DIR/release

cert=${TLS_CERT_FILE:-cert/cert.pem}
key=${TLS_KEY_FILE:-cert/key.pem}
if [[ ! -f $cert || ! -f $key ]]; then
  echo "dev.sh: no certificate at $cert / $key: generating a development one"
  "$bin/proxy" cert --out-dir "$(dirname "$cert")"
fi

pids=()
stop() {
  trap - INT TERM EXIT
  # SIGTERM lets both drain in-flight requests; wait collects them.
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

"$bin/app" &
pids+=($!)
"$bin/proxy" &
pids+=($!)

listen=${PROXY_LISTEN:-0.0.0.0:8443}
port=${listen##*:}
# Wait for the proxy to complete a TLS handshake (its own health check), not for a fixed time.
deadline=$((SECONDS + 30))
until "$bin/proxy" healthcheck --addr "127.0.0.1:$port" >/dev/null 2>&1; do
  if ((SECONDS > deadline)); then
    echo "dev.sh: the proxy did not come up within 30 s; see its log above" >&2
    exit 1
  fi
  if ! kill -0 "${pids[@]}" 2>/dev/null; then
    echo "dev.sh: the app or the proxy exited; see its log above" >&2
    exit 1
  fi
  sleep 0.2
done

cat <<MSG

  The stack is up:  https://localhost:$port/
  Demo login:       behai_nguyen@hotmail.com / password   (or pranav.furedi.10198@gmail.com / password)
  Certificate:      $cert (trust it as cert/README.md explains)
  Ctrl-C stops both.

MSG
# Exit as soon as either process exits (or on Ctrl-C, through the trap).
wait -n "${pids[@]}"
