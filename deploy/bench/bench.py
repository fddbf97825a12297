#!/usr/bin/env python3
"""Side-by-side TLS terminator benchmark: nginx, HAProxy, Caddy and our proxy.

The entry point: parses the arguments, starts the backend and the peers (peers.py), runs the
workloads (workloads.py) interleaved peer by peer for several rounds, and hands the readings to
the report (report.py), which writes a markdown table of medians, spreads and same-round ratios to
nginx. Usually started through run.sh, which installs the tools and builds the proxy first.
Standard library only.

Exit status: 0 when every step ran and no request failed; 1 when any request failed or any step
broke (so CI's --quick run catches a rotten harness or a broken proxy); 64 for bad arguments.
"""

import argparse
import atexit
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback

import report
from host import HERE, NICE, PROXY_CORE, REPO, run, set_priority
from peers import (ALLOWED_ORIGIN, PEERS, UNIX_PEERS, Procs, make_big_file, make_cert,
                   start_backend, start_peer)
from workloads import (SYSCALL_RUN_S, TOOLS, connrate, download, h2load, measured, memory,
                       perf_syscalls_usable, syscalls, wrk)

EX_USAGE = 64


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
    ap.add_argument("--figures", default="h1,h2,sys,full,resumed,download,mem,mem2,cors,unix",
                    help="comma-separated subset of workloads (unix: nginx and the proxy also "
                         "forward to the backend's UNIX socket, as nginx-unix and proxy-unix, "
                         "in the h1, h2 and sys figures)")
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


def main(argv):
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code else 0
    if args.from_raw:
        return report.rerender(args.from_raw, args.out or os.path.join(HERE, "RESULTS.md"))
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
    if "unix" in args.figures:
        # Each right after its TCP twin, so the two run in neighbouring slots of every round.
        for tcp_peer, unix_peer in UNIX_PEERS.items():
            if tcp_peer in measured_peers:
                measured_peers.insert(measured_peers.index(tcp_peer) + 1, unix_peer)
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
        # are the same crates' as the proxy's; the socket twins differ from their TCP peers
        # only on the upstream side, which the request figures show.
        terminators = [p for p in measured_peers
                       if p != "stack-floor" and p not in UNIX_PEERS.values()]
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
        notes += report.run_notes(results, peers_run, args.baseline_bin)
    except Exception as e:  # noqa: BLE001  (report, clean up, exit non-zero)
        traceback.print_exc()
        failures.append(f"harness: {e!r}")
    finally:
        procs.stop_all()

    meta = report.machine_meta(args)
    out = report.write(meta, peers_run, results, errors, failures, notes, micro, args.out)
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