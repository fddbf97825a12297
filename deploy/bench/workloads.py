"""The workloads: each figure's load generator (wrk, h2load, tlsload, curl, tlsclient.py hold),
run on the load core against one peer, and the terminator's CPU, kernel and memory readings
taken around it from /proc."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

from host import HERE, LOAD_CORE, NICE, PROXY_CORE, run
from peers import BIG_FILE_BYTES

# Workload shapes (the issue's: 64 HTTP/1.1 keep-alive connections; HTTP/2 with several streams).
H1_CONNS = 64
H2_CONNS = 8
H2_STREAMS = 16
# Connections in flight in the connection-rate figures (tlsload, one thread).
CONNRATE_CONCURRENCY = 16
# Time a load generator may take beyond its own duration (seconds).
STEP_SLACK_S = 60.0

# Paths of the bench's own binaries (set from the command line).
TOOLS = {}


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

