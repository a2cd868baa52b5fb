#!/usr/bin/env python3
"""Times RESUME of 1,000 kept messages over TCP: publish 1,000 messages to a
fresh channel of a crier started with --history-size 1000, then measure from
sending RESUME to reading the last replayed message. Usage: resume-time.py PORT"""
import socket, time, sys, statistics
port = int(sys.argv[1])
def conn():
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); return s
def readline(s, buf):
    while b"\r\n" not in buf[0]:
        buf[0] += s.recv(65536)
    line, buf[0] = buf[0].split(b"\r\n", 1)
    return line
times = []
for run in range(7):
    ch = f"r{run}"
    sub = conn(); b = [b""]
    sub.sendall(f"HELLO 3\r\nSUBSCRIBE {ch}\r\n".encode()); readline(sub, b); start = readline(sub, b).split()[1].decode()
    pub = conn(); pb = [b""]
    pub.sendall(b"".join(f"PUBLISH {ch} message number {i:05d} of the benchmark\r\n".encode() for i in range(1000)))
    for _ in range(1000): readline(pub, pb)
    c = conn(); cb = [b""]
    t0 = time.perf_counter()
    c.sendall(f"RESUME {ch} {start}\r\n".encode())
    reply = readline(c, cb)
    assert reply == b"RECOVERED 1000", reply
    # 1000 v1 lines follow
    n = 0
    while n < 1000:
        readline(c, cb); n += 1
    times.append((time.perf_counter() - t0) * 1000)
    for s in (sub, pub, c): s.close()
print("RESUME of 1,000 messages, ms:", [round(t, 2) for t in times], "median", round(statistics.median(times), 2))
