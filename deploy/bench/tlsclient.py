#!/usr/bin/env python3
"""Idle TLS connection holder for the bench's memory figure (the rate figures use tlsload/).

`hold`: opens N keep-alive TLS connections, does one request on each (so the server has set up its
HTTP state, and the proxies their upstream connection; HTTP/1.1, or HTTP/2 with `--proto h2`),
prints `ready <json>` and holds them until stdin closes or a line arrives. Prints one JSON line
when done.

Standard library only; the orchestrator (bench.py) pins this to the load-generator core.
"""

import argparse
import json
import resource
import socket
import ssl
import sys

# Per-connection I/O deadline: a server that stalls longer than this is counted as an error.
IO_TIMEOUT_S = 10.0


def client_context(alpn="http/1.1"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The bench certificate is self-signed and generated per run: encryption and the server's
    # CertificateVerify signature are still exercised, only chain building is skipped.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([alpn])
    return ctx


# HTTP/2 (RFC 9113): just enough to make one GET and leave the connection idle.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
H2_END_STREAM, H2_ACK, H2_END_HEADERS = 0x1, 0x1, 0x4


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_get(sock, authority, path):
    """One GET on stream 1 of a new HTTP/2 connection; returns the status. The server's SETTINGS
    are acknowledged, so the connection is left in the state a browser's would be."""
    # HPACK: :method GET, :scheme https (static indexes 2 and 7), :path and :authority as
    # literals without indexing (RFC 7541 §6.2.2; name indexes 4 and 1), no Huffman coding.
    block = bytes([0x82, 0x87])
    for index, value in ((4, path.encode()), (1, authority.encode())):
        if len(value) > 126:
            raise ValueError("header value too long for this client")
        block += bytes([index, len(value)]) + value
    sock.sendall(H2_PREFACE + h2_frame(H2_SETTINGS, 0, 0)
                 + h2_frame(H2_HEADERS, H2_END_STREAM | H2_END_HEADERS, 1, block))
    buf, status, done = b"", None, False
    while not done:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("eof before the HTTP/2 response ended")
            buf += chunk
        length = int.from_bytes(buf[:3], "big")
        kind, flags = buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload, buf = buf[9:9 + length], buf[9 + length:]
        if kind == H2_SETTINGS and not flags & H2_ACK:
            sock.sendall(h2_frame(H2_SETTINGS, H2_ACK, 0))
        elif kind in (H2_RST_STREAM, H2_GOAWAY):
            raise ConnectionError(f"HTTP/2 frame type {kind} from the server")
        elif kind == H2_HEADERS and stream == 1:
            if status is None:
                # Every server here sends `:status 200` as static index 8, first in the block
                # (skipping a PADDED/PRIORITY prefix is not needed: none of them sends one).
                status = 200 if payload[:1] == b"\x88" else -1
            done = bool(flags & H2_END_STREAM)
        elif kind == H2_DATA and stream == 1:
            done = bool(flags & H2_END_STREAM)
    return status


def read_response(sock, keep_alive):
    """Reads one HTTP/1.1 response; returns (status, body_len). Raises on a malformed answer."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("eof before response headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is not None:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("eof inside response body")
            body += chunk
        return status, len(body)
    if keep_alive:
        raise ConnectionError("keep-alive response without content-length")
    while True:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        body += chunk
    return status, len(body)


def cmd_hold(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = client_context(args.proto)
    held, errors, first_error = [], 0, None
    req = f"GET {args.path} HTTP/1.1\r\nHost: localhost:{args.port}\r\n\r\n".encode()
    for _ in range(args.n):
        try:
            raw = socket.create_connection((args.host, args.port), timeout=IO_TIMEOUT_S)
            if args.stage == "tcp":
                held.append(raw)
                continue
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
            if args.stage == "request" and args.proto == "h2":
                if tls.selected_alpn_protocol() != "h2":
                    raise ConnectionError(f"ALPN {tls.selected_alpn_protocol()}, not h2")
                status = h2_get(tls, f"localhost:{args.port}", args.path)
                if status != 200:
                    raise ConnectionError(f"status {status}")
            elif args.stage == "request":
                tls.sendall(req)
                status, _ = read_response(tls, keep_alive=True)
                if status != 200:
                    raise ConnectionError(f"status {status}")
            held.append(tls)
        except (OSError, ValueError, IndexError) as e:
            errors += 1
            first_error = first_error or repr(e)
    print("ready " + json.dumps({"held": len(held), "errors": errors}), flush=True)
    sys.stdin.readline()
    # Every held connection must still be open: a server that dropped idle connections early
    # would otherwise look cheaper per connection than it is.
    alive = 0
    for tls in held:
        try:
            tls.setblocking(False)
            try:
                data = tls.recv(1)
                dropped = data == b""
            except (ssl.SSLWantReadError, BlockingIOError):
                dropped = False
            alive += 0 if dropped else 1
        except OSError:
            pass
        tls.close()
    print(json.dumps({"held": len(held), "alive": alive, "errors": errors,
                      "first_error": first_error}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold", help="open N idle keep-alive TLS connections and hold them")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--path", default="/")
    h.add_argument("-n", type=int, default=1000)
    h.add_argument("--stage", choices=["tcp", "tls", "request"], default="request",
                   help="how far each connection goes before it idles (default: one request)")
    h.add_argument("--proto", choices=["http/1.1", "h2"], default="http/1.1",
                   help="the protocol of that request (ALPN), and so of the idle connection")
    args = ap.parse_args()
    {"hold": cmd_hold}[args.cmd](args)


if __name__ == "__main__":
    main()
