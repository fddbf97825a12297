#!/usr/bin/env bash
# deploy/build.sh: builds the statically linked binaries that the container images wrap, into deploy/bin/.
#
#   deploy/build.sh            # app, proxy and pause, stripped, into deploy/bin/
#
# The Docker engine may have no registry to pull a base image from, so the images are `FROM scratch`
# and everything they run must be a static binary: glibc with `crt-static` (there is no musl target
# here). The explicit `--target` keeps RUSTFLAGS off build scripts and proc macros, which must stay
# dynamic. Since glibc 2.34 the `files` and `dns` NSS modules are built into libc, so a static binary
# still resolves compose service names (checked by deploy/e2e.sh's blue/green step).
# Settings (env): CARGO_TARGET_DIR (default <repo>/target-static), CARGO_BUILD_JOBS (default 2).
set -euo pipefail

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$deploy_dir")"
bin_dir="$deploy_dir/bin"
target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_dir/target-static}"

echo "build.sh: cargo build --release (static glibc, $target) -> $CARGO_TARGET_DIR"
# Symbols only make the image bigger: panics still print their message without them.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --manifest-path "$repo_dir/Cargo.toml" --locked --release \
    -j "${CARGO_BUILD_JOBS:-2}" --target "$target" -p app -p proxy

mkdir -p "$bin_dir" "$bin_dir/data"
# An empty folder: the Dockerfile copies it as the app image's /data (the session store's volume).
touch "$bin_dir/data/.keep"
for name in app proxy; do
    install -m 0755 "$CARGO_TARGET_DIR/$target/release/$name" "$bin_dir/$name"
done

# The namespace holder for the compose "pod" (see pause/pause.c for why it exists).
echo "build.sh: cc -static pause/pause.c"
"${CC:-cc}" -static -Os -s -o "$bin_dir/pause" "$deploy_dir/pause/pause.c"

# A dynamically linked binary would fail in a scratch image with a bare "no such file or directory":
# refuse it here, with the reason.
for name in app proxy pause; do
    if ! file "$bin_dir/$name" | grep -Eq 'statically linked|static-pie linked'; then
        echo "build.sh: $bin_dir/$name is not statically linked: $(file -b "$bin_dir/$name")" >&2
        exit 1
    fi
done
ls -l "$bin_dir"
if [ ! -e "$repo_dir/cert/cert.pem" ]; then
    echo "build.sh: cert/ has no certificate; for a development one: deploy/bin/proxy cert --if-missing --out-dir cert"
fi
