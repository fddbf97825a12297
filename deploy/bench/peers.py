"""The peers: the plain-HTTP nginx backend and each TLS terminator (nginx, HAProxy, Caddy, the
proxy and its variants, the stack floor), started on their own loopback ports from conf/ and
stopped with everything else the run started."""

import os
import re
import signal
import socket
import ssl
import subprocess
import time

import tlsclient
from host import HERE, LOAD_CORE, NICE, PROXY_CORE

PEERS = ["nginx", "haproxy", "caddy", "proxy"]
# The same terminator forwarding to the backend's UNIX socket instead of its loopback port
# (figure "unix"): peer -> its socket twin.
UNIX_PEERS = {"nginx": "nginx-unix", "proxy": "proxy-unix"}
BIG_FILE_BYTES = 100 * 1024 * 1024
ALLOWED_ORIGIN = "https://app.localhost"

# Deadlines (seconds); profile.py lengthens READY_TIMEOUT_S for peers run under callgrind.
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


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




def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def backend_socket(workdir):
    """The backend's UNIX socket (nginx creates it at start and removes it at exit)."""
    return f"{workdir}/backend/backend.sock"


def start_backend(procs, workdir):
    """Starts the plain-HTTP nginx backend on the load core; returns its port. It listens on
    backend_socket(workdir) too."""
    port = free_port()
    os.makedirs(f"{workdir}/backend/logs", exist_ok=True)
    render("backend-nginx.conf", f"{workdir}/backend/nginx.conf",
           {"workdir": workdir, "backend_port": port,
            "backend_socket": backend_socket(workdir),
            "user_line": "user root;" if os.geteuid() == 0 else ""})
    proc = procs.start("backend", NICE + ["taskset", "-c", LOAD_CORE, "nginx", "-p",
                                          f"{workdir}/backend/", "-e",
                                          f"{workdir}/backend/error.log", "-c",
                                          f"{workdir}/backend/nginx.conf"], f"{workdir}/logs")

    def ok():
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            tcp_ok = s.recv(100).startswith(b"HTTP/1.1 200")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(backend_socket(workdir))
            s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            return tcp_ok and s.recv(100).startswith(b"HTTP/1.1 200")

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
    unix = name.endswith("-unix")
    values = {"workdir": workdir, "port": port, "backend_port": backend_port,
              "confdir": f"{workdir}/{name}",
              "backend_server": (f"unix:{backend_socket(workdir)}" if unix
                                 else f"127.0.0.1:{backend_port}"),
              "user_line": "user root;" if os.geteuid() == 0 else ""}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir}
    cwd = None
    if name in ("nginx", "nginx-unix"):
        confdir = values["confdir"]
        os.makedirs(f"{confdir}/logs", exist_ok=True)
        render("nginx.conf", f"{confdir}/nginx.conf", values)
        argv = pin + ["nginx", "-p", f"{confdir}/", "-e", f"{confdir}/error.log",
                      "-c", f"{confdir}/nginx.conf"]
    elif name == "haproxy":
        render("haproxy.cfg", f"{workdir}/haproxy.cfg", values)
        argv = pin + ["haproxy", "-db", "-f", f"{workdir}/haproxy.cfg"]
    elif name == "caddy":
        render("Caddyfile", f"{workdir}/Caddyfile", values)
        env.update(GOMAXPROCS="1", XDG_DATA_HOME=f"{workdir}/caddy-data",
                   XDG_CONFIG_HOME=f"{workdir}/caddy-config")
        argv = pin + ["caddy", "run", "--config", f"{workdir}/Caddyfile", "--adapter", "caddyfile"]
    elif name in ("proxy", "proxy-unix", "proxy-cors", "proxy-baseline", "stack-floor"):
        cwd = f"{workdir}/{name}"  # an empty directory: no stray .env is picked up
        os.makedirs(cwd, exist_ok=True)
        # Access logs are off for every peer (nginx access_log off, no haproxy log, caddy's
        # default); for the proxy that means RUST_LOG=warn.
        env.update(RUST_LOG="warn")
        # profile.py's arguments have neither extra build.
        binary = {"proxy-baseline": getattr(args, "baseline_bin", None),
                  "stack-floor": getattr(args, "floor_bin", None)}.get(name, args.proxy_bin)
        argv = pin + [binary, "--listen", f"127.0.0.1:{port}",
                      "--upstream", values["backend_server"] if unix
                      else f"http://{values['backend_server']}",
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

