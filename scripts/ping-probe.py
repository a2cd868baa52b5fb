#!/usr/bin/env python3
"""How long a client waits for PONG while a server is loaded.

    scripts/ping-probe.py HOST:PORT SECONDS

One line-protocol connection: sends PING, waits for the reply, sleeps 50 ms,
again, for SECONDS; prints the count and the median, p99 and worst round
trip. Used in docs/benchmarks.md against crier-bench loads.
"""
import socket
import sys
import time

host, port = sys.argv[1].rsplit(":", 1)
seconds = float(sys.argv[2])
sock = socket.create_connection((host, int(port)))
sock.settimeout(60)
rtts, pending = [], b""
end = time.time() + seconds
while time.time() < end:
    sent = time.time()
    sock.sendall(b"PING\r\n")
    while b"\r\n" not in pending:
        pending += sock.recv(4096)
    _, pending = pending.split(b"\r\n", 1)
    rtts.append((time.time() - sent) * 1000)
    time.sleep(0.05)
rtts.sort()
print("probe n=%d p50=%.1fms p99=%.1fms max=%.1fms"
      % (len(rtts), rtts[len(rtts) // 2], rtts[int(len(rtts) * 0.99)], rtts[-1]))
