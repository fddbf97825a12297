#!/usr/bin/env bash
# deploy/e2e.sh: the end-to-end test of the compose deploy, with real containers.
#
# From a clean checkout: builds the static binaries and the images, starts the stack through
# deploy/compose (Compose v2 or v1), and checks over HTTPS on the published port everything a user
# relies on: the login flow in JSON and HTML, CORS preflights, the app hidden from the host, 502 while
# the app is down and recovery, a backend swap in each shape with the proxy left running and a client
# that keeps sending (deploy/swap.sh green and blue; compose.backend.yaml), the tree left clean,
# certificate rotation, a draining stop, a `down` that leaves nothing behind, and the demo flow again
# with the app on a UNIX socket (compose.unix.yaml).
# Each check prints one `ok`/`FAIL` line; the last line is "N passed, N failed".
#
# Without a Docker engine it skips (exit 0), except with CI=true, where that is a failure.
# Settings (env): E2E_PROXY_PORT (host port to publish; default 8443, or the next free of 18443,
# 28443, 38443), E2E_HTTP_PORT (the redirect port; 8080, 18080, ...), E2E_SKIP_BUILD=1 (reuse deploy/bin/ instead of running build.sh), E2E_KEEP=1 (leave
# the stack and the temporary folder for inspection).
# Only loopback is contacted from the host; the stack's files (certificates, proxy.env, the state
# folder of deploy/compose and deploy/swap.sh) are temporary, so the repo's cert/, config/ and
# .state/ are never touched.
set -uo pipefail

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="$deploy_dir/bin"
repo_dir="$(dirname "$deploy_dir")"

# Named timeouts, in seconds: each wait below polls until its deadline, then fails naming the phase.
HEALTH_TIMEOUT=60    # a service reports healthy after `up`/`start`
RECOVER_TIMEOUT=30   # the proxy answers 200 again once the app is back
RELOAD_TIMEOUT=20    # a SIGHUP or a file change has taken effect
REQUEST_TIMEOUT=10   # one curl request
LOOP_LIMIT=90        # the blue/green client loop stops by itself after this long

skip_or_fail() {
    if [ "${CI:-}" = "true" ]; then
        echo "e2e.sh: FAIL: $1 (CI=true: the deploy test must run here)"
        exit 1
    fi
    echo "e2e.sh: SKIP: $1 (the deploy test needs a Docker engine and Compose; CI=true makes this a failure)"
    exit 0
}
command -v docker >/dev/null 2>&1 || skip_or_fail "no docker command"
docker info >/dev/null 2>&1 || skip_or_fail "the Docker engine does not answer (docker info failed)"
# deploy/compose picks the same way; this only decides whether to skip.
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    skip_or_fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 || { echo "e2e.sh: FAIL: $tool is required"; exit 1; }
done

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   - $*"; }
fail() { failed=$((failed + 1)); echo "FAIL - $*"; }
check() { # check DESCRIPTION COMMAND...: ok when the command succeeds
    local what="$1"
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
fatal() { # a step the rest depends on failed: stop here (the EXIT trap cleans up and reports)
    fail "$*"
    exit 1
}
step() { echo; echo "== $*"; }

project="e2e$$"
unix_project="e2e$$unix"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/deploy-e2e.XXXXXX")"
loop_pid=""
compose_files=(-f "$deploy_dir/compose.yaml" -f "$deploy_dir/compose.redirect.yaml" -f "$deploy_dir/compose.green.yaml")
dc() { "$deploy_dir/compose" -p "$project" "${compose_files[@]}" "$@"; }
unix_files=(-f "$deploy_dir/compose.yaml" -f "$deploy_dir/compose.unix.yaml")
dcu() { "$deploy_dir/compose" -p "$unix_project" "${unix_files[@]}" "$@"; }

cleanup() {
    local rc=$?
    [ -n "$loop_pid" ] && kill "$loop_pid" 2>/dev/null
    if [ "${E2E_KEEP:-}" = "1" ]; then
        echo "e2e.sh: E2E_KEEP=1: left project $project and $tmp"
    else
        # The main project with every file it may have used, so nothing it started is left.
        BACKEND_IMAGE="${BACKEND_IMAGE:-unused}" "$deploy_dir/compose" -p "$project" -f "$deploy_dir/compose.yaml" \
            -f "$deploy_dir/compose.redirect.yaml" -f "$deploy_dir/compose.green.yaml" -f "$deploy_dir/compose.backend.yaml" \
            down -v --remove-orphans -t 5 >/dev/null 2>&1
        dcu down -v --remove-orphans -t 5 >/dev/null 2>&1
        docker image rm tls-sidecar/app:other >/dev/null 2>&1
        rm -rf "$tmp" 2>/dev/null || true
    fi
    echo
    echo "e2e: $passed passed, $failed failed"
    if [ "$failed" -gt 0 ] && [ "$rc" -eq 0 ]; then rc=1; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # free_port CANDIDATE...: the first one nothing listens on
    local candidate
    for candidate in "$@"; do
        if ! port_in_use "$candidate"; then echo "$candidate"; return 0; fi
    done
    return 1
}
port="${E2E_PROXY_PORT:-$(free_port 8443 18443 28443 38443)}" \
    || fatal "no free port among 8443 18443 28443 38443: set E2E_PROXY_PORT"
http_port="${E2E_HTTP_PORT:-$(free_port 8080 18080 28080 38080)}" \
    || fatal "no free port among 8080 18080 28080 38080: set E2E_HTTP_PORT"
base="https://localhost:$port"
cacert="$tmp/cert/cert.pem"

# curl to the published port, trusting the test certificate; `--resolve` pins localhost to IPv4
# loopback so the certificate's name matches and nothing leaves the machine.
https() { curl -sS --max-time "$REQUEST_TIMEOUT" --cacert "$cacert" --resolve "localhost:$port:127.0.0.1" "$@"; }
# req ARGS...: one request; sets $status, the body in $tmp/body, the headers in $tmp/headers.
req() {
    status="$(https -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' "$@" 2>"$tmp/curl.err")" || status="curl-error($(head -c 200 "$tmp/curl.err"))"
}
header() { grep -i "^$1:" "$tmp/headers" | head -n 1 | cut -d' ' -f2- | tr -d '\r'; }
json() { jq -r "$1" "$tmp/body" 2>/dev/null; }
container() { dc ps -q "$1"; }
state() { docker inspect -f "$1" "$(container "$2")" 2>/dev/null; }
wait_healthy() { # wait_healthy SERVICE: until the container's health check passes
    local deadline=$((SECONDS + HEALTH_TIMEOUT)) health
    while [ "$SECONDS" -lt "$deadline" ]; do
        health="$(state '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1")"
        case "$health" in
            running/healthy) return 0 ;;
            exited/* | dead/*) echo "   $1 stopped: $health; its last log lines:"; dc logs --tail 20 "$1" | sed 's/^/   | /'; return 1 ;;
        esac
        sleep 0.5
    done
    echo "   $1 not healthy after ${HEALTH_TIMEOUT}s (health phase): $health; last log lines:"
    dc logs --tail 20 "$1" | sed 's/^/   | /'
    return 1
}
wait_health() { # wait_health SERVICE STATUS: until the container's health is STATUS (e.g. unhealthy)
    local deadline=$((SECONDS + HEALTH_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        [ "$(state '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1")" = "$2" ] && return 0
        sleep 1
    done
    return 1
}
# The admin listener is on the pod's loopback, unpublished, and the image has no shell or curl: the
# proxy binary itself reads it (`proxy admin-get`, `proxy healthcheck --ready`) via `exec`.
admin_get() { dc exec -T proxy /proxy admin-get "$1"; }
wait_status() { # wait_status CODE TIMEOUT URL [CURL ARGS...]: until a request answers CODE
    local want="$1" deadline=$((SECONDS + $2))
    shift 2
    while [ "$SECONDS" -lt "$deadline" ]; do
        req "$@"
        [ "$status" = "$want" ] && return 0
        sleep 0.5
    done
    echo "   last answer: $status"
    return 1
}
login_token() { # login_token: a fresh bearer token for the first demo user, or empty
    req -H 'x-expected-format: application/json' --data-urlencode "username=$user" \
        --data-urlencode 'password=password' "$base/auth/token"
    [ "$status" = 200 ] && json .access_token
}
me_status() { # me_status TOKEN: the status of /admin/me with that bearer token
    req -H 'x-expected-format: application/json' -H "Authorization: Bearer $1" "$base/admin/me"
    echo "$status"
}
set_upstream() { # set_upstream URL: rewrites PROXY_UPSTREAM in the mounted proxy.env (atomically)
    { grep -v '^PROXY_UPSTREAM=' "$tmp/config/proxy.env"; echo "PROXY_UPSTREAM=$1"; } >"$tmp/config/proxy.env.new"
    chmod 0644 "$tmp/config/proxy.env.new"
    mv "$tmp/config/proxy.env.new" "$tmp/config/proxy.env"
}
user='behai_nguyen@hotmail.com'

echo "e2e.sh: project $project, ${compose_cmd[*]}, https on 127.0.0.1:$port, redirect on :$http_port, files in $tmp"

step "build"
if [ "${E2E_SKIP_BUILD:-}" = "1" ]; then
    echo "   E2E_SKIP_BUILD=1: using the binaries already in $bin_dir"
else
    "$deploy_dir/build.sh" >"$tmp/build.log" 2>&1 || { tail -n 30 "$tmp/build.log"; fatal "deploy/build.sh failed"; }
fi
for name in app proxy pause; do
    [ -x "$bin_dir/$name" ] || fatal "$bin_dir/$name is missing: run deploy/build.sh"
done
check "binaries are statically linked (file: static; ldd: not dynamic)" \
    bash -c "for b in '$bin_dir'/{app,proxy,pause}; do file \"\$b\" | grep -Eq 'statically linked|static-pie linked' || exit 1; ! ldd \"\$b\" 2>/dev/null | grep -q '=>' || exit 1; done"

# The test's own certificate and settings: copies, so rotation and reloads never touch the repo.
mkdir -p "$tmp/cert" "$tmp/config"
"$bin_dir/proxy" cert --out-dir "$tmp/cert" >"$tmp/cert.log" 2>&1 || { cat "$tmp/cert.log"; fatal "proxy cert failed"; }
cp "$deploy_dir/config/proxy.env" "$tmp/config/proxy.env"
chmod 0755 "$tmp/cert" "$tmp/config"
chmod 0644 "$tmp/config/proxy.env" "$tmp/cert/cert.pem"
# key.pem stays 0600 and yours, as `proxy cert` wrote it: deploy/compose gives the proxy a copy it
# can read (the user's uid is never asked for). The published address is left to its default.
unset PROXY_UID PROXY_GID PROXY_PUBLISH_ADDR
export PROXY_PORT="$port" PROXY_HTTP_PORT="$http_port" CERT_DIR="$tmp/cert" PROXY_CONFIG_DIR="$tmp/config" \
    DEPLOY_STATE_DIR="$tmp/state"

zero_uid="$(PROXY_UID=0 "$deploy_dir/compose" -p "$project" config 2>&1 >/dev/null)" && zero_uid="accepted"
check "deploy/compose refuses PROXY_UID=0: $zero_uid" grep -q 'PROXY_UID=0 would run the proxy as root' <<<"$zero_uid"

dc build >"$tmp/compose-build.log" 2>&1 || { tail -n 30 "$tmp/compose-build.log"; fatal "compose build failed"; }
ok "images built from scratch with no registry: $(for i in pause app proxy; do
    printf '%s %s  ' "$i" "$(docker image inspect -f '{{.Size}}' "tls-sidecar/$i:local" | awk '{printf "%.1f MB", $1/1e6}')"
done)"
check "images run as non-root numeric users (app, proxy: 10001; pause: 65535)" bash -c \
    "[ \"\$(docker image inspect -f '{{.Config.User}}' tls-sidecar/app:local)\" = 10001:10001 ] &&
     [ \"\$(docker image inspect -f '{{.Config.User}}' tls-sidecar/proxy:local)\" = 10001:10001 ] &&
     [ \"\$(docker image inspect -f '{{.Config.User}}' tls-sidecar/pause:local)\" = 65535:65535 ]"

step "up"
dc up -d proxy >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log"; fatal "compose up failed"; }
check "the key's copy in the state folder is 0640 and not world-readable: $(stat -c '%a %U:%G' "$tmp/state/cert/key.pem")" \
    test "$(stat -c %a "$tmp/state/cert/key.pem")" = 640
wait_healthy app || fatal "app did not become healthy"
ok "app healthy (its own health check)"
wait_healthy proxy || fatal "proxy did not become healthy"
ok "proxy healthy (proxy healthcheck --ready: the admin listener's /readyz, no shell or curl)"
proxy_id="$(container proxy)"
proxy_started="$(state '{{.State.StartedAt}}' proxy)"
check "the proxy runs as 10001, not root, and reads the key through its group: $(state '{{.Config.User}} +{{.HostConfig.GroupAdd}}' proxy)" \
    test "$(state '{{.Config.User}}' proxy)" = 10001:10001

step "login flow over https://localhost:$port"
req "$base/auth/login"
check "GET /auth/login: 200 HTML login form ($status)" \
    bash -c "[ '$status' = 200 ] && grep -qi 'name=\"username\"' '$tmp/body' && grep -qi 'action=\"/auth/token\"' '$tmp/body'"
req "$base/"
check "GET /: the login page too ($status)" bash -c "[ '$status' = 200 ] && grep -qi 'name=\"password\"' '$tmp/body'"

req -H 'x-expected-format: application/json' --data-urlencode "username=$user" \
    --data-urlencode 'password=password' "$base/auth/token"
token="$(json .access_token)"
check "POST /auth/token JSON: 200 {access_token, token_type: bearer} ($status)" \
    bash -c "[ '$status' = 200 ] && [ -n '$token' ] && [ '$token' != null ] && [ \"\$(jq -r .token_type '$tmp/body')\" = bearer ]"
check "the token is opaque (not the email)" bash -c "[ '$token' != '$user' ] && ! grep -qi behai <<<'$token'"
cookie_flags="$(header set-cookie)"
check "the session cookie is HttpOnly and Secure (X-Forwarded-Proto: https from the proxy): $cookie_flags" \
    bash -c "grep -qi httponly <<<'$cookie_flags' && grep -qi secure <<<'$cookie_flags'"

req -c "$tmp/jar" --data-urlencode "username=$user" --data-urlencode 'password=password' "$base/auth/token"
check "POST /auth/token HTML: 303 to /auth/home with a cookie ($status, $(header location))" \
    bash -c "[ '$status' = 303 ] && grep -q '/auth/home' <<<'$(header location)' && grep -q . '$tmp/jar'"
req --data-urlencode "username=$user" --data-urlencode 'password=wrong' "$base/auth/token"
check "POST /auth/token HTML, wrong password: 303 to /auth/login?state=3 ($status, $(header location))" \
    bash -c "[ '$status' = 303 ] && grep -q 'state=3' <<<'$(header location)'"

req -H 'x-expected-format: application/json' -H "Authorization: Bearer $token" "$base/admin/me"
check "GET /admin/me with the bearer token: 200 $(jq -c . "$tmp/body" 2>/dev/null | head -c 120)" \
    bash -c "[ '$status' = 200 ] && [ \"\$(jq -r .username '$tmp/body')\" = '$user' ] && ! grep -qi argon2 '$tmp/body'"
req -H 'x-expected-format: application/json' -b "$tmp/jar" "$base/admin/me"
check "GET /admin/me with the cookie: 200 ($status)" \
    bash -c "[ '$status' = 200 ] && [ \"\$(jq -r .username '$tmp/body')\" = '$user' ]"
req -H 'x-expected-format: application/json' "$base/admin/me"
check "GET /admin/me without credentials: 401 ($status)" test "$status" = 401

# The cookie as sent before logout, to prove that logout revoked the session and not just the cookie.
cookie_header="$(grep -v '^# ' "$tmp/jar" | awk -F'\t' 'NF >= 7 { print $6 "=" $7 }' | head -n 1)"
req -b "$tmp/jar" -c "$tmp/jar" -X POST "$base/auth/logout"
check "POST /auth/logout with the cookie: 303 to /auth/login?state=0 ($status, $(header location))" \
    bash -c "[ '$status' = 303 ] && grep -q 'state=0' <<<'$(header location)'"
req -H 'x-expected-format: application/json' -H "Cookie: $cookie_header" "$base/admin/me"
check "the logged-out cookie session is revoked: /admin/me 401 ($status)" test "$status" = 401
req -H "Authorization: Bearer $token" -X POST "$base/api/logout"
check "POST /api/logout with the bearer token: 200 ($status)" test "$status" = 200
check "the logged-out token is revoked: /admin/me 401" test "$(me_status "$token")" = 401

step "CORS (policy from proxy.env: ALLOW_ORIGINS=http://localhost, credentials)"
req -X OPTIONS -H 'Origin: http://localhost' -H 'Access-Control-Request-Method: POST' \
    -H 'Access-Control-Request-Headers: x-expected-format, authorization' "$base/auth/token"
check "allowed preflight: 2xx, Allow-Origin http://localhost, Allow-Credentials true ($status)" \
    bash -c "[[ '$status' == 2?? ]] && [ '$(header access-control-allow-origin)' = http://localhost ] && [ '$(header access-control-allow-credentials)' = true ]"
check "allowed preflight allows the requested Authorization header: $(header access-control-allow-headers)" \
    bash -c "grep -qi authorization <<<'$(header access-control-allow-headers)'"
req -X OPTIONS -H 'Origin: https://evil.example' -H 'Access-Control-Request-Method: POST' "$base/auth/token"
check "refused preflight (https://evil.example): 403 with no Allow-Origin ($status)" \
    bash -c "[ '$status' = 403 ] && [ -z '$(header access-control-allow-origin)' ]"
req -H 'Origin: http://localhost' -H 'x-expected-format: application/json' "$base/admin/me"
check "actual request from the allowed origin: Allow-Origin echoed on the app's 401 ($status)" \
    bash -c "[ '$(header access-control-allow-origin)' = http://localhost ]"

step "the app is reachable only through the proxy"
published="$(docker ps --filter "label=com.docker.compose.project=$project" --format '{{.Names}} {{.Ports}}' | grep -- '->' || true)"
check "the only published ports are the proxy's 8443 and its redirect 8080, both on the pod: $published" \
    bash -c "[ \"\$(grep -o -- '->[0-9]*/tcp' <<<'$published' | sort -u | tr '\n' ' ')\" = '->8080/tcp ->8443/tcp ' ] && [ \"\$(grep -c . <<<'$published')\" = 1 ]"
check "by default they are published on 127.0.0.1 only" \
    bash -c "[ -n '$published' ] && ! grep -oE '[0-9a-f.:]*:[0-9]+->' <<<'$published' | grep -v '^127\.0\.0\.1:'"
req_plain="$(curl -sS --max-time "$REQUEST_TIMEOUT" -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$http_port/auth/login?state=2")"
check "the plain-HTTP port redirects to the published https port: $req_plain" bash -c "grep -Eq '^308 https://127.0.0.1:$port/auth/login\\?state=2$' <<<'$req_plain'"
app_pid="$(state '{{.State.Pid}}' app)"
if [ -r "/proc/$app_pid/net/tcp" ]; then
    # Listening sockets of the shared namespace: 127.0.0.1:8000 is 0100007F:1F40, state 0A is LISTEN.
    listen8000="$(awk '$4 == "0A" && $2 ~ /:1F40$/ { print $2 }' "/proc/$app_pid/net/tcp" "/proc/$app_pid/net/tcp6" | sort -u | tr '\n' ' ')"
    check "the app listens on 127.0.0.1:8000 only, inside the pod's namespace: $listen8000" test "$listen8000" = "0100007F:1F40 "
else
    echo "   (the engine's processes are not visible here: the listening-address check is skipped)"
fi

step "the admin listener: metrics and readiness inside the pod, unpublished"
admin_get /metrics >"$tmp/metrics" 2>&1
check "proxy admin-get /metrics: requests counted ($(grep -c '^proxy_requests_total' "$tmp/metrics") label sets)" \
    grep -q '^proxy_requests_total{protocol="h[12]",method="POST",status="2xx"} [1-9]' "$tmp/metrics"
check "the metrics hold the certificate's expiry and the build" \
    bash -c "grep -q '^proxy_tls_certificate_expiry_seconds [1-9]' '$tmp/metrics' && grep -q '^proxy_build_info{version=' '$tmp/metrics'"
check "proxy healthcheck --ready inside the container: ready" dc exec -T proxy /proxy healthcheck --ready
check "the admin port is not published to the host" bash -c "! curl -s -m 2 http://127.0.0.1:9901/healthz >/dev/null"

step "the app goes down and comes back"
dc stop app >/dev/null 2>&1
req -H 'Accept: application/json' "$base/auth/login"
check "app stopped: the proxy answers 502 ($status: $(head -c 120 "$tmp/body"))" test "$status" = 502
check "app stopped: the proxy's health check turns unhealthy (readiness)" wait_health proxy unhealthy
admin_get /readyz >"$tmp/readyz" 2>&1
check "/readyz names the reason: $(head -c 160 "$tmp/readyz")" grep -q "does not accept connections" "$tmp/readyz"
admin_get /metrics >"$tmp/metrics" 2>&1
check "the 502 and the refused upstream connection are counted" \
    bash -c "grep -q '^proxy_upstream_errors_total{status=\"502\"} [1-9]' '$tmp/metrics' && grep -q '^proxy_upstream_connect_failures_total{cause=\"refused\"} [1-9]' '$tmp/metrics'"
dc start app >/dev/null 2>&1
wait_healthy app || fail "app did not become healthy after start"
check "app started again: the proxy is healthy again" wait_healthy proxy
check "app started again: the proxy recovers (200 within ${RECOVER_TIMEOUT}s)" wait_status 200 "$RECOVER_TIMEOUT" "$base/auth/login"
dc restart app >/dev/null 2>&1
wait_healthy app || fail "app did not become healthy after restart"
check "docker compose restart app: the proxy recovers (200 within ${RECOVER_TIMEOUT}s)" wait_status 200 "$RECOVER_TIMEOUT" "$base/auth/login"
check "the proxy was not restarted by any of that" test "$(container proxy)/$(state '{{.State.StartedAt}}' proxy)" = "$proxy_id/$proxy_started"

step "blue/green: deploy/swap.sh green, then blue, under load, the tree left clean"
blue_token="$(login_token)"
check "a session on the current backend (blue)" test "$(me_status "$blue_token")" = 200
req -c "$tmp/blue-jar" --data-urlencode "username=$user" --data-urlencode 'password=password' "$base/auth/token"
blue_cookie="$(grep -v '^# ' "$tmp/blue-jar" | awk -F'\t' 'NF >= 7 && $6 == "session" { print $6 "=" $7 }' | head -n 1)"
check "a cookie session on blue, named session: $blue_cookie" bash -c "[ -n '$blue_cookie' ]"
dc up -d green >/dev/null 2>&1
wait_healthy green || fatal "green did not become healthy"
ok "green is up on the compose network (not published)"

# An invalid upstream must be refused by the reload, and the old one must keep serving.
set_upstream "ftp://green:8000"
dc kill -s HUP proxy >/dev/null 2>&1
rejected=no
deadline=$((SECONDS + RELOAD_TIMEOUT))
while [ "$SECONDS" -lt "$deadline" ]; do
    if dc logs proxy 2>&1 | grep -q 'reload rejected'; then rejected=yes; break; fi
    sleep 0.5
done
check "an invalid PROXY_UPSTREAM (ftp://) on SIGHUP is rejected (logged: reload rejected)" test "$rejected" = yes
check "... the blue session still works" test "$(me_status "$blue_token")" = 200
check "... and the proxy is still running" test "$(state '{{.State.Running}}' proxy)" = true
set_upstream "http://127.0.0.1:8000"

# A client that keeps sending through a swap; every answer is logged.
loop_start() { # loop_start NAME: requests in a loop into $tmp/NAME.log until $tmp/NAME.stop (NAME: loop-*)
    : >"$tmp/$1.log"
    (
        end=$((SECONDS + LOOP_LIMIT))
        while [ ! -e "$tmp/$1.stop" ] && [ "$SECONDS" -lt "$end" ]; do
            https -o /dev/null -w '%{http_code}\n' "$base/auth/login" >>"$tmp/$1.log" 2>>"$tmp/$1.err" || echo "curl-error" >>"$tmp/$1.log"
        done
    ) &
    loop_pid=$!
    wait_lines "$1" 10
}
wait_lines() { local deadline=$((SECONDS + RELOAD_TIMEOUT)); while [ "$(wc -l <"$tmp/$1.log")" -lt "$2" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done; }
loop_stop() { # loop_stop NAME WHAT: a few more requests, then stop; checks that every one got 200
    wait_lines "$1" $(($(wc -l <"$tmp/$1.log") + 10))
    touch "$tmp/$1.stop"
    wait "$loop_pid"
    loop_pid=""
    local total bad
    total="$(wc -l <"$tmp/$1.log")"
    bad="$(grep -vc '^200$' "$tmp/$1.log")"
    check "client loop through $2: $total requests, $bad not 200 $(grep -v '^200$' "$tmp/$1.log" | sort | uniq -c | tr '\n' ' ')" \
        bash -c "[ '$bad' = 0 ] && [ '$total' -ge 20 ]"
}
# deploy/swap.sh reads the project and the files from Compose's own variables.
swap() {
    COMPOSE_PROJECT_NAME="$project" COMPOSE_FILE="$(printf '%s:' "${compose_files[@]}" | sed 's/-f://g; s/:$//')" \
        "$deploy_dir/swap.sh" "$1" >"$tmp/swap-$1.log" 2>&1
}

loop_start loop-green
swap_rc=0
swap green || swap_rc=$?
check "deploy/swap.sh green (exit $swap_rc): $(tail -n 1 "$tmp/swap-green.log")" test "$swap_rc" = 0
[ "$swap_rc" = 0 ] || sed 's/^/   | /' "$tmp/swap-green.log"
loop_stop loop-green "deploy/swap.sh green"
check "the proxy's log shows the switch to green" bash -c "'$deploy_dir/compose' -p '$project' logs proxy 2>&1 | grep 'configuration reloaded' | grep -q 'green:8000'"
check "the choice is kept in the state folder: $(cat "$tmp/state/upstream" 2>/dev/null)" grep -qx 'http://green:8000' "$tmp/state/upstream"
check "blue (app) was stopped by the swap: $(state '{{.State.Status}}' app)" test "$(state '{{.State.Status}}' app)" = exited
green_token="$(login_token)"
check "a login through the proxy works on green" test "$(me_status "$green_token")" = 200
# Sessions are in the SQLite file both share: with blue stopped, green answers for blue's logins.
check "blue's bearer token still works on green (shared SQLite store)" test "$(me_status "$blue_token")" = 200
req -H 'x-expected-format: application/json' -H "Cookie: $blue_cookie" "$base/admin/me"
check "blue's session cookie still works on green ($status)" \
    bash -c "[ '$status' = 200 ] && [ \"\$(jq -r .username '$tmp/body')\" = '$user' ]"
check "no tracked file changed (git status --porcelain deploy is empty), and .state/ is ignored" \
    bash -c "[ -z \"\$(git -C '$repo_dir' status --porcelain deploy)\" ] && git -C '$repo_dir' check-ignore -q deploy/.state/upstream"

loop_start loop-blue
swap_rc=0
swap blue || swap_rc=$?
check "deploy/swap.sh blue (exit $swap_rc): $(tail -n 1 "$tmp/swap-blue.log")" test "$swap_rc" = 0
[ "$swap_rc" = 0 ] || sed 's/^/   | /' "$tmp/swap-blue.log"
loop_stop loop-blue "deploy/swap.sh blue"
check "back on blue: the state folder holds no choice, green is stopped ($(state '{{.State.Status}}' green))" \
    bash -c "[ ! -e '$tmp/state/upstream' ] && [ '$(state '{{.State.Status}}' green)' = exited ]"
check "the proxy was left running through both swaps" test "$(container proxy)/$(state '{{.State.StartedAt}}' proxy)" = "$proxy_id/$proxy_started"

step "shared-namespace swap: compose.backend.yaml replaces the app image, proxy untouched, under load"
docker tag tls-sidecar/app:local tls-sidecar/app:other
compose_files+=(-f "$deploy_dir/compose.backend.yaml")
export BACKEND_IMAGE=tls-sidecar/app:other
loop_start loop-backend
dc up -d --no-deps app >"$tmp/backend-up.log" 2>&1 || { cat "$tmp/backend-up.log"; fail "compose up with compose.backend.yaml failed"; }
wait_healthy app || fail "the replacement backend did not become healthy"
loop_stop loop-backend "the app's replacement in place (the proxy waits out refused connects)"
check "the app container now runs BACKEND_IMAGE ($(state '{{.Config.Image}}' app))" test "$(state '{{.Config.Image}}' app)" = tls-sidecar/app:other
other_token="$(login_token)"
check "a session on the replacement backend" test "$(me_status "$other_token")" = 200
check "the proxy was left running" test "$(container proxy)/$(state '{{.State.StartedAt}}' proxy)" = "$proxy_id/$proxy_started"

step "certificate rotation: a new pair in CERT_DIR, copied by deploy/compose, no restart"
mkdir -p "$tmp/cert-next"
"$bin_dir/proxy" cert --out-dir "$tmp/cert-next" >"$tmp/cert-next.log" 2>&1 || fail "proxy cert (the new pair) failed"
cp "$tmp/cert/cert.pem" "$tmp/cert-old.pem"
mv "$tmp/cert-next/key.pem" "$tmp/cert/key.pem"
mv "$tmp/cert-next/cert.pem" "$tmp/cert/cert.pem"
# Any deploy/compose command copies the renewed pair into the mounted folder, each file by rename;
# the proxy's file watch may see the new certificate with the old key for a moment, which it must
# reject while the old pair keeps serving.
dc ps >/dev/null 2>&1
rotated=no
deadline=$((SECONDS + RELOAD_TIMEOUT))
while [ "$SECONDS" -lt "$deadline" ]; do
    if curl -sS -o /dev/null --max-time "$REQUEST_TIMEOUT" --cacert "$tmp/cert/cert.pem" \
        --resolve "localhost:$port:127.0.0.1" "$base/auth/login" 2>/dev/null; then
        rotated=yes
        break
    fi
    sleep 0.5
done
check "the new certificate is served within ${RELOAD_TIMEOUT}s (file watch on the copy, no SIGHUP)" test "$rotated" = yes
check "the old certificate is no longer served" bash -c \
    "! curl -sS -o /dev/null --max-time $REQUEST_TIMEOUT --cacert '$tmp/cert-old.pem' --resolve 'localhost:$port:127.0.0.1' '$base/auth/login' 2>/dev/null"
check "the proxy was not restarted" test "$(container proxy)/$(state '{{.State.StartedAt}}' proxy)" = "$proxy_id/$proxy_started"

step "docker compose stop drains"
# A login whose body trickles in at 1 KiB/s takes ~4 s: it is in flight when SIGTERM arrives.
pad="$(head -c 4000 /dev/zero | tr '\0' 'x')"
(
    curl -sS --max-time 30 --limit-rate 1k --cacert "$tmp/cert/cert.pem" --resolve "localhost:$port:127.0.0.1" \
        -o "$tmp/slow.body" -w '%{http_code}' -H 'x-expected-format: application/json' \
        --data-urlencode "username=$user" --data-urlencode 'password=password' --data-urlencode "pad=$pad" \
        "$base/auth/token" >"$tmp/slow.status" 2>"$tmp/slow.err"
) &
slow_pid=$!
# No event tells that the upload has started; one second is well inside its ~4 s.
sleep 1
stop_started=$SECONDS
dc stop >/dev/null 2>&1
stop_seconds=$((SECONDS - stop_started))
wait "$slow_pid"
check "the request in flight during SIGTERM completed: $(cat "$tmp/slow.status" 2>/dev/null) $(head -c 100 "$tmp/slow.err")" \
    bash -c "[ \"\$(cat '$tmp/slow.status')\" = 200 ]"
check "all stopped in ${stop_seconds}s, within the proxy's 15s stop grace period" test "$stop_seconds" -lt 15
exits="$(for s in proxy app green pod; do printf '%s=%s ' "$s" "$(state '{{.State.ExitCode}}' "$s")"; done)"
check "each exited 0 on SIGTERM (not SIGKILL's 137): $exits" test "$exits" = "proxy=0 app=0 green=0 pod=0 "

step "down, as documented: deploy/compose down --remove-orphans (compose.yaml alone)"
"$deploy_dir/compose" -p "$project" down -v --remove-orphans -t 5 >"$tmp/down.log" 2>&1 || cat "$tmp/down.log"
left="$(docker ps -a -q --filter "label=com.docker.compose.project=$project" | wc -l)"
nets="$(docker network ls -q --filter "label=com.docker.compose.project=$project" | wc -l)"
check "down leaves nothing, green included: $left containers, $nets networks" test "$left/$nets" = 0/0
check "the tree is clean after it all (git status --porcelain deploy is empty)" \
    bash -c "[ -z \"\$(git -C '$repo_dir' status --porcelain deploy)\" ]"

step "the app on a UNIX socket (compose.unix.yaml): the demo flow, no TCP port in the app"
dcu up -d proxy >"$tmp/unix-up.log" 2>&1 || { cat "$tmp/unix-up.log"; fatal "compose up with compose.unix.yaml failed"; }
ucontainer() { dcu ps -q "$1"; }
# The helpers above read the main project's containers; point them at this one.
container() { ucontainer "$1"; }
dc() { dcu "$@"; }
wait_healthy app || fatal "app (on the socket) did not become healthy"
wait_healthy proxy || fatal "proxy (forwarding to the socket) did not become healthy"
ok "app and proxy healthy, the proxy's readiness checked over the socket"
req -H 'x-expected-format: application/json' --data-urlencode "username=$user" \
    --data-urlencode 'password=password' "$base/auth/token"
unix_token="$(json .access_token)"
check "login over the socket: POST /auth/token 200 with a token ($status)" \
    bash -c "[ '$status' = 200 ] && [ -n '$unix_token' ] && [ '$unix_token' != null ]"
req -H 'x-expected-format: application/json' -H "Authorization: Bearer $unix_token" "$base/admin/me"
check "whoami over the socket: GET /admin/me 200 as $user ($status)" \
    bash -c "[ '$status' = 200 ] && [ \"\$(jq -r .username '$tmp/body')\" = '$user' ]"
req -H "Authorization: Bearer $unix_token" -X POST "$base/api/logout"
check "logout over the socket: POST /api/logout 200 ($status)" test "$status" = 200
check "the logged-out token is revoked: /admin/me 401" test "$(me_status "$unix_token")" = 401
app_pid="$(state '{{.State.Pid}}' app)"
if [ -r "/proc/$app_pid/net/tcp" ]; then
    # The pod's listening TCP sockets: the proxy's 8443 (20FB) and admin 9901 (26AD), nothing else
    # (Docker's embedded DNS server on 127.0.0.11, 0B00007F, aside).
    listening="$(awk '$4 == "0A" && $2 !~ /^0B00007F:/ { split($2, a, ":"); print a[2] }' "/proc/$app_pid/net/tcp" "/proc/$app_pid/net/tcp6" | sort -u | tr '\n' ' ')"
    check "no TCP listener but the proxy's (8443 and its admin 9901): $listening" test "$listening" = "20FB 26AD "
    check "the app listens on /run/app/app.sock" grep -q '/run/app/app.sock' "/proc/$app_pid/net/unix"
else
    echo "   (the engine's processes are not visible here: the listening-socket checks are skipped)"
fi
dcu down -v --remove-orphans -t 5 >/dev/null 2>&1
left="$(docker ps -a -q --filter "label=com.docker.compose.project=$unix_project" | wc -l)"
check "down leaves nothing of the socket variant: $left containers" test "$left" = 0
