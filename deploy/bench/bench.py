#!/usr/bin/env python3
"""Side-by-side TLS terminator benchmark: nginx, HAProxy, Caddy and our proxy (issue 6).

Owns the orchestration: writes each peer's config from conf/, starts a plain-HTTP nginx backend and
every terminator on its own loopback port (terminators on core 0, backend and load generators on
core 1), runs the workloads interleaved peer by peer for several rounds, and writes a markdown table
of medians, spreads and same-round ratios to nginx. Usually started through run.sh, which installs
the tools and builds the proxy first. Standard library only.

Exit status: 0 when every step ran and no request failed; 1 when any request failed or any step
broke (so CI's --quick run catches a rotten harness or a broken proxy); 64 for bad arguments.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import tlsclient  # noqa: E402  (sibling module; path set just above)

# Cores: the terminator under test gets core 0 to itself; everything that generates or serves the
# load around it shares core 1, so the terminator's CPU time is what the figures normalise by.
PROXY_CORE = "0"
LOAD_CORE = "1"

# Workload shapes (the issue's: 64 HTTP/1.1 keep-alive connections; HTTP/2 with several streams).
H1_CONNS = 64
H2_CONNS = 8
H2_STREAMS = 16
# Connections in flight in the connection-rate figures (tlsload, one thread).
CONNRATE_CONCURRENCY = 16
BIG_FILE_BYTES = 100 * 1024 * 1024
ALLOWED_ORIGIN = "https://app.localhost"

# Deadlines (seconds).
READY_TIMEOUT_S = 30.0
STEP_SLACK_S = 60.0
STOP_GRACE_S = 5.0

EX_USAGE = 64

# Set from --nice: every process of the bench runs at this priority, so that other work on a shared
# machine (compilers) steals less of the pinned cores during a measurement. With the kernel's
# autogroups on, niceness only ranks processes within one session, so the run's autogroup gets it.
NICE = []


def set_priority(nice):
    NICE[:] = ["nice", "-n", str(nice)]
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError as e:
        return f"could not set the autogroup's niceness ({e}); other load competes evenly"
    return None

PEERS = ["nginx", "haproxy", "caddy", "proxy"]

# Paths of the bench's own binaries (set from the command line).
TOOLS = {}


# --------------------------------------------------------------------------- processes

class Procs:
    """Every process this run started, so exit (normal, exception, signal) can stop them all."""

    def __init__(self, workdir):
        self.children = []
        self.pidfile = os.path.join(workdir, "pids")

    def start(self, name, argv, logdir, env=None, cwd=None, stdin=None, stdout=None):
        log = open(os.path.join(logdir, f"{name}.log"), "ab")
        p = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log, stderr=log,
            # Own process group (stopping it stops nginx's workers too) but the same session, so
            # the process shares this run's scheduler autogroup and its --nice priority.
            preexec_fn=os.setpgrp,
        )
        self.children.append((name, p))
        # run.sh's trap reads this file if we die without running our own cleanup.
        with open(self.pidfile, "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def stop(self, p):
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def stop_all(self):
        for _, p in reversed(self.children):
            self.stop(p)
        self.children.clear()


def descendants(pid):
    """pid and all its descendants (nginx master + worker)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_split(pids):
    """(user, kernel) CPU seconds used so far by the processes."""
    tck = os.sysconf("SC_CLK_TCK")
    user = kernel = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            kernel += int(fields[12])  # stime
        except (OSError, IndexError, ValueError):
            pass
    return user / tck, kernel / tck


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def core_busy():
    """(busy, total) jiffies per core from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + v[4]
                out[m.group(1)] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def tcp_out_segs():
    """TCP segments sent so far by every socket on the host (/proc/net/snmp OutSegs)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("OutSegs")])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv, timeout, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def version_of(argv, pattern=None):
    try:
        r = run(argv, 10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (r.stdout + r.stderr).strip()
    if pattern:
        m = re.search(pattern, text)
        return m.group(1) if m else text.splitlines()[0] if text else "?"
    return text.splitlines()[0] if text else "?"


# --------------------------------------------------------------------------- set-up

def render(template, dest, values):
    with open(os.path.join(HERE, "conf", template)) as f:
        text = f.read()

    def sub(m):
        if m.group(1) not in values:
            raise KeyError(f"{template}: no value for @{{{m.group(1)}}}")
        return str(values[m.group(1)])

    with open(dest, "w") as f:
        f.write(re.sub(r"@\{(\w+)\}", sub, text))


def make_cert(workdir):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", f"{workdir}/key.pem", "-out", f"{workdir}/cert.pem", "-days", "7",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    with open(f"{workdir}/combined.pem", "w") as out:
        for name in ("cert.pem", "key.pem"):
            with open(f"{workdir}/{name}") as f:
                out.write(f.read())


def make_big_file(workdir):
    os.makedirs(f"{workdir}/www", exist_ok=True)
    path = f"{workdir}/www/big.bin"
    chunk = os.urandom(1024 * 1024)  # incompressible, so nobody can cheat with compression
    with open(path, "wb") as f:
        for _ in range(BIG_FILE_BYTES // len(chunk)):
            f.write(chunk)


def https_get(port, headers=None, timeout=2.0):
    """One HTTPS/1.1 GET /; returns (status, raw header block)."""
    ctx = tlsclient.client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            tls.sendall(f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n{extra}"
                        "Connection: close\r\n\r\n".encode())
            data = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except ssl.SSLZeroReturnError:
                    break
                if not chunk:
                    break
                data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return int(head.split(" ", 2)[1]), head


def wait_ready(name, proc, check, logpath):
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} at start-up; see {logpath}")
        try:
            if check():
                return
        except (OSError, ValueError, IndexError) as e:
            last = e
        time.sleep(0.05)  # polling a server that is starting; not a wait for a fixed time
    raise RuntimeError(f"{name} not ready after {READY_TIMEOUT_S}s ({last}); see {logpath}")


def start_backend(procs, workdir):
    """Starts the plain-HTTP nginx backend on the load core; returns its port."""
    port = free_port()
    os.makedirs(f"{workdir}/backend/logs", exist_ok=True)
    render("backend-nginx.conf", f"{workdir}/backend/nginx.conf",
           {"workdir": workdir, "backend_port": port,
            "user_line": "user root;" if os.geteuid() == 0 else ""})
    proc = procs.start("backend", NICE + ["taskset", "-c", LOAD_CORE, "nginx", "-p",
                                          f"{workdir}/backend/", "-e",
                                          f"{workdir}/backend/error.log", "-c",
                                          f"{workdir}/backend/nginx.conf"], f"{workdir}/logs")

    def ok():
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/1.1 200")

    wait_ready("backend", proc, ok, f"{workdir}/logs/backend.log")
    return port


class Peer:
    def __init__(self, name, port, proc, workdir):
        self.name, self.port, self.proc = name, port, proc
        self.log = os.path.join(workdir, "logs", f"{name}.log")
        self.workdir = workdir
        self.pids = [proc.pid]
        self.notes = []

    def refresh_pids(self):
        self.pids = descendants(self.proc.pid)


def start_peer(name, args, procs, workdir, backend_port):
    port = free_port()
    logdir = os.path.join(workdir, "logs")
    pin = NICE + ["taskset", "-c", PROXY_CORE]
    values = {"workdir": workdir, "port": port, "backend_port": backend_port,
              "user_line": "user root;" if os.geteuid() == 0 else ""}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir}
    cwd = None
    if name == "nginx":
        os.makedirs(f"{workdir}/nginx/logs", exist_ok=True)
        render("nginx.conf", f"{workdir}/nginx/nginx.conf", values)
        argv = pin + ["nginx", "-p", f"{workdir}/nginx/", "-e", f"{workdir}/nginx/error.log",
                      "-c", f"{workdir}/nginx/nginx.conf"]
    elif name == "haproxy":
        render("haproxy.cfg", f"{workdir}/haproxy.cfg", values)
        argv = pin + ["haproxy", "-db", "-f", f"{workdir}/haproxy.cfg"]
    elif name == "caddy":
        render("Caddyfile", f"{workdir}/Caddyfile", values)
        env.update(GOMAXPROCS="1", XDG_DATA_HOME=f"{workdir}/caddy-data",
                   XDG_CONFIG_HOME=f"{workdir}/caddy-config")
        argv = pin + ["caddy", "run", "--config", f"{workdir}/Caddyfile", "--adapter", "caddyfile"]
    elif name in ("proxy", "proxy-cors", "proxy-baseline", "stack-floor"):
        cwd = f"{workdir}/{name}"  # an empty directory: no stray .env is picked up
        os.makedirs(cwd, exist_ok=True)
        # Access logs are off for every peer (nginx access_log off, no haproxy log, caddy's
        # default); for the proxy that means RUST_LOG=warn.
        env.update(RUST_LOG="warn")
        # profile.py's arguments have neither extra build.
        binary = {"proxy-baseline": getattr(args, "baseline_bin", None),
                  "stack-floor": getattr(args, "floor_bin", None)}.get(name, args.proxy_bin)
        argv = pin + [binary, "--listen", f"127.0.0.1:{port}",
                      "--upstream", f"http://127.0.0.1:{backend_port}",
                      "--tls-cert", f"{workdir}/cert.pem", "--tls-key", f"{workdir}/key.pem"]
        if name == "proxy-cors":
            argv += ["--allow-origins", ALLOWED_ORIGIN]
    else:
        raise ValueError(name)
    proc = procs.start(name, argv, logdir, env=env, cwd=cwd)
    peer = Peer(name, port, proc, workdir)
    wait_ready(name, proc, lambda: https_get(port)[0] == 200, peer.log)
    peer.refresh_pids()
    if name == "proxy-cors":
        _, head = https_get(port, {"Origin": ALLOWED_ORIGIN})
        if "access-control-allow-origin" not in head.lower():
            peer.notes.append("no Access-Control-Allow-Origin on an allowed-origin request: "
                              "CORS enforcement is not active in this build")
    return peer


# --------------------------------------------------------------------------- workloads

def parse_duration_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def load(argv, timeout, wrap=()):
    return run(list(wrap) + NICE + ["taskset", "-c", LOAD_CORE] + argv, timeout)


def wrk(peer, duration, headers=(), wrap=()):
    argv = ["wrk", "-t1", f"-c{H1_CONNS}", f"-d{duration}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    r = load(argv + [f"https://127.0.0.1:{peer.port}/"], duration + STEP_SLACK_S, wrap)
    out = r.stdout
    if r.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed ({r.returncode}): {out[-500:]} {r.stderr[-500:]}")
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for pct in ("50", "99"):
        res[f"p{pct}_ms"] = parse_duration_ms(re.search(rf"\s{pct}%\s+(\S+)", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    return res


def perf_syscalls_usable():
    """None when `perf stat` can count the terminator's system calls here, else why not."""
    if not shutil.which("perf"):
        return "perf is not installed (Debian package linux-perf)"
    try:
        r = run(["perf", "stat", "-x,", "-e", SYSCALL_EVENT, "--", "true"], 30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"perf stat failed: {e}"
    if r.returncode != 0 or "<not supported>" in r.stderr:
        return f"perf stat cannot count {SYSCALL_EVENT} here: {r.stderr.strip()[-200:]}"
    return None


SYSCALL_EVENT = "raw_syscalls:sys_enter"
SYSCALL_RUN_S = 5


def syscalls(peer, duration):
    """System calls the terminator makes per request, under the HTTP/1.1 and HTTP/2 loads.

    Counted by `perf stat` attached to the terminator's processes for exactly the load
    generator's run, in runs of their own: an enabled tracepoint adds a little to every system
    call, which would tilt the throughput figures against whoever makes more of them."""
    res = {"errors": 0}
    for proto, fn, kw in (("h1", wrk, {}), ("h2", h2load, {"warmup": False})):
        peer.refresh_pids()
        out = os.path.join(peer.workdir, f"perf-{peer.name}-{proto}.csv")
        wrap = ["perf", "stat", "-x,", "-o", out, "-e", SYSCALL_EVENT,
                "-p", ",".join(map(str, peer.pids)), "--"]
        got = fn(peer, duration, wrap=wrap, **kw)
        with open(out) as f:
            text = f.read()
        m = re.search(rf"^([\d.]+),[^,]*,{re.escape(SYSCALL_EVENT)}", text, re.M)
        if not m:
            raise RuntimeError(f"perf stat printed no {SYSCALL_EVENT} count: {text[-300:]}")
        res["errors"] += got["errors"]
        res[f"{proto}_per_req"] = float(m.group(1)) / got["requests"]
    return res


def h2load(peer, duration, wrap=(), warmup=True):
    argv = ["h2load", "-t1", f"-c{H2_CONNS}", f"-m{H2_STREAMS}", f"-D{duration}"]
    # Requests in the warm-up second are not in h2load's totals.
    argv += ["--warm-up-time=1"] if warmup else []
    r = load(argv + [f"https://127.0.0.1:{peer.port}/"], duration + STEP_SLACK_S, wrap)
    out = r.stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"h2load failed ({r.returncode}): {out[-500:]} {r.stderr[-500:]}")
    res = {"rps": float(m.group(1))}
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    res["errors"] = int(req.group(6)) + int(req.group(7)) + int(codes.group(3)) + int(codes.group(4))
    # With -D, requests still in flight when the clock stops are reported as "failed"; they are
    # not errors. Anything else that failed (not done) is counted via errored/timeout above.
    res["unfinished"] = int(req.group(5))
    res["requests"] = int(req.group(3))
    if int(req.group(4)) == 0:
        res["errors"] += 1
    proto = re.search(r"Application protocol: (\S+)", out)
    res["alpn"] = proto.group(1) if proto else "?"
    if res["alpn"] != "h2":
        raise RuntimeError(f"h2load negotiated {res['alpn']}, not h2")
    return res


def connrate(peer, duration, resume):
    argv = [TOOLS["tlsload"], "--port", str(peer.port), "--duration", str(duration),
            "--concurrency", str(CONNRATE_CONCURRENCY)]
    if resume:
        argv.append("--resume")
    r = load(argv, duration + STEP_SLACK_S)
    if r.returncode != 0:
        raise RuntimeError(f"tlsload failed ({r.returncode}): {r.stderr[-800:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"rps": d["conns_per_s"], "errors": d["errors"], "first_error": d["first_error"],
            "resumed_frac": d["resumed"] / d["conns"] if d["conns"] else 0.0}


def download(peer, _duration):
    r = load(["curl", "-sk", "--http1.1", "-o", "/dev/null", "-w",
              "%{http_code} %{size_download} %{time_total}",
              f"https://127.0.0.1:{peer.port}/big.bin"], 300)
    code, size, secs = r.stdout.split()
    errors = 0 if (r.returncode == 0 and code == "200" and int(size) == BIG_FILE_BYTES) else 1
    return {"mbps": int(size) / float(secs) / 1e6, "errors": errors}


def measured(peer, fn, *a):
    """Runs one workload and adds the terminator's CPU use (fraction of one core) and core use."""
    peer.refresh_pids()
    (u0, k0), b0, s0, t0 = cpu_split(peer.pids), core_busy(), tcp_out_segs(), time.monotonic()
    res = fn(peer, *a)
    (u1, k1), b1, s1, t1 = cpu_split(peer.pids), core_busy(), tcp_out_segs(), time.monotonic()
    res["cpu"] = (u1 - u0 + k1 - k0) / (t1 - t0)
    # Where a request's CPU time goes: the terminator's own code (user) or the kernel (the
    # loopback TCP path, which costs every peer about the same per request and syscall).
    if res.get("rps"):
        res["user_us"] = (u1 - u0) / (t1 - t0) / res["rps"] * 1e6
        res["kernel_us"] = (k1 - k0) / (t1 - t0) / res["rps"] * 1e6
        # Segments on the wire per request, counted over the host (client, terminator, backend):
        # 4 is the floor for a proxied request (request and response on each side, ACKs riding
        # on them). A rate, like the CPU figures: h2load's warm-up second sends segments but its
        # requests are not in h2load's count.
        res["segs_per_req"] = (s1 - s0) / (t1 - t0) / res["rps"]
    for core in (PROXY_CORE, LOAD_CORE):
        busy = b1[core][0] - b0[core][0]
        total = b1[core][1] - b0[core][1]
        res[f"core{core}_busy"] = busy / total if total else 0.0
    # Time core 0 spent on anything but the terminator (other work on a shared machine).
    res["core0_foreign"] = max(0.0, res[f"core{PROXY_CORE}_busy"] - res["cpu"])
    if "rps" in res and res["cpu"] > 0:
        res["rps_per_core"] = res["rps"] / res["cpu"]
    if "mbps" in res and res["cpu"] > 0:
        res["mbps_per_core"] = res["mbps"] / res["cpu"]
    return res


# How long the held connections sit idle before the memory figure's RSS is read.
IDLE_SETTLE_S = 1.0


def memory(peer, n_conns, stage="request", proto="http/1.1"):
    peer.refresh_pids()
    before = rss_kb(peer.pids)
    argv = NICE + ["taskset", "-c", LOAD_CORE, sys.executable, os.path.join(HERE, "tlsclient.py"),
                   "hold", "--port", str(peer.port), "-n", str(n_conns), "--stage", stage,
                   "--proto", proto]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"tlsclient hold failed: {line!r}")
        held = json.loads(line[len("ready "):])
        # Measured once the connections have been idle a moment, the same for every peer: the
        # proxy releases an idle connection's HTTP buffers after a quarter second (nginx at once).
        time.sleep(IDLE_SETTLE_S)
        peer.refresh_pids()
        with_conns = rss_kb(peer.pids)
        p.stdin.write("done\n")
        p.stdin.flush()
        final = json.loads(p.stdout.readline())
        p.wait(STEP_SLACK_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    errors = held["errors"] + (final["held"] - final["alive"])
    return {"rss_before_kb": before, "rss_conns_kb": with_conns,
            "kb_per_conn": (with_conns - before) / max(held["held"], 1),
            "errors": errors, "first_error": final.get("first_error")}


# --------------------------------------------------------------------------- report

FIGURES = [
    # key, label, unit/format, better ("hi"/"lo"), peers filter
    ("h1.rps", "HTTP/1.1 keep-alive req/s (64 conns)", "{:,.0f}", None),
    ("h1.rps_per_core", "  … per busy proxy core", "{:,.0f}", None),
    ("h1.p50_ms", "  p50 latency ms", "{:.2f}", None),
    ("h1.p99_ms", "  p99 latency ms", "{:.2f}", None),
    ("h1.cpu", "  proxy CPU (cores)", "{:.2f}", None),
    ("h1.user_us", "  proxy user CPU µs per request", "{:.1f}", None),
    ("h1.kernel_us", "  proxy kernel CPU µs per request", "{:.1f}", None),
    ("sys.h1_per_req", "  proxy system calls per request", "{:.2f}", None),
    ("h1.segs_per_req", "  TCP segments per request (whole host; 4 is the floor)", "{:.2f}", None),
    ("h2.rps", f"HTTP/2 req/s ({H2_CONNS} conns × {H2_STREAMS} streams)", "{:,.0f}", None),
    ("h2.rps_per_core", "  … per busy proxy core", "{:,.0f}", None),
    ("h2.cpu", "  proxy CPU (cores)", "{:.2f}", None),
    ("h2.user_us", "  proxy user CPU µs per request", "{:.1f}", None),
    ("h2.kernel_us", "  proxy kernel CPU µs per request", "{:.1f}", None),
    ("sys.h2_per_req", "  proxy system calls per request", "{:.2f}", None),
    ("h2.segs_per_req", "  TCP segments per request (whole host)", "{:.2f}", None),
    ("full.rps", "New TLS 1.3 conns/s, full handshake", "{:,.0f}", None),
    ("full.rps_per_core", "  … per busy proxy core", "{:,.0f}", None),
    ("full.cpu", "  proxy CPU (cores)", "{:.2f}", None),
    ("resumed.rps", "New TLS 1.3 conns/s, resumed", "{:,.0f}", None),
    ("resumed.rps_per_core", "  … per busy proxy core", "{:,.0f}", None),
    ("resumed.resumed_frac", "  share actually resumed", "{:.0%}", None),
    ("resumed.cpu", "  proxy CPU (cores)", "{:.2f}", None),
    ("download.mbps", "100 MB download MB/s", "{:,.0f}", None),
    ("download.mbps_per_core", "  … MB/s per busy proxy core", "{:,.0f}", None),
    ("download.cpu", "  proxy CPU (cores)", "{:.2f}", None),
    ("mem.rss_idle_mb", "RSS idle MB (fresh process, after one request)", "{:.1f}", None),
    ("mem.rss_conns_mb", "RSS with idle TLS conns MB", "{:.1f}", None),
    ("mem.kb_per_conn", "KB per idle TLS keep-alive conn", "{:.1f}", None),
    ("mem2.kb_per_conn", "KB per idle HTTP/2 TLS conn (browsers' protocol)", "{:.1f}", None),
    ("cors.rps", "HTTP/1.1 req/s with an allowed Origin", "{:,.0f}", None),
    ("cors.rps_per_core", "  … per busy proxy core", "{:,.0f}", None),
    ("cors.p99_ms", "  p99 latency ms", "{:.2f}", None),
]

TARGETS = [
    ("h1.rps_per_core", ">=", 1.25, "HTTP/1.1 req/s per busy core ≥ 1.25×"),
    ("h1.p99_ms", "<=", 1.0, "HTTP/1.1 p99 ≤ 1.0×"),
    ("h2.rps", ">=", 1.5, "HTTP/2 req/s ≥ 1.5×"),
    ("full.rps_per_core", ">=", 1.0, "Full handshakes/s per busy core ≥ 1.0×"),
    ("resumed.rps_per_core", ">=", 1.2, "Resumed handshakes/s per busy core ≥ 1.2×"),
    ("mem.kb_per_conn", "<=", 1.0, "Memory per idle TLS conn ≤ 1.0× nginx"),
]


def value(rounds_data, key):
    """Per-round list of one figure's values for one peer (None where missing)."""
    fig, field = key.split(".")
    out = []
    for rd in rounds_data:
        v = rd.get(fig, {}).get(field) if isinstance(rd.get(fig), dict) else None
        out.append(v)
    return out


def summarise(results, peers, rounds):
    """{key: {peer: (median, min, max, median_ratio_to_nginx)}}."""
    table = {}
    for key, *_ in FIGURES:
        row = {}
        for peer in peers:
            vals = value(results[peer], key)
            got = [v for v in vals if v is not None]
            if not got:
                continue
            ratio = None
            if "nginx" in results and peer != "nginx":
                base = value(results["nginx"], key)
                rs = [v / b for v, b in zip(vals, base) if v is not None and b]
                ratio = statistics.median(rs) if rs else None
            row[peer] = (statistics.median(got), min(got), max(got), ratio)
        table[key] = row
    return table


# The throughput targets, as (figure, ratio to nginx, label) for the CPU-budget table.
THROUGHPUT_TARGETS = [(key.split(".")[0], goal, label) for key, _, goal, label in TARGETS
                      if key in ("h1.rps_per_core", "h2.rps")]


def baseline_note(results):
    """The proxy against its baseline build (`--baseline-bin`): same-round ratios per figure."""
    parts = []
    for fig, key in (("h1", "rps_per_core"), ("h2", "rps_per_core"), ("full", "rps_per_core"),
                     ("resumed", "rps_per_core"), ("download", "mbps")):
        pairs = [(p[fig], b[fig]) for p, b in zip(results["proxy"], results["proxy-baseline"])
                 if p.get(fig, {}).get(key) and b.get(fig, {}).get(key)]
        if not pairs:
            continue
        ratio = [p[key] / b[key] for p, b in pairs]
        text = f"{fig} ×{statistics.median(ratio):.3f}"
        if len(ratio) > 1:
            text += f" [×{min(ratio):.2f}–×{max(ratio):.2f}]"
        cpu = [(p["user_us"], p["kernel_us"], b["user_us"], b["kernel_us"]) for p, b in pairs
               if "user_us" in p and "user_us" in b]
        if cpu:
            text += (" (user/kernel µs per request "
                     + "/".join(f"{statistics.median(c[i] for c in cpu):.2f}" for i in (0, 1))
                     + " vs "
                     + "/".join(f"{statistics.median(c[i] for c in cpu):.2f}" for i in (2, 3))
                     + ")")
        parts.append(text)
    return ("proxy against proxy-baseline (--baseline-bin), per busy core (download: MB/s), "
            "median of same-round ratios: "
            + ("; ".join(parts) if parts else "no figure measured both"))


def budget_lines(results):
    """What a throughput target leaves for the proxy's own code, from each round's CPU readings.

    A terminator that keeps one core busy serves 1 / (user + kernel CPU per request) requests per
    second. The kernel part is the loopback TCP path (system calls and segments, counted above),
    the same for every terminator that makes the same calls; so ×r of nginx needs
    proxy user ≤ (nginx user + nginx kernel) / r − proxy kernel. Computed per round, like the
    ratios, then the median and the spread over rounds."""
    if "nginx" not in results or "proxy" not in results:
        return []
    # With --floor-bin: the user time of the stack alone (tokio-rustls + hyper, no proxy logic).
    floor_runs = results.get("stack-floor")
    rows = []
    for fig, goal, label in THROUGHPUT_TARGETS:
        allowed, ceiling = [], []
        for n, p in zip(results["nginx"], results["proxy"]):
            try:
                nginx_total = n[fig]["user_us"] + n[fig]["kernel_us"]
                p_kernel = p[fig]["kernel_us"]
            except KeyError:
                continue
            if p_kernel <= 0:  # no CPU reading (a run too short for /proc's clock ticks)
                continue
            allowed.append(nginx_total / goal - p_kernel)
            ceiling.append(nginx_total / p_kernel)
        if not allowed:
            continue
        now = [p[fig]["user_us"] for p in results["proxy"] if "user_us" in p.get(fig, {})]
        nginx_user = [n[fig]["user_us"] for n in results["nginx"]
                      if "user_us" in n.get(fig, {})]
        several = len(allowed) > 1  # a spread only where there is one, as in the table above
        floor = ""
        if floor_runs:
            user = [f[fig]["user_us"] for f in floor_runs if "user_us" in f.get(fig, {})]
            floor = f" {statistics.median(user):.1f} |" if user else " – |"
        rows.append(f"| {label} | {statistics.median(nginx_user):.1f} | "
                    f"{statistics.median(now):.1f} |{floor} {statistics.median(allowed):.1f}"
                    + (f" [{min(allowed):.1f}–{max(allowed):.1f}]" if several else "")
                    + f" | ×{statistics.median(ceiling):.2f}"
                    + (f" [×{min(ceiling):.2f}–×{max(ceiling):.2f}]" if several else "") + " |")
    if not rows:
        return []
    return ["", "### CPU per request the throughput targets leave for the proxy's own code", "",
            "A busy terminator serves 1 / (user + kernel µs) requests per second, so ×r of nginx "
            "allows the proxy (nginx user + kernel) / r − proxy kernel µs of user CPU per "
            "request; at zero user time it would reach (nginx user + kernel) / proxy kernel. "
            "Both computed per round, like the ratios: median [min–max]. The kernel part is the "
            "loopback TCP path (system calls and segments above)."
            + (" stack-floor is the `stack_floor` example: tokio-rustls and hyper forwarding "
               "with none of the proxy's own work." if floor_runs else ""), "",
            "| Target | nginx user µs | proxy user µs | "
            + ("stack-floor user µs | " if floor_runs else "")
            + "proxy user µs the target allows | ceiling at zero user time |",
            "|---|---|---|---|---|" + ("---|" if floor_runs else "")] + rows


def render_report(meta, peers, table, errors, failures, notes, results):
    lines = [
        "# TLS terminator benchmark results",
        "",
        f"Date: {meta['date']} · machine: {meta['cpu']} ({meta['cores']} cores), "
        f"kernel {meta['kernel']}, load average {meta['loadavg']} at the end · mode: {meta['mode']}, {meta['rounds']} round(s), "
        f"{meta['duration']} s per figure, {meta['idle_conns']} idle conns",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        f"Each cell: median over rounds [min–max]; (×r) is the median of the same-round ratio to "
        f"nginx. Terminators on core {PROXY_CORE}, backend + load generators on core {LOAD_CORE}. "
        "\"Per busy proxy core\" divides by the terminator's own CPU use (from /proc/<pid>/stat), "
        "which is what counts when the load generator's core is the bottleneck.",
        "",
        "| Figure | " + " | ".join(peers) + " |",
        "|---" * (len(peers) + 1) + "|",
    ]
    for key, label, fmt, _ in FIGURES:
        row = table.get(key, {})
        if not row:
            continue
        cells = []
        for peer in peers:
            if peer not in row:
                cells.append("–")
                continue
            med, lo, hi, ratio = row[peer]
            cell = fmt.format(med)
            if meta["rounds"] > 1:
                cell += f" [{fmt.format(lo)}–{fmt.format(hi)}]"
            if ratio is not None:
                cell += f" (×{ratio:.2f})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| Errors (all figures) | " + " | ".join(str(errors.get(p, 0)) for p in peers)
                 + " |")
    if "proxy" in table.get("h1.rps", {}):
        lines += ["", "## Targets for `proxy` (issue 6; ratios to nginx, same round, medians)", "",
                  "| Target | Measured | Met |", "|---|---|---|"]
        for key, op, goal, label in TARGETS:
            r = table.get(key, {}).get("proxy")
            if not r or r[3] is None:
                lines.append(f"| {label} | – | – |")
                continue
            ok = r[3] >= goal if op == ">=" else r[3] <= goal
            # A third decimal where two would show the goal itself next to a "no" (×1.003).
            shown = f"{r[3]:.2f}" if round(r[3], 2) != goal else f"{r[3]:.3f}"
            lines.append(f"| {label} | ×{shown} | {'yes' if ok else 'no'} |")
        idle = table.get("mem.rss_idle_mb", {}).get("proxy")
        if idle:
            lines.append(f"| RSS idle ≤ 10 MB | {idle[0]:.1f} MB | {'yes' if idle[0] <= 10 else 'no'} |")
        lines.append(f"| Zero errors | {errors.get('proxy', 0) + errors.get('proxy-cors', 0)} | "
                     f"{'yes' if errors.get('proxy', 0) + errors.get('proxy-cors', 0) == 0 else 'no'} |")
    lines += budget_lines(results)
    if notes or failures:
        lines += ["", "## Notes and failures", ""]
        lines += [f"- {n}" for n in notes]
        lines += [f"- FAILED: {f}" for f in failures]
    lines += ["", "Configs: `deploy/bench/conf/`; raw per-round data: "
              "`deploy/bench/results/raw/` (not committed). Re-run: `deploy/bench/run.sh`.", ""]
    return "\n".join(lines)


def machine_meta(args):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {
        "nginx": version_of(["nginx", "-v"], r"nginx/(\S+)"),
        "haproxy": version_of(["haproxy", "-v"], r"version (\S+)"),
        "caddy": version_of(["caddy", "version"], r"(v?[\d.]+\S*)"),
        "wrk": version_of(["wrk", "-v"], r"wrk (\S+)"),
        "h2load": version_of(["h2load", "--version"], r"nghttp2/(\S+)"),
        "openssl": version_of(["openssl", "version"], r"OpenSSL (\S+)"),
        "python": platform.python_version(),
    }
    if args.proxy_bin:
        rev = version_of(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
        dirty = run(["git", "-C", REPO, "status", "--porcelain", "proxy"], 10).stdout.strip()
        versions["proxy"] = f"{rev}{'+dirty' if dirty else ''}"
        versions["rustc"] = version_of(["rustc", "--version"], r"rustc (\S+)")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "versions": versions, "mode": "quick" if args.quick else "full",
        "rounds": args.rounds, "duration": args.duration, "idle_conns": args.idle_conns,
        "loadavg": open("/proc/loadavg").read().split()[0],
    }


# --------------------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Benchmark nginx, HAProxy, Caddy and the proxy as TLS terminators.")
    ap.add_argument("--quick", action="store_true",
                    help="CI mode: 1 round, 2 s per figure, results to results/raw/")
    ap.add_argument("--rounds", type=int, help="rounds (default 5; 1 with --quick)")
    ap.add_argument("--duration", type=int, help="seconds per figure (default 10; 2 with --quick)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="comma-separated subset of " + ",".join(PEERS))
    ap.add_argument("--idle-conns", type=int, default=1000, help="idle TLS connections to hold")
    ap.add_argument("--proxy-bin", help="the proxy binary (run.sh builds and passes it)")
    ap.add_argument("--tlsload-bin", help="the connection-rate load generator (run.sh builds it)")
    ap.add_argument("--baseline-bin", metavar="BIN",
                    help="another build of the proxy (say, the last commit's), run as peer "
                         "proxy-baseline in the same rounds: what a change buys, natively")
    ap.add_argument("--floor-bin", metavar="BIN",
                    help="the stack_floor example (`cargo build --release --example "
                         "stack_floor`: tokio-rustls + hyper forwarding and nothing else), run "
                         "as peer stack-floor in the same rounds: what the stack costs before "
                         "any of the proxy's own work")
    ap.add_argument("--figures", default="h1,h2,sys,full,resumed,download,mem,mem2,cors",
                    help="comma-separated subset of workloads")
    ap.add_argument("--cors-micro", action="store_true",
                    help="also run the CORS decision micro-benchmark (cargo bench) first")
    ap.add_argument("--from-raw", metavar="JSON",
                    help="only re-render the table from a results/raw/*.json of an earlier run")
    ap.add_argument("--out", help="markdown output (default RESULTS.md; quick: results/raw/)")
    ap.add_argument("--nice", type=int, default=-20 if os.geteuid() == 0 else 0,
                    help="niceness of every bench process (default -20 as root, else 0)")
    ap.add_argument("--workdir", help="scratch directory (default: a new temp dir, removed)")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.duration = args.duration or (2 if args.quick else 10)
    args.peers = [p for p in args.peers.split(",") if p]
    args.figures = [f for f in args.figures.split(",") if f]
    bad = [p for p in args.peers if p not in PEERS]
    if bad or not args.peers:
        ap.error(f"--peers: unknown {bad}; accepted: {','.join(PEERS)}")
    if args.from_raw:
        return args
    if "proxy" in args.peers and not (args.proxy_bin and os.access(args.proxy_bin, os.X_OK)):
        ap.error(f"--proxy-bin {args.proxy_bin!r} is not an executable (run.sh builds it)")
    if args.baseline_bin and not ("proxy" in args.peers and os.access(args.baseline_bin, os.X_OK)):
        ap.error(f"--baseline-bin {args.baseline_bin!r}: needs the proxy among --peers and an "
                 "executable")
    if args.floor_bin and not os.access(args.floor_bin, os.X_OK):
        ap.error(f"--floor-bin {args.floor_bin!r} is not an executable (cargo build --release "
                 "-p proxy --example stack_floor)")
    if {"full", "resumed"} & set(args.figures) and not (
            args.tlsload_bin and os.access(args.tlsload_bin, os.X_OK)):
        ap.error(f"--tlsload-bin {args.tlsload_bin!r} is not an executable (run.sh builds it)")
    # The peers run in their own work directories: a relative path would not be found there.
    for attr in ("proxy_bin", "baseline_bin", "floor_bin", "tlsload_bin"):
        if getattr(args, attr):
            setattr(args, attr, os.path.abspath(getattr(args, attr)))
    TOOLS["tlsload"] = args.tlsload_bin
    return args


def rerender(path, out):
    """Writes the table of an earlier run again (after a change to the report's layout)."""
    with open(path) as f:
        raw = json.load(f)
    results = raw["results"]
    for rounds in results.values():
        for rd in rounds:
            d = rd.get("download")
            if d and d.get("cpu") and "mbps_per_core" not in d:
                d["mbps_per_core"] = d["mbps"] / d["cpu"]
    peers = list(results)
    table = summarise(results, peers, raw["meta"]["rounds"])
    report = render_report(raw["meta"], peers, table, raw["errors"], raw["failures"],
                           raw["notes"], results)
    if raw.get("micro"):
        report += MICRO_HEADER + raw["micro"] + "\n```\n"
    with open(out, "w") as f:
        f.write(report)
    print(report)
    return 0


MICRO_HEADER = ("\n## CORS policy decision (micro-benchmark, `cargo bench -p proxy --bench "
                "cors_decision`)\n\n```\n")


def main(argv):
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code else 0
    if args.from_raw:
        return rerender(args.from_raw, args.out or os.path.join(HERE, "RESULTS.md"))
    prio_note = set_priority(args.nice) if args.nice else None
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="proxy-bench.")
    os.makedirs(f"{workdir}/logs", exist_ok=True)
    os.chmod(workdir, 0o755)  # nginx workers (user nobody when not root) read the big file
    procs = Procs(workdir)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    atexit.register(procs.stop_all)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    failures, notes = [], [prio_note] if prio_note else []
    micro = None
    if args.cors_micro:
        # Compiled on both cores, then timed on the proxy's core before any server starts, so
        # nothing else competes for it.
        bench_cmd = ["cargo", "bench", "-p", "proxy", "--bench", "cors_decision"]
        r = run(bench_cmd + ["--no-run"], 1800, cwd=REPO)
        if r.returncode == 0:
            r = run(NICE + ["taskset", "-c", PROXY_CORE] + bench_cmd, 600, cwd=REPO)
        if r.returncode != 0:
            failures.append(f"cors micro-benchmark: {r.stderr[-500:]}")
        else:
            micro = r.stdout.strip()
    # The measured peers: the chosen ones, and the baseline build right after the proxy (so the
    # two run in neighbouring slots of every round).
    measured_peers = list(args.peers)
    if args.baseline_bin:
        measured_peers.insert(measured_peers.index("proxy") + 1, "proxy-baseline")
    if args.floor_bin:
        measured_peers.append("stack-floor")
    peers_run = list(measured_peers)
    if "proxy" in args.peers and "cors" in args.figures:
        peers_run.append("proxy-cors")
    results = {p: [dict() for _ in range(args.rounds)] for p in peers_run}
    errors = {p: 0 for p in peers_run}
    try:
        make_cert(workdir)
        if "download" in args.figures:
            make_big_file(workdir)
        backend_port = start_backend(procs, workdir)
        perf_missing = perf_syscalls_usable() if "sys" in args.figures else None
        if perf_missing:
            notes.append(f"no system-call counts: {perf_missing}")

        peers = {}
        for name in peers_run:
            try:
                peers[name] = start_peer(name, args, procs, workdir, backend_port)
                notes += [f"{name}: {n}" for n in peers[name].notes]
                # Warm-up (caches, allocator, the upstream pool), not measured.
                wrk(peers[name], 1)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                failures.append(f"{name}: start-up: {e}")

        # The stack floor stands for the request path only: its handshakes, memory and downloads
        # are the same crates' as the proxy's.
        terminators = [p for p in measured_peers if p != "stack-floor"]
        workloads = [
            ("h1", lambda p: measured(p, wrk, args.duration), measured_peers),
            ("h2", lambda p: measured(p, h2load, args.duration), measured_peers),
            # Short: it only counts, and an extra pass per peer and round adds up.
            ("sys", lambda p: syscalls(p, min(args.duration, SYSCALL_RUN_S)),
             [] if perf_missing else measured_peers),
            ("full", lambda p: measured(p, connrate, args.duration, False), terminators),
            ("resumed", lambda p: measured(p, connrate, args.duration, True), terminators),
            ("download", lambda p: measured(p, download, args.duration), terminators),
            ("mem", lambda p: memory(p, args.idle_conns), terminators),
            ("mem2", lambda p: memory(p, args.idle_conns, proto="h2"), terminators),
            ("cors", lambda p: measured(p, wrk, args.duration, [f"Origin: {ALLOWED_ORIGIN}"]),
             # The CORS-less proxy refuses cross-origin requests (same-origin only by default), so
             # its baseline is the plain HTTP/1.1 figure; see the "CORS cost" note.
             [p for p in ("nginx", "proxy-cors") if p in peers_run]),
        ]
        for rnd in range(args.rounds):
            for fig, fn, who in workloads:
                if fig not in args.figures:
                    continue
                for name in who:
                    if name not in peers:
                        continue
                    print(f"[round {rnd + 1}/{args.rounds}] {fig:8s} {name:10s} ", end="",
                          flush=True)
                    try:
                        if fig in ("mem", "mem2"):
                            # A fresh process: allocator caches left by the earlier workloads
                            # would otherwise absorb part of the 1,000 connections.
                            procs.stop(peers[name].proc)
                            peers[name] = start_peer(name, args, procs, workdir, backend_port)
                        res = fn(peers[name])
                    except (RuntimeError, OSError, ValueError, KeyError, AttributeError,
                            subprocess.SubprocessError) as e:
                        failures.append(f"round {rnd + 1} {fig} {name}: {e}")
                        print("FAILED:", e, flush=True)
                        continue
                    if fig == "mem":
                        res["rss_conns_mb"] = res["rss_conns_kb"] / 1024
                        res["rss_idle_mb"] = res["rss_before_kb"] / 1024
                    if peers[name].proc.poll() is not None:
                        failures.append(f"round {rnd + 1} {fig} {name}: process exited "
                                        f"({peers[name].proc.returncode}); see {peers[name].log}")
                    results[name][rnd][fig] = res
                    errors[name] += res.get("errors", 0)
                    if res.get("errors"):
                        notes.append(f"round {rnd + 1} {fig} {name}: {res['errors']} errors "
                                     f"({res.get('first_error') or 'see raw data'})")
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                      for k, v in res.items()}), flush=True)
        foreign = [rd[f]["core0_foreign"] for p in peers_run for rd in results[p]
                   for f in rd if isinstance(rd[f], dict) and "core0_foreign" in rd[f]]
        if foreign and statistics.median(foreign) > 0.10:
            notes.append(f"core {PROXY_CORE} spent a median {statistics.median(foreign):.0%} of "
                         "each measurement on other processes: absolute figures are low, "
                         "compare the same-round ratios and the per-busy-core figures")
        if "proxy-cors" in results:
            cost = [rd_c.get("cors", {}).get("rps_per_core", 0) / rd_p["h1"]["rps_per_core"]
                    for rd_c, rd_p in zip(results["proxy-cors"], results["proxy"])
                    if rd_p.get("h1", {}).get("rps_per_core") and rd_c.get("cors")]
            if cost:
                spread = (f"rounds ×{min(cost):.2f}–×{max(cost):.2f}; " if len(cost) > 1
                          else "")
                notes.append(f"CORS cost: proxy with CORS on (allowed Origin) does "
                             f"×{statistics.median(cost):.2f} the req/s per busy core of the "
                             f"proxy without Origin/CORS (median of same-round ratios; {spread}"
                             "the two run in different slots of a round, so this carries the "
                             "machine's drift between them, which nginx's own h1 and cors slots "
                             "show too)")
        if args.baseline_bin:
            notes.append(baseline_note(results))
        for name in peers_run:
            frac = [r.get("resumed", {}).get("resumed_frac") for r in results[name]]
            frac = [f for f in frac if f is not None]
            if frac and min(frac) < 0.9:
                notes.append(f"{name}: only {min(frac):.0%} of 'resumed' connections resumed: "
                             "that figure is mostly full handshakes")
    except Exception as e:  # noqa: BLE001  (report, clean up, exit non-zero)
        traceback.print_exc()
        failures.append(f"harness: {e!r}")
    finally:
        procs.stop_all()

    meta = machine_meta(args)
    shown = [p for p in peers_run]
    table = summarise(results, shown, args.rounds)
    report = render_report(meta, shown, table, errors, failures, notes, results)
    if micro:
        report += MICRO_HEADER + micro + "\n```\n"
    rawdir = os.path.join(HERE, "results", "raw")
    os.makedirs(rawdir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(os.path.join(rawdir, f"{stamp}-{meta['mode']}.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "errors": errors, "failures": failures,
                   "notes": notes, "micro": micro}, f, indent=1)
    out = args.out or (os.path.join(rawdir, "RESULTS-quick.md") if args.quick
                       else os.path.join(HERE, "RESULTS.md"))
    with open(out, "w") as f:
        f.write(report)
    print(report)
    print(f"wrote {out}")
    if own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    total_errors = sum(errors.values())
    if failures or total_errors:
        print(f"FAIL: {len(failures)} failed step(s), {total_errors} request error(s)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
