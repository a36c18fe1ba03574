#!/usr/bin/env python3
"""Clients that pipeline without reading, reconnecting whenever fibd hangs up on them, while
one ordinary client asks GET /current every 100 ms. Measures docs/SECURITY.md's known gap 8:
tiny_http parses such clients' requests faster than fibd's one acceptor can drop them.

    bench/pipeline_flood.py PORT CLIENTS SECONDS

Prints one line: connections made, connections that ended in an error (fibd hung up), MB
sent, and how many of the ordinary client's requests were answered 200, with their median
and slowest. Watch fibd's resident memory beside it (/proc/PID/status, VmRSS). Only for a
fibd of your own on 127.0.0.1.
"""
import select
import socket
import sys
import threading
import time

port, clients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
burst = b"GET /fib?n=187 HTTP/1.1\r\nHost: t\r\n\r\n" * 64
deadline = time.time() + seconds
counts = {"connections": 0, "ended": 0, "bytes": 0}
lock = threading.Lock()


def flood():
    while time.time() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            time.sleep(0.05)
            continue
        with lock:
            counts["connections"] += 1
        s.setblocking(False)
        pending = burst
        try:
            while time.time() < deadline:
                _, writable, _ = select.select([], [s], [], 0.5)
                if not writable:
                    continue
                try:
                    sent = s.send(pending)
                except BlockingIOError:
                    continue
                # Whole requests only: what a partial send left is sent before the next burst.
                pending = pending[sent:] or burst
                with lock:
                    counts["bytes"] += sent
        except (ConnectionError, OSError):
            with lock:
                counts["ended"] += 1
        finally:
            s.close()


threads = [threading.Thread(target=flood, daemon=True) for _ in range(clients)]
for t in threads:
    t.start()
answered = []
asked = 0
while time.time() < deadline:
    asked += 1
    started = time.time()
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"GET /current HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := c.recv(4096):
            reply += chunk
        c.close()
        if reply.startswith(b"HTTP/1.1 200"):
            answered.append(time.time() - started)
    except OSError:
        pass
    time.sleep(0.1)
for t in threads:
    t.join(timeout=3)
answered.sort()
median = answered[len(answered) // 2] * 1e3 if answered else float("nan")
slowest = answered[-1] * 1e3 if answered else float("nan")
print(
    f"clients={clients} connections={counts['connections']} ended={counts['ended']} "
    f"sent={counts['bytes'] / 1e6:.0f}MB ordinary={len(answered)}/{asked} answered "
    f"median={median:.1f}ms slowest={slowest:.1f}ms"
)
