#!/usr/bin/env python3
"""What one small frame costs the kernel to send over loopback TCP: 700
frames of 80 bytes per call, as 700 writev slices or as one contiguous
buffer (the outbox's blocks, docs/architecture.md "The outbox"). Prints the
sender's system CPU per frame. Usage: scripts/writev-slices.py [ROUNDS]"""
import os
import resource
import socket
import sys

FRAMES, SIZE = 700, 80
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3000


def measure(vectored):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    if os.fork() == 0:
        # The reader: drains everything in large reads.
        conn = socket.create_connection(("127.0.0.1", port))
        buf = bytearray(1 << 20)
        while conn.recv_into(buf):
            pass
        os._exit(0)
    sender, _ = listener.accept()
    frames = [os.urandom(SIZE) for _ in range(FRAMES)]
    joined = b"".join(frames)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for _ in range(rounds):
        if vectored:
            sent = os.writev(sender.fileno(), frames)
            if sent < len(joined):
                sender.sendall(joined[sent:])
        else:
            sender.sendall(joined)
    system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    sender.close()
    os.wait()
    return system / (rounds * FRAMES) * 1e9


for name, vectored in (("700 slices per writev", True), ("one buffer per send", False)):
    print(f"{name}: {measure(vectored):.0f} ns of system CPU per {SIZE}-byte frame")
