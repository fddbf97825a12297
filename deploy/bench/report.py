"""The report: the markdown table of medians, spreads and same-round ratios to nginx, the parity
check, the run's notes, and the files written (RESULTS.md, or results/raw/RESULTS-quick.md in
quick mode, and the raw per-round JSON)."""

import datetime
import json
import os
import platform
import statistics

from host import HERE, LOAD_CORE, PROXY_CORE, REPO, run, version_of
from workloads import H2_CONNS, H2_STREAMS

FIGURES = [
    # key (workload.field), label, format
    ("h1.rps", "HTTP/1.1 keep-alive req/s (64 conns)", "{:,.0f}"),
    ("h1.rps_per_core", "  … per busy proxy core", "{:,.0f}"),
    ("h1.p50_ms", "  p50 latency ms", "{:.2f}"),
    ("h1.p99_ms", "  p99 latency ms", "{:.2f}"),
    ("h1.cpu", "  proxy CPU (cores)", "{:.2f}"),
    ("h1.user_us", "  proxy user CPU µs per request", "{:.1f}"),
    ("h1.kernel_us", "  proxy kernel CPU µs per request", "{:.1f}"),
    ("sys.h1_per_req", "  proxy system calls per request", "{:.2f}"),
    ("h1.segs_per_req", "  TCP segments per request (whole host; 4 is the floor)", "{:.2f}"),
    ("h2.rps", f"HTTP/2 req/s ({H2_CONNS} conns × {H2_STREAMS} streams)", "{:,.0f}"),
    ("h2.rps_per_core", "  … per busy proxy core", "{:,.0f}"),
    ("h2.cpu", "  proxy CPU (cores)", "{:.2f}"),
    ("h2.user_us", "  proxy user CPU µs per request", "{:.1f}"),
    ("h2.kernel_us", "  proxy kernel CPU µs per request", "{:.1f}"),
    ("sys.h2_per_req", "  proxy system calls per request", "{:.2f}"),
    ("h2.segs_per_req", "  TCP segments per request (whole host)", "{:.2f}"),
    ("full.rps", "New TLS 1.3 conns/s, full handshake", "{:,.0f}"),
    ("full.rps_per_core", "  … per busy proxy core", "{:,.0f}"),
    ("full.cpu", "  proxy CPU (cores)", "{:.2f}"),
    ("resumed.rps", "New TLS 1.3 conns/s, resumed", "{:,.0f}"),
    ("resumed.rps_per_core", "  … per busy proxy core", "{:,.0f}"),
    ("resumed.resumed_frac", "  share actually resumed", "{:.0%}"),
    ("resumed.cpu", "  proxy CPU (cores)", "{:.2f}"),
    ("download.mbps", "100 MB download MB/s", "{:,.0f}"),
    ("download.mbps_per_core", "  … MB/s per busy proxy core", "{:,.0f}"),
    ("download.cpu", "  proxy CPU (cores)", "{:.2f}"),
    ("mem.rss_idle_mb", "RSS idle MB (fresh process, after one request)", "{:.1f}"),
    ("mem.rss_conns_mb", "RSS with idle TLS conns MB", "{:.1f}"),
    ("mem.kb_per_conn", "KB per idle TLS keep-alive conn", "{:.1f}"),
    ("mem2.kb_per_conn", "KB per idle HTTP/2 TLS conn (browsers' protocol)", "{:.1f}"),
    ("cors.rps", "HTTP/1.1 req/s with an allowed Origin", "{:,.0f}"),
    ("cors.rps_per_core", "  … per busy proxy core", "{:,.0f}"),
    ("cors.p99_ms", "  p99 latency ms", "{:.2f}"),
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
    for key, _, _ in FIGURES:
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


# The performance goal (docs/performance.md): at least nginx's requests per busy core over
# HTTP/1.1 and over HTTP/2, as the median of the same-round ratios.
PARITY = [
    ("h1.rps_per_core", "HTTP/1.1 req/s per busy core"),
    ("h2.rps_per_core", "HTTP/2 req/s per busy core"),
]


def parity_lines(table):
    """The parity check for `proxy`: its median same-round ratio to nginx per figure."""
    rows = []
    for key, label in PARITY:
        r = table.get(key, {}).get("proxy")
        if not r or r[3] is None:
            continue
        # A third decimal where two would show ×1.00 next to a "no" (×0.997).
        shown = f"{r[3]:.2f}" if round(r[3], 2) != 1.0 else f"{r[3]:.3f}"
        rows.append(f"| {label} | ×{shown} | {'yes' if r[3] >= 1.0 else 'no'} |")
    if not rows:
        return []
    return ["", "## Parity with nginx (`proxy`; median of the same-round ratios)", "",
            "| Figure | Ratio to nginx | ≥ ×1.0 |", "|---|---|---|"] + rows


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


def unix_note(results):
    """Each terminator forwarding over the backend's UNIX socket against itself over loopback
    TCP: same-round ratios of req/s per busy core, and the kernel CPU per request of both."""
    parts = []
    for tcp_peer, unix_peer in (("proxy", "proxy-unix"), ("nginx", "nginx-unix")):
        if unix_peer not in results or tcp_peer not in results:
            continue
        for fig in ("h1", "h2"):
            pairs = [(u[fig], t[fig]) for u, t in zip(results[unix_peer], results[tcp_peer])
                     if u.get(fig, {}).get("rps_per_core") and t.get(fig, {}).get("rps_per_core")]
            if not pairs:
                continue
            ratio = [u["rps_per_core"] / t["rps_per_core"] for u, t in pairs]
            text = f"{unix_peer} {fig} ×{statistics.median(ratio):.3f}"
            if len(ratio) > 1:
                text += f" [×{min(ratio):.2f}–×{max(ratio):.2f}]"
            kernel = [(u["kernel_us"], t["kernel_us"]) for u, t in pairs
                      if "kernel_us" in u and "kernel_us" in t]
            if kernel:
                text += (f" (kernel µs per request {statistics.median(k[0] for k in kernel):.2f}"
                         f" vs {statistics.median(k[1] for k in kernel):.2f})")
            parts.append(text)
    return ("UNIX-socket upstream: each terminator forwarding to the backend's socket against "
            "itself over loopback TCP, req/s per busy core, median of same-round ratios: "
            + ("; ".join(parts) if parts else "no figure measured both"))


def render_report(meta, peers, table, errors, failures, notes):
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
    for key, label, fmt in FIGURES:
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
    lines += parity_lines(table)
    if notes or failures:
        lines += ["", "## Notes and failures", ""]
        lines += [f"- {n}" for n in notes]
        lines += [f"- FAILED: {f}" for f in failures]
    lines += ["", "Configs: `deploy/bench/conf/`; raw per-round data: "
              "`deploy/bench/results/raw/` (not committed). Re-run: `deploy/bench/run.sh`.", ""]
    return "\n".join(lines)


def run_notes(results, peers_run, baseline):
    """Notes drawn from the whole run: other load on the proxy's core, the cost of CORS, the
    proxy against its baseline build, resumption that did not happen."""
    notes = []
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
    if baseline:
        notes.append(baseline_note(results))
    if "proxy-unix" in results or "nginx-unix" in results:
        notes.append(unix_note(results))
    for name in peers_run:
        frac = [r.get("resumed", {}).get("resumed_frac") for r in results[name]]
        frac = [f for f in frac if f is not None]
        if frac and min(frac) < 0.9:
            notes.append(f"{name}: only {min(frac):.0%} of 'resumed' connections resumed: "
                         "that figure is mostly full handshakes")
    return notes


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


MICRO_HEADER = ("\n## CORS policy decision (micro-benchmark, `cargo bench -p proxy --bench "
                "cors_decision`)\n\n```\n")


def write(meta, peers, results, errors, failures, notes, micro, out):
    """Writes the raw per-round JSON to results/raw/ and the markdown report to `out` (default:
    RESULTS.md for a full run, results/raw/RESULTS-quick.md for --quick); returns the path."""
    table = summarise(results, peers, meta["rounds"])
    report = render_report(meta, peers, table, errors, failures, notes)
    if micro:
        report += MICRO_HEADER + micro + "\n```\n"
    rawdir = os.path.join(HERE, "results", "raw")
    os.makedirs(rawdir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(os.path.join(rawdir, f"{stamp}-{meta['mode']}.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "errors": errors, "failures": failures,
                   "notes": notes, "micro": micro}, f, indent=1)
    out = out or (os.path.join(rawdir, "RESULTS-quick.md") if meta["mode"] == "quick"
                  else os.path.join(HERE, "RESULTS.md"))
    with open(out, "w") as f:
        f.write(report)
    print(report)
    return out


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
                           raw["notes"])
    if raw.get("micro"):
        report += MICRO_HEADER + raw["micro"] + "\n```\n"
    with open(out, "w") as f:
        f.write(report)
    print(report)
    return 0
