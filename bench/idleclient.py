#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to 127.0.0.1:PORT, make one request
on each (so every server has parsed a request and gone back to waiting), then
hold them idle. Prints "open N" when all N got their answer, then sleeps
SECONDS and exits (closing them all).

    idleclient.py PORT PATH N SECONDS [NET] [together]

Connections come from 127.NET.x.2 (NET 0 by default; x changes every 20,000
connections): a run after another one does not wait for the ports the
earlier one left in TIME_WAIT. With "together", every request is sent before
any answer is read (N requests in flight at once: a slow upstream then needs
N upstream connections), and the connections close once all are answered.
"""
import socket
import sys
import time


def answer(s, i):
    """Reads one response (head and Content-Length body); exits on anything but a 200."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i}: closed before an answer")
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"connection {i}: {head.splitlines()[0]!r}")
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    while length and len(body) < length[0]:
        body += s.recv(4096)


def main():
    port, path, n, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    net = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    together = len(sys.argv) > 6 and sys.argv[6] == "together"
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.{net}.{i // 20000}.2", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(req)
        if not together:
            answer(s, i)
        socks.append(s)
    if together:
        for i, s in enumerate(socks):
            answer(s, i)
    print(f"open {n}", flush=True)
    time.sleep(seconds)
    # all still open? a server that dropped idle connections must not look cheap
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += 1 if s.recv(1) else 0
        except BlockingIOError:
            alive += 1
    print(f"alive {alive}", flush=True)


main()
