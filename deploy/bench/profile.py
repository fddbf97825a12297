#!/usr/bin/env python3
"""Where the proxy's time goes: profiles it under each bench workload (run via `run.sh --profile`).

`--tool perf` (default): samples the proxy with `perf record -e cpu-clock` (a software clock, so it
works in VMs without hardware counters) while the workload runs, and writes a flat profile
(self time per symbol and per library) for each workload.
`--tool callgrind`: runs the proxy under valgrind's callgrind for a fixed request count and reports
instructions per request, which is repeatable to a fraction of a percent: the figure to compare
before and after a change; `--peer nginx` counts nginx's (same configuration as in the bench, run
as one process) for comparison. Everything stays on 127.0.0.1; output goes to
results/raw/profile-*/.
"""

import argparse
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import host  # noqa: E402  (sibling modules; path set just above)
import peers  # noqa: E402
import workloads  # noqa: E402

WORKLOADS = ["h1", "h2", "full", "resumed", "cors"]
# Under callgrind the proxy runs ~50x slower: a fixed, small request count per workload.
CALLGRIND_REQUESTS = 20000
CALLGRIND_CONNS_NOTE = "8 connections"


def perf_works():
    try:
        r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
                           capture_output=True, timeout=30)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_workload(name, peer, duration):
    if name == "h1":
        return workloads.measured(peer, workloads.wrk, duration)
    if name == "cors":
        return workloads.measured(peer, workloads.wrk, duration, [f"Origin: {peers.ALLOWED_ORIGIN}"])
    if name == "h2":
        return workloads.measured(peer, workloads.h2load, duration)
    if name in ("full", "resumed"):
        return workloads.measured(peer, workloads.connrate, duration, name == "resumed")
    raise ValueError(name)


def perf_profile(args, procs, workdir, backend_port, outdir):
    summary = []
    for wl in args.workloads:
        name = "proxy-cors" if wl == "cors" else "proxy"
        peer = peers.start_peer(name, args, procs, workdir, backend_port)
        workloads.wrk(peer, 1)  # warm-up
        data = os.path.join(outdir, f"{wl}.perf.data")
        rec = subprocess.Popen(
            ["taskset", "-c", host.LOAD_CORE, "perf", "record", "-e", "cpu-clock", "-F", "1999",
             "--call-graph", "dwarf,16384", "-o", data, "-p", str(peer.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            res = run_workload(wl, peer, args.duration)
        finally:
            rec.send_signal(signal.SIGINT)
            rec.wait(120)
        procs.stop(peer.proc)
        summary.append(f"{wl}: {res}")
        for sort, fname in (("symbol", "self"), ("dso", "dso")):
            rep = subprocess.run(
                ["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio",
                 "-g", "none", "--percent-limit", "0.3"], capture_output=True, text=True,
                timeout=600)
            with open(os.path.join(outdir, f"{wl}.{fname}.txt"), "w") as f:
                f.write(rep.stdout)
        rep = subprocess.run(
            ["perf", "report", "-i", data, "--children", "--sort", "symbol", "--stdio",
             "-g", "none", "--percent-limit", "2"], capture_output=True, text=True, timeout=600)
        with open(os.path.join(outdir, f"{wl}.inclusive.txt"), "w") as f:
            f.write(rep.stdout)
        if not args.keep_data:
            os.remove(data)  # hundreds of MB; the reports above are what is kept
        print(f"{wl}: {res}\n  -> {outdir}/{wl}.{{self,dso,inclusive}}.txt", flush=True)
    return summary


def start_under_callgrind(peer_name, args, procs, workdir, backend_port, out):
    """Starts `peer_name` (proxy, proxy-cors or nginx) under callgrind with instrumentation off."""
    # Instrumentation starts only after start-up and warm-up (callgrind_control -i on), so the
    # count is the steady state's: aws-lc's start-up entropy alone is ~300 M.
    valgrind = f"valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={out}"
    peers.READY_TIMEOUT_S = 120.0
    if peer_name == "nginx":
        # The same configuration as in the bench, in one process (no master), so that the
        # process under callgrind is the one doing the work. An `nginx` wrapper first on PATH
        # is what `start_peer` runs; the backend, already started, keeps the real one.
        bindir = os.path.join(workdir, "callgrind-bin")
        os.makedirs(bindir, exist_ok=True)
        real = subprocess.run(["sh", "-c", "command -v nginx"], capture_output=True, text=True,
                              check=True).stdout.strip()
        wrapper = os.path.join(bindir, "nginx")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec {valgrind} {real} -g 'master_process off;' \"$@\"\n")
        os.chmod(wrapper, 0o755)
        path = os.environ.get("PATH", "/usr/bin:/bin")
        os.environ["PATH"] = f"{bindir}:{path}"
        try:
            return peers.start_peer("nginx", args, procs, workdir, backend_port)
        finally:
            os.environ["PATH"] = path
    real_bin = args.proxy_bin
    wrapper = os.path.join(workdir, "proxy-under-callgrind")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec {valgrind} {real_bin} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    args.proxy_bin = wrapper
    try:
        return peers.start_peer(peer_name, args, procs, workdir, backend_port)
    finally:
        args.proxy_bin = real_bin


def callgrind_profile(args, procs, workdir, backend_port, outdir):
    summary = []
    for wl in args.workloads:
        if wl not in ("h1", "cors", "h2"):
            print(f"{wl}: skipped under callgrind (handshake counts: use --tool perf)")
            continue
        if args.peer == "nginx" and wl == "cors":
            print("cors: skipped for nginx (no CORS policy there)")
            continue
        name = args.peer if args.peer == "nginx" else ("proxy-cors" if wl == "cors" else "proxy")
        out = os.path.join(outdir, f"{name}-{wl}.callgrind.out")
        peer = start_under_callgrind(name, args, procs, workdir, backend_port, out)
        headers = [] if wl != "cors" else ["-H", f"Origin: {peers.ALLOWED_ORIGIN}"]
        # Warm-up: the connections and the upstream pool exist before counting starts.
        subprocess.run(["taskset", "-c", host.LOAD_CORE, "h2load", "-t1", "-c", "8", "-n", "800",
                        "--h1"] + headers + [f"https://127.0.0.1:{peer.port}/"],
                       capture_output=True, timeout=300)
        subprocess.run(["callgrind_control", "-i", "on", str(peer.proc.pid)],
                       capture_output=True, timeout=60, check=True)
        # A fixed request count: h2load -n works for both protocols.
        proto = ["--h1"] if wl in ("h1", "cors") else ["-m", "16"]
        r = subprocess.run(["taskset", "-c", host.LOAD_CORE, "h2load", "-t1", "-c", "8",
                            "-n", str(CALLGRIND_REQUESTS)] + proto + headers +
                           [f"https://127.0.0.1:{peer.port}/"], capture_output=True, text=True,
                           timeout=900)
        done = re.search(r"(\d+) succeeded", r.stdout)
        ok = int(done.group(1)) if done else 0
        procs.stop(peer.proc)  # SIGTERM: callgrind writes its output as the proxy exits
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no", out], capture_output=True,
                             text=True, timeout=600)
        with open(os.path.join(outdir, f"{name}-{wl}.callgrind.txt"), "w") as f:
            f.write(ann.stdout)
        total = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", ann.stdout)
        ir = int(total.group(1).replace(",", "")) if total else 0
        line = (f"{name} {wl}: {ok} requests, {ir / max(ok, 1):,.0f} instructions per request "
                f"(connection set-up of {CALLGRIND_CONNS_NOTE} included)")
        summary.append(line)
        print(line, flush=True)
    return summary


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--tlsload-bin")
    ap.add_argument("--workdir")
    ap.add_argument("--tool", choices=["perf", "callgrind"], default=None,
                    help="default: perf when it can sample here, else callgrind")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--peer", choices=["proxy", "nginx"], default="proxy",
                    help="what --tool callgrind counts (nginx: the bench's config, one process); "
                         "perf always profiles the proxy")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--keep-data", action="store_true", help="keep perf.data for perf report")
    ap.add_argument("--nice", type=int, default=-20 if os.geteuid() == 0 else 0)
    args, _ = ap.parse_known_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    # The proxy runs in its own work directory: a relative path would not be found there.
    args.proxy_bin = os.path.abspath(args.proxy_bin)
    if args.tlsload_bin:
        args.tlsload_bin = os.path.abspath(args.tlsload_bin)
    workloads.TOOLS["tlsload"] = args.tlsload_bin
    tool = args.tool or ("perf" if perf_works() else "callgrind")
    if args.nice:
        host.set_priority(args.nice)
    workdir = args.workdir or tempfile.mkdtemp(prefix="proxy-profile.")
    os.makedirs(f"{workdir}/logs", exist_ok=True)
    os.chmod(workdir, 0o755)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = os.path.join(HERE, "results", "raw", f"profile-{stamp}-{tool}")
    os.makedirs(outdir, exist_ok=True)
    procs = peers.Procs(workdir)
    try:
        peers.make_cert(workdir)
        backend_port = peers.start_backend(procs, workdir)
        fn = perf_profile if tool == "perf" else callgrind_profile
        summary = fn(args, procs, workdir, backend_port, outdir)
    finally:
        procs.stop_all()
    with open(os.path.join(outdir, "summary.txt"), "w") as f:
        f.write("\n".join(summary) + "\n")
    print(f"wrote {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
