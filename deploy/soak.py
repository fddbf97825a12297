#!/usr/bin/env python3
"""deploy/soak.py: the traffic, sampling and verdict of deploy/soak.sh (which starts the app and the
proxy and passes their port, the proxy's PID and the CA here). Standard library only, plus h2load
for HTTP/2.

Every case runs in its own thread(s) for the whole duration, each request's status checked against
what that case expects (an unexpected status, a malformed answer or a connection error counts as an
error). Once a second the proxy's RSS and open descriptors are sampled from /proc. The exit status
is 1 on any error, on descriptors not back near their baseline after the load, or on memory growth
past the bound below; the summary says which.
"""

import argparse
import collections
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.client import HTTPSConnection

USER = "behai_nguyen@hotmail.com"
PASSWORD = "password"

# Memory bound: the RSS at the end of the load may be at most this factor times the RSS at the end
# of the warm-up, plus this slack. Once warm, the proxy's memory is its connections' buffers and the
# allocator's cached pages, both set by concurrency (constant here), not by how many requests have
# passed; mimalloc keeps freed pages for reuse, and which connections happen to be open at a sample
# moves RSS by a few MB. With a warm RSS of ~25 MiB the headroom is ~20 MiB: a leak of ~300 bytes a
# request overruns it in 10 minutes even at a debug build's ~120 requests/s on a busy 2-core
# machine, a leak of ~5 KB per connection (the errors and upgrade cases open one per request) too.
RSS_FACTOR = 1.5
RSS_SLACK_KB = 8 * 1024
# After the load, the open descriptors must come back to at most the baseline plus this: the few a
# process may open lazily on first use (none seen in practice, but not a leak either). Client
# connections close as the clients go; pooled upstream connections after --upstream-idle-timeout.
FD_SLACK = 3


class Tally:
    """Requests and errors per case, shared by every thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = collections.Counter()
        self.errors = collections.Counter()
        self.examples = collections.defaultdict(list)

    def ok(self, case, n=1):
        with self.lock:
            self.requests[case] += n

    def error(self, case, message, n=1):
        with self.lock:
            self.requests[case] += n
            self.errors[case] += n
            if len(self.examples[case]) < 5:
                self.examples[case].append(message)


class Soak:
    def __init__(self, args):
        self.args = args
        self.port = args.port
        self.tally = Tally()
        self.deadline = 0.0
        self.ctx = ssl.create_default_context(cafile=args.ca)
        # Python 3.13 verifies strictly by default, which needs an Authority Key Identifier in the
        # leaf; `proxy cert`'s has none (OpenSSL's default check, browsers and rustls accept it).
        self.ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
        self.ctx.set_alpn_protocols(["http/1.1"])

    # ---- HTTP/1.1 helpers

    def conn(self):
        # The certificate names 127.0.0.1, so the default host-name check holds.
        return HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)

    def expect(self, conn, case, method, path, status, headers=None, body=None, check=None):
        """One request on a kept-alive connection; returns the response (None on error)."""
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
        # OSError (resets, TLS errors, timeouts) and http.client.HTTPException (RemoteDisconnected,
        # BadStatusLine, ...): every failure to get an answer counts.
        except Exception as e:
            conn.close()
            self.tally.error(case, f"{method} {path}: {type(e).__name__}: {e}")
            return None
        problem = None
        if resp.status != status:
            problem = f"status {resp.status}, expected {status}"
        elif check:
            problem = check(resp, data)
        if problem:
            self.tally.error(case, f"{method} {path}: {problem}")
            return None
        self.tally.ok(case)
        resp.body = data
        return resp

    def raw(self, case, what, request_bytes, status, body_chunks=()):
        """One request on a fresh TLS connection, written byte for byte (for what http.client would
        refuse to send); reads the status line, then closes."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as tcp:
                with self.ctx.wrap_socket(tcp, server_hostname="localhost") as tls:
                    tls.sendall(request_bytes)
                    try:
                        for chunk in body_chunks:
                            tls.sendall(chunk)
                    except OSError:
                        pass  # the proxy may answer and close before the whole body is sent
                    head = b""
                    while b"\r\n" not in head:
                        more = tls.recv(4096)
                        if not more:
                            break
                        head += more
        except (OSError, ssl.SSLError) as e:
            self.tally.error(case, f"{what}: {type(e).__name__}: {e}")
            return
        m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
        if not m:
            self.tally.error(case, f"{what}: no status line, got {head[:60]!r}")
        elif int(m.group(1)) != status:
            self.tally.error(case, f"{what}: status {int(m.group(1))}, expected {status}")
        else:
            self.tally.ok(case)

    def login(self, conn, case):
        form = urllib.parse.urlencode({"username": USER, "password": PASSWORD})
        resp = self.expect(
            conn, case, "POST", "/api/login", 200,
            {"Content-Type": "application/x-www-form-urlencoded"}, form,
            check=lambda r, d: None if b'"access_token"' in d else "no access_token in the body",
        )
        if resp is None:
            return None
        return re.search(rb'"access_token":"([^"]+)"', resp.body).group(1).decode()

    def loop(self, case, body):
        """Runs `body(conn, case)` until the deadline, with a fresh connection after any error."""
        conn = self.conn()
        while time.monotonic() < self.deadline:
            try:
                body(conn, case)
            except Exception as e:  # a bug in the case itself still counts, and is shown
                self.tally.error(case, f"{type(e).__name__}: {e}")
                conn.close()
                conn = self.conn()
        conn.close()

    # ---- the cases

    def api_flow(self, conn, case):
        """The JSON login flow on one kept-alive connection: login, me, home page, logout, and the
        revoked token refused."""
        token = self.login(conn, case)
        if token is None:
            return
        bearer = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.expect(conn, case, "GET", "/api/me", 200, bearer,
                    check=lambda r, d: None if USER.encode() in d else "not the user's JSON")
        self.expect(conn, case, "GET", "/auth/home", 200, {"Cookie": f"session={token}"},
                    check=lambda r, d: None if b"<html" in d.lower() else "not an HTML page")
        self.expect(conn, case, "POST", "/api/logout", 200, bearer)
        self.expect(conn, case, "GET", "/api/me", 401, bearer)

    def pages(self, conn, case):
        """HTML pages, redirects and a JSON validation error, kept alive."""
        self.expect(conn, case, "GET", "/", 200)
        self.expect(conn, case, "GET", "/auth/login?state=2", 200)
        self.expect(conn, case, "GET", "/auth/login/?state=2", 307,
                    check=lambda r, d: None if r.getheader("Location") == "/auth/login?state=2" else "wrong Location")
        self.expect(conn, case, "GET", "/auth/home", 303)
        self.expect(conn, case, "POST", "/api/login", 422,
                    {"Content-Type": "application/x-www-form-urlencoded"}, "username=nobody")
        self.expect(conn, case, "GET", "/auth/login?state=x", 422)

    def cors(self, conn, case):
        """Preflights and cross-origin requests from an allowed and a refused origin."""
        good, bad = self.args.allowed_origin, self.args.refused_origin

        def allows(r, d):
            return None if r.getheader("Access-Control-Allow-Origin") == good else "no Access-Control-Allow-Origin"

        preflight = {"Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"}
        self.expect(conn, case, "OPTIONS", "/api/me", 204, {"Origin": good, **preflight}, check=allows)
        self.expect(conn, case, "OPTIONS", "/api/me", 403, {"Origin": bad, **preflight})
        self.expect(conn, case, "OPTIONS", "/api/login", 403,
                    {"Origin": good, "Access-Control-Request-Method": "DELETE"})
        self.expect(conn, case, "GET", "/api/me", 401, {"Origin": good}, check=allows)
        self.expect(conn, case, "GET", "/api/me", 403, {"Origin": bad})

    def errors(self, conn, case):
        """Expected errors: 404 and 405 kept alive; then, each on a fresh connection, a declared and a
        streamed body over --max-body-bytes (413), and bad or missing Host (400)."""
        self.expect(conn, case, "GET", "/no/such/page", 404)
        self.expect(conn, case, "DELETE", "/api/me", 405)
        limit = self.args.max_body_bytes
        self.raw(case, "declared body over the limit",
                 b"POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: %d\r\n\r\n" % (limit + 1), 413)
        chunk = b"a" * 4096
        chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 2) + [b"0\r\n\r\n"]
        self.raw(case, "streamed body over the limit",
                 b"POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n", 413, chunks)
        self.raw(case, "bad Host", b"GET / HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n", 400)
        self.raw(case, "no Host", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400)

    def upgrade(self, conn, case):
        """Upgrade requests on fresh connections. The app has no WebSocket route, so the proxy
        forwards the `websocket` upgrade and the app answers it as a plain GET (200, no 101); an `h2c`
        upgrade is stripped by the proxy, also 200."""
        ws = (b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        self.raw(case, "websocket upgrade", ws, self.args.upgrade_status)
        h2c = (b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        self.raw(case, "h2c upgrade", h2c, 200)

    def h2(self):
        """HTTP/2 through h2load, in rounds until the deadline: the home page and /api/me with a live
        session, 2 connections of 8 streams each; every response must be 2xx."""
        case = "h2 (h2load)"
        conn = self.conn()
        token = self.login(conn, case)
        conn.close()
        if token is None:
            return
        base = f"https://127.0.0.1:{self.port}"
        command = [self.args.h2load, "-n", "2000", "-c", "2", "-m", "8",
                   "-H", f"authorization: Bearer {token}", f"{base}/auth/home", f"{base}/api/me"]
        while time.monotonic() < self.deadline:
            left = self.deadline - time.monotonic()
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=max(left, 1) + 30).stdout
            except subprocess.TimeoutExpired:
                self.tally.error(case, "h2load took 30 s past the deadline")
                return
            total = re.search(r"requests: (\d+) total", out)
            codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
            if not total or not codes or "Application protocol: h2" not in out:
                self.tally.error(case, f"h2load output not understood (not h2?): {out[-300:]!r}")
                continue
            n, ok = int(total.group(1)), int(codes.group(1))
            self.tally.ok(case, ok)
            if ok != n:
                self.tally.error(case, f"{n - ok} of {n} not 2xx ({codes.group(0)})", n - ok)

    # ---- the run

    def run(self):
        pid = self.args.pid
        samples = []  # (seconds since start, rss kB, fds)
        stop_sampling = threading.Event()

        def sample():
            t = time.monotonic() - start
            samples.append((t, rss_kb(pid), fd_count(pid)))

        def sampler():
            while not stop_sampling.wait(1.0):
                sample()

        start = time.monotonic()
        sample()
        baseline_fds = samples[0][2]
        self.deadline = start + self.args.duration
        threads = [threading.Thread(target=sampler, daemon=True)]
        # (case name, body, threads): the name is the one its requests count under.
        workers = [("h1 login/me/home/logout", self.api_flow, 2), ("h1 pages+redirects", self.pages, 2),
                   ("cors", self.cors, 1), ("errors", self.errors, 1),
                   ("upgrade (refused by the app)", self.upgrade, 1)]
        threads += [threading.Thread(target=self.loop, args=(name, body))
                    for name, body, count in workers for _ in range(count)]
        if self.args.h2load:
            threads.append(threading.Thread(target=self.h2))
        for t in threads:
            t.start()
        warmup = min(max(10.0, self.args.duration * 0.1), self.args.duration / 2)
        print(f"soak: {self.args.duration:.0f} s of traffic on 127.0.0.1:{self.port} "
              f"({len(threads) - 1} client threads, warm-up {warmup:.0f} s)", flush=True)
        next_report = start + 60
        while any(t.is_alive() for t in threads[1:]):
            time.sleep(0.5)
            if time.monotonic() >= next_report and samples:
                next_report += 60
                with self.tally.lock:
                    done, errs = sum(self.tally.requests.values()), sum(self.tally.errors.values())
                print(f"soak: {samples[-1][0]:.0f} s: {done} requests, {errs} errors, "
                      f"RSS {samples[-1][1] / 1024:.1f} MiB, {samples[-1][2]} fds", flush=True)
        sample()
        load_end = samples[-1]
        # After the load: descriptors back to the baseline, polled up to a deadline (the verdict
        # allows FD_SLACK more).
        settle_deadline = time.monotonic() + self.args.fd_settle
        while fd_count(pid) > baseline_fds and time.monotonic() < settle_deadline:
            time.sleep(0.2)
        stop_sampling.set()
        sample()
        settled = samples[-1]
        settle_time = settled[0] - load_end[0]

        warm = [s for s in samples if s[0] <= warmup][-1]
        under_load = [s for s in samples if s[0] <= load_end[0]]
        max_fds = max(s[2] for s in under_load)
        rss_bound = warm[1] * RSS_FACTOR + RSS_SLACK_KB

        print("\ncase                              requests   errors")
        for case in sorted(self.tally.requests):
            print(f"{case:32} {self.tally.requests[case]:9} {self.tally.errors[case]:8}")
        total, errs = sum(self.tally.requests.values()), sum(self.tally.errors.values())
        print(f"{'total':32} {total:9} {errs:8}   ({total / self.args.duration:.0f} requests/s)")
        print(f"\nproxy RSS: start {samples[0][1] / 1024:.1f} MiB, after warm-up ({warm[0]:.0f} s) "
              f"{warm[1] / 1024:.1f} MiB, end of load {load_end[1] / 1024:.1f} MiB "
              f"(bound {rss_bound / 1024:.1f} MiB), max {max(s[1] for s in samples) / 1024:.1f} MiB, "
              f"idle after {settled[1] / 1024:.1f} MiB")
        print(f"proxy fds: baseline {baseline_fds}, max under load {max_fds}, "
              f"{settled[2]} {settle_time:.1f} s after the load (allowed {baseline_fds + FD_SLACK})")

        failures = []
        if errs:
            failures.append(f"{errs} unexpected answers or connection errors")
            for case, examples in sorted(self.tally.examples.items()):
                for e in examples:
                    print(f"  {case}: {e}")
        if settled[2] > baseline_fds + FD_SLACK:
            failures.append(f"descriptors stayed at {settled[2]} ({self.args.fd_settle:.0f} s after the load; "
                            f"baseline {baseline_fds})")
        if load_end[1] > rss_bound:
            failures.append(f"RSS grew from {warm[1] / 1024:.1f} MiB to {load_end[1] / 1024:.1f} MiB "
                            f"(bound {rss_bound / 1024:.1f} MiB)")
        if not self.args.h2load:
            print("soak: HTTP/2 not driven (no h2load)")
        if failures:
            print("\nsoak: FAILED: " + "; ".join(failures))
            return 1
        print("\nsoak: passed")
        return 0


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True, help="the proxy's HTTPS port on 127.0.0.1")
    p.add_argument("--pid", type=int, required=True, help="the proxy's process id (sampled in /proc)")
    p.add_argument("--ca", required=True, help="PEM of the CA that issued the proxy's certificate")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    p.add_argument("--h2load", default="", help="h2load executable; empty: no HTTP/2 case")
    p.add_argument("--max-body-bytes", type=int, required=True, help="the proxy's --max-body-bytes")
    p.add_argument("--allowed-origin", required=True, help="an origin in the proxy's --allow-origins")
    p.add_argument("--refused-origin", default="https://evil.example")
    p.add_argument("--upgrade-status", type=int, default=200,
                   help="status expected for a WebSocket upgrade (the demo app has no WebSocket route)")
    p.add_argument("--fd-settle", type=float, required=True,
                   help="seconds the descriptors get to come back after the load")
    sys.exit(Soak(p.parse_args()).run())


if __name__ == "__main__":
    main()
