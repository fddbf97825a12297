#!/usr/bin/env bash
# One command for the TLS terminator benchmark: installs the peers and load generators
# from Debian packages, builds the proxy (--release), then runs bench.py, which starts everything on
# 127.0.0.1 only and writes deploy/bench/RESULTS.md.
#
#   deploy/bench/run.sh             full run: 5 rounds, 10 s per figure (about 20 minutes)
#   deploy/bench/run.sh --quick     CI mode: 1 round, 2 s per figure; exits non-zero on any error
#   deploy/bench/run.sh --profile   perf profile of the proxy under each workload (results/raw/)
#
# Own options: --skip-install (use the tools already on PATH), --no-build (use an already built
# proxy). BENCH_PROXY_BIN=path benchmarks that proxy binary (e.g. deploy/bin/proxy, already built by
# deploy/build.sh) instead of building one; tlsload and the stack_floor example (the `stack-floor`
# peer: tokio-rustls + hyper with none of the proxy's work) are still built. Everything else goes
# to bench.py (see `deploy/bench/bench.py --help`: --rounds, --duration, --peers, --figures,
# --idle-conns, --nice, --out, --proxy-bin, --baseline-bin).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR_BENCH:-$repo/target-bench}"

install=1 build=1 profile=0 args=()
for a in "$@"; do
    case "$a" in
        --skip-install) install=0 ;;
        --no-build) build=0 ;;
        --profile) profile=1 ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) args+=("$a") ;;
    esac
done

# command -> Debian package that provides it (perf: the system-call counts of figure "sys", and
# --profile).
declare -A pkg=(
    [nginx]=nginx-light [haproxy]=haproxy [caddy]=caddy [wrk]=wrk [h2load]=nghttp2-client
    [curl]=curl [openssl]=openssl [taskset]=util-linux [python3]=python3 [perf]=linux-perf
)
missing=()
for cmd in "${!pkg[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg[$cmd]}")
done
if ((${#missing[@]})); then
    if [[ $install == 0 ]]; then
        echo "run.sh: missing ${missing[*]} and --skip-install given" >&2
        exit 64
    fi
    echo "run.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # The Debian nginx/haproxy packages would start system services on :80 where an init system
    # runs; the bench needs none of them (it starts its own on loopback ports).
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

proxy_bin="${BENCH_PROXY_BIN:-$target/release/proxy}"
if [[ $build == 1 ]]; then
    if [[ -z ${BENCH_PROXY_BIN:-} ]]; then
        echo "run.sh: building the proxy (release) in $target" >&2
        (cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release --locked -p proxy -j2)
    fi
    echo "run.sh: building tlsload (release) in $target" >&2
    (cd "$here/tlsload" && CARGO_TARGET_DIR="$target" cargo build --release --locked -j2)
    # tokio-rustls + hyper forwarding and nothing else, run beside the proxy (`stack-floor`).
    echo "run.sh: building the stack_floor example (release) in $target" >&2
    (cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release --locked -p proxy \
        --example stack_floor -j2)
fi

workdir="$(mktemp -d /tmp/proxy-bench.XXXXXX)"
bench_pid=""
cleanup() {
    # bench.py stops what it started; this catches what a killed bench.py left behind.
    if [[ -n $bench_pid ]] && kill -0 "$bench_pid" 2>/dev/null; then
        kill -TERM "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
    if [[ -f $workdir/pids ]]; then
        while read -r pid; do
            kill -KILL -- "-$pid" 2>/dev/null || true
        done <"$workdir/pids"
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

script="$here/bench.py"
[[ $profile == 1 ]] && script="$here/profile.py"
# The full run also times the CORS decision itself (cargo bench); --quick skips the compile.
if [[ $profile == 0 && " ${args[*]-} " != *" --quick "* ]]; then
    args+=(--cors-micro)
fi
floor_bin="$target/release/examples/stack_floor"
if [[ $profile == 0 && -x $floor_bin ]]; then
    args+=(--floor-bin "$floor_bin")
elif [[ $profile == 0 ]]; then
    echo "run.sh: no $floor_bin (built unless --no-build): the stack-floor peer is left out" >&2
fi
export CARGO_TARGET_DIR="$target" # for the micro-benchmark's cargo bench
# setsid: its own session, hence its own scheduler autogroup, whose priority bench.py raises
# (--nice) without touching the caller's shell.
setsid -w python3 "$script" --proxy-bin "$proxy_bin" \
    --tlsload-bin "$target/release/tlsload" --workdir "$workdir" "${args[@]}" &
bench_pid=$!
set +e
wait "$bench_pid"
rc=$?
set -e
bench_pid=""
exit "$rc"
