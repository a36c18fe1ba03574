#!/usr/bin/env python3
"""Open N keep-alive connections to a server, make one request on each, then hold them
all open and idle for a while: the 5,000-idle-connection memory case of scripts/bench.sh.

Each connection sends one GET (default /healthz) and reads the whole answer before going
idle, so the count printed is of connections the server really took on, not merely ones
the kernel queued in its accept backlog. Bounded: N connections, a fixed hold time, a
per-socket timeout; everything is closed on the way out.

Prints one line: IDLE opened=N answered=N still_open=N seconds=S
"""
import argparse
import resource
import select
import socket
import sys
import time


def read_answer(sock):
    """Reads one HTTP/1.1 answer with a Content-Length body; returns the status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the headers ended")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the body ended")
        rest += chunk
    return status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold them idle")
    ap.add_argument("--path", default="/healthz")
    ap.add_argument("--ready-file", help="touched once all connections are open and idle")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("idle_conns.py only targets loopback")

    # Every socket is a file descriptor; raise the soft limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        if min(want, hard) < want:
            sys.exit(f"ulimit -n hard limit {hard} is below {want}")

    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n\r\n").encode()
    socks, answered = [], 0
    try:
        for _ in range(args.count):
            s = socket.create_connection((args.host, args.port), timeout=10)
            socks.append(s)
            s.sendall(request)
            if read_answer(s) == 200:
                answered += 1
        if args.ready_file:
            open(args.ready_file, "w").close()
        time.sleep(args.hold)
        # A socket the server has closed polls readable and reads b"" (EOF). poll, not
        # select: descriptors past 1024 are out of select's range.
        poller = select.poll()
        for s in socks:
            poller.register(s, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(0)}
        still_open = 0
        for s in socks:
            if s.fileno() not in readable:
                still_open += 1
                continue
            s.setblocking(False)
            try:
                if s.recv(1):
                    still_open += 1
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        print(f"IDLE opened={len(socks)} answered={answered} still_open={still_open} "
              f"seconds={args.hold}")
    except Exception as e:  # report how far we got; the caller records it
        print(f"IDLE opened={len(socks)} answered={answered} still_open=0 "
              f"seconds=0 error={type(e).__name__}:{e}".replace("\n", " "))
        return 1
    finally:
        for s in socks:
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
