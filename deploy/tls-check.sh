#!/usr/bin/env bash
# deploy/tls-check.sh: the proxy's TLS listener against Mozilla's "intermediate" server profile
# (https://ssl-config.mozilla.org/, as sslyze 6 ships it: TLS 1.2/1.3 only, its cipher suites and
# key-exchange groups, ECDSA P-256/P-384 or RSA >= 2048 certificates, a lifespan <= 366 days, no
# compression, secure renegotiation, extended master secret, TLS_FALLBACK_SCSV, no Heartbleed/CCS
# injection/ROBOT). It starts the demo app and the proxy (built binaries: DEV_BIN_DIR or --bin-dir,
# default target/debug) on loopback with a certificate from a throw-away local CA, runs
#   python -m sslyze --mozilla_config=intermediate --certinfo_ca_file=<that CA> localhost:PORT{127.0.0.1}
# and fails on any finding it reports. Takes about 5 s.
#
# sslyze is handed that CA (--certinfo_ca_file), so the certificate-trust checks pass too: every
# finding fails the check. (sslyze's Mozilla check does not look at host names, OCSP stapling or
# the 90-day *recommended* lifespan; the development certificate lives 30 days.)
#
# sslyze comes from SSLYZE_PYTHON, else /opt/sslyze-venv/bin/python (what .ci/run installs), else
# python3. Without it: with CI=true this fails, otherwise it says so and skips (exit 0).
#   python3 -m venv /opt/sslyze-venv && /opt/sslyze-venv/bin/pip install 'sslyze==6.3.1'
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=${DEV_BIN_DIR:-target/debug}
while (($#)); do
    case $1 in
        --bin-dir) bin_dir=${2:?--bin-dir needs a folder}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "tls-check.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
    esac
done

python=${SSLYZE_PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x /opt/sslyze-venv/bin/python ]]; then python=/opt/sslyze-venv/bin/python; else python=python3; fi
fi
if ! "$python" -c 'import sslyze' 2>/dev/null; then
    if [[ ${CI:-} == true ]]; then
        echo "tls-check.sh: sslyze is not installed for $python (CI=true: failing)" >&2
        exit 1
    fi
    echo "tls-check.sh: SKIPPED: sslyze is not installed for $python (install it as this script's header says, or set SSLYZE_PYTHON)"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tls-check.XXXXXX")
# shellcheck source=deploy/stack.sh
source deploy/stack.sh
# Keeps the script's own exit status (a killed child's `wait` would otherwise become it).
cleanup() {
    local rc=$?
    stack_stop
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT

stack_start "$bin_dir" "$tmp"
echo "tls-check.sh: proxy on 127.0.0.1:$STACK_PORT; sslyze $("$python" -c 'from sslyze.__version__ import __version__; print(__version__)' 2>/dev/null || echo '?')"

rc=0
# `localhost:PORT{127.0.0.1}`: SNI localhost (a name the certificate holds), connecting to loopback.
"$python" -m sslyze --mozilla_config=intermediate --certinfo_ca_file="$STACK_CA" \
    "localhost:$STACK_PORT{127.0.0.1}" >"$tmp/sslyze.out" 2>&1 || rc=$?
cat "$tmp/sslyze.out"

# The findings are sslyze's "* name: description" lines under "FAILED - Not compliant". A scan that
# did not complete prints neither verdict line, and fails here too.
if grep -q "localhost:$STACK_PORT.*: OK - Compliant" "$tmp/sslyze.out"; then
    ((rc == 0)) || { echo "tls-check.sh: FAILED: sslyze said compliant but exited $rc" >&2; exit 1; }
    echo "tls-check.sh: compliant with Mozilla's intermediate profile"
elif grep -q "localhost:$STACK_PORT.*: FAILED - Not compliant" "$tmp/sslyze.out"; then
    findings=$(sed -n 's/^ *\* \([a-z0-9_]*\): .*/\1/p' "$tmp/sslyze.out")
    echo "tls-check.sh: FAILED: findings against Mozilla's intermediate profile: $(tr "\n" " " <<<"$findings")" >&2
    exit 1
else
    echo "tls-check.sh: FAILED: the scan did not complete (sslyze exit $rc): see its output above" >&2
    exit 1
fi
