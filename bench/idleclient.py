#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to 127.0.0.1:PORT, make one request
on each (so every server has parsed a request and gone back to waiting), then
hold them idle. Prints "open N" when all N got their answer, then sleeps
SECONDS and exits (closing them all).

    idleclient.py PORT PATH N SECONDS
"""
import socket
import sys
import time


def main():
    port, path, n, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # 127.0.0.x sources: more connections than one address has ephemeral ports
        s.bind((f"127.0.0.{2 + i // 20000}", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(req)
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
        socks.append(s)
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
