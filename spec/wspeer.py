#!/usr/bin/python3
"""WebSocket peers for the specs and the benchmark (python3-websockets from Debian).

    wspeer.py server PORT            an echo server on 127.0.0.1:PORT (an upstream)
    wspeer.py client URL SCENARIO [ARG...]

The server echoes every message; a text message "close:CODE" makes it close
with CODE, "push:N[:SIZE]" makes it send N messages (of SIZE more bytes), "headers" answers with the
request's headers as JSON. It prints "ready" once it listens and stops by
itself after 600 s.

A client plays one scenario (wss:// URLs trust the CA file in WSPEER_CA) and prints one JSON object with what happened
(messages received, the close code and reason, errors). Scenarios that
break the protocol on purpose (unmasked frames, invalid UTF-8) speak raw
frames over a socket: the websockets library would refuse to. Every scenario
is bounded in messages and in time.
"""
import asyncio
import base64
import json
import os
import random
import socket
import struct
import sys
import time

import websockets

out = {}


def report():
    print(json.dumps(out), flush=True)


# ---- the upstream ----

async def serve(port):
    async def handler(ws, path=None):
        try:
            async for msg in ws:
                if isinstance(msg, str) and msg.startswith("close:"):
                    await ws.close(int(msg[6:]), "asked")
                    return
                if isinstance(msg, str) and msg.startswith("push:"):
                    n, _, size = msg[5:].partition(":")
                    pad = "p" * int(size or 0)
                    for i in range(int(n)):
                        await ws.send("push %d %s" % (i, pad))
                    continue
                if msg == "headers":
                    await ws.send(json.dumps(dict(ws.request_headers.raw_items())))
                    continue
                await ws.send(msg)
        except websockets.ConnectionClosed:
            pass

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None, ping_interval=None,
                                compression=None, max_queue=None):
        print("ready", flush=True)
        await asyncio.sleep(600)


# ---- raw frames (protocol violations on purpose) ----

def raw_connect(url, extra=b""):
    hostport, _, path = url[len("ws://"):].partition("/")
    host, _, port = hostport.partition(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /" + path.encode() + b" HTTP/1.1\r\nHost: " + hostport.encode() +
              b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\n" + extra + b"\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise RuntimeError("closed during the handshake: %r" % buf)
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    out["status"] = int(head.split(b" ")[1])
    out["head"] = head.decode("latin-1") + "\r\n"
    if out["status"] != 101:
        raise RuntimeError("status %d" % out["status"])
    return s, rest


def frame(opcode, payload, fin=True, mask=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        h = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        h = struct.pack("!BBH", b0, m | 126, n)
    else:
        h = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return h + payload
    key = os.urandom(4)
    return h + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(s, buf):
    """One frame from the server: (opcode, payload, rest), or (None, None, b"") at EOF."""
    while True:
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(buf) >= 4:
                    n = struct.unpack("!H", buf[2:4])[0]
                    at = 4
                else:
                    n = None
            elif n == 127:
                if len(buf) >= 10:
                    n = struct.unpack("!Q", buf[2:10])[0]
                    at = 10
                else:
                    n = None
            if n is not None and len(buf) >= at + n:
                return buf[0] & 0x0F, buf[at:at + n], buf[at + n:]
        d = s.recv(65536)
        if not d:
            return None, None, b""
        buf += d


def raw_close_after(s, rest):
    """Reads frames until a close frame or EOF; records its code."""
    deadline = time.monotonic() + 10
    buf = rest
    while time.monotonic() < deadline:
        op, payload, buf = read_frame(s, buf)
        if op is None:
            out["eof"] = True
            return
        if op == 8:
            out["close_code"] = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            out["close_reason"] = payload[2:].decode("utf-8", "replace")
            # the server closes the TCP connection after the close frame
            s.settimeout(5)
            try:
                out["eof"] = s.recv(1) == b""
            except OSError:
                out["eof"] = True
            return
        out.setdefault("frames", []).append([op, payload.decode("latin-1")])


# ---- scenarios with the websockets client ----

async def closing(ws):
    try:
        await asyncio.wait_for(ws.wait_closed(), 10)
    except asyncio.TimeoutError:
        out["close_timeout"] = True
    out["close_code"] = ws.close_code
    out["close_reason"] = ws.close_reason


async def client(url, scenario, args):
    kw = dict(max_size=None, ping_interval=None, compression=None, close_timeout=5, open_timeout=10)
    if url.startswith("wss://"):
        import ssl
        kw["ssl"] = ssl.create_default_context(cafile=os.environ.get("WSPEER_CA"))
    if scenario == "echo":
        async with websockets.connect(url, **kw) as ws:
            out["headers"] = dict(ws.response_headers.raw_items())
            got = []
            for m in ["hello", b"\x00\x01\x02", "h\u00e9llo \u2603", ""]:
                await ws.send(m)
                r = await asyncio.wait_for(ws.recv(), 10)
                got.append(r if isinstance(r, str) else "bin:" + r.hex())
            out["got"] = got
            await ws.close(1000, "done")
        out["close_code"] = ws.close_code
    elif scenario == "fragmented":
        async with websockets.connect(url, **kw) as ws:
            await ws.send(iter(["frag", "men", "ted"]))
            await ws.send(iter([b"\x01", b"\x02\x03"]))
            a = await asyncio.wait_for(ws.recv(), 10)
            b = await asyncio.wait_for(ws.recv(), 10)
            out["got"] = [a, "bin:" + b.hex()]
    elif scenario == "ping":
        async with websockets.connect(url, **kw) as ws:
            waiter = await ws.ping(b"abc")
            await asyncio.wait_for(waiter, 10)
            out["pong"] = True
            await ws.send("after ping")
            out["got"] = [await asyncio.wait_for(ws.recv(), 10)]
    elif scenario == "send":
        # sends each ARG as a text message, then reads until closed
        async with websockets.connect(url, **kw) as ws:
            got = []
            for m in args:
                await ws.send(m)
            try:
                while True:
                    got.append(await asyncio.wait_for(ws.recv(), 10))
            except websockets.ConnectionClosed:
                pass
            out["got"] = got
        await closing(ws)
    elif scenario == "big":
        # one binary message of ARG bytes
        async with websockets.connect(url, **kw) as ws:
            await ws.send(b"x" * int(args[0]))
            try:
                r = await asyncio.wait_for(ws.recv(), 10)
                out["got_len"] = len(r)
            except websockets.ConnectionClosed:
                pass
        await closing(ws)
    elif scenario == "vanish":
        # sends a message, then drops the TCP connection without a close frame
        ws = await websockets.connect(url, **kw)
        await ws.send(args[0] if args else "bye")
        await asyncio.sleep(0.2)
        ws.transport.abort()
        out["vanished"] = True
    elif scenario == "slow_reader":
        # asks the server for ARG pushes, reads none for a while, then all of them
        async with websockets.connect(url, max_size=None, ping_interval=None, max_queue=1, read_limit=2 ** 12,
                                      compression=None) as ws:
            ws.transport.pause_reading()
            await ws.send("push:%s:%s" % (args[0], args[2] if len(args) > 2 else 0))
            await asyncio.sleep(float(args[1]))
            ws.transport.resume_reading()
            n = 0
            for _ in range(int(args[0])):
                await asyncio.wait_for(ws.recv(), 20)
                n += 1
            out["got_count"] = n
    elif scenario == "hold":
        await hold(url, int(args[0]), float(args[1]), float(args[2]), kw)
    elif scenario == "chaos":
        await chaos(url, int(args[0]), int(args[1]), kw)
    elif scenario == "idle":
        await idle(url, int(args[0]), float(args[1]), args[2] if len(args) > 2 else None)
    elif scenario == "echo_rate":
        await echo_rate(url, int(args[0]), float(args[1]), int(args[2]) if len(args) > 2 else 16, kw)
    else:
        raise SystemExit("unknown scenario " + scenario)


async def hold(url, n, seconds, every, kw):
    """n connections each sending a message every `every` s for `seconds` and checking each echo."""
    out.update(sent=0, received=0, mismatched=0, errors=[], closed=0)

    async def one(i):
        try:
            async with websockets.connect(url, **kw) as ws:
                end = time.monotonic() + seconds
                k = 0
                while time.monotonic() < end:
                    msg = "c%d-m%d" % (i, k)
                    await ws.send(msg)
                    out["sent"] += 1
                    r = await asyncio.wait_for(ws.recv(), 10)
                    out["received"] += 1
                    if r != msg:
                        out["mismatched"] += 1
                    k += 1
                    await asyncio.sleep(every)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none hidden
            out["errors"].append("%d: %s: %s" % (i, type(e).__name__, e))
            out["closed"] += 1

    await asyncio.gather(*(one(i) for i in range(n)))


async def chaos(url, total, parallel, kw):
    """total tunnels, parallel at a time, each ended at random: clean close, abort, or mid-message abort."""
    rnd = random.Random(int(os.environ.get("WSPEER_SEED", "1")))
    out.update(opened=0, clean=0, aborted=0, failed=0)
    sem = asyncio.Semaphore(parallel)

    async def one(i):
        async with sem:
            try:
                ws = await websockets.connect(url, **kw)
            except Exception:  # noqa: BLE001
                out["failed"] += 1
                return
            out["opened"] += 1
            try:
                for _ in range(rnd.randint(0, 3)):
                    await ws.send("x" * rnd.randint(1, 3000))
                    if rnd.random() < 0.5:
                        await asyncio.wait_for(ws.recv(), 5)
                how = rnd.random()
                if how < 0.4:
                    await ws.close()
                    out["clean"] += 1
                else:
                    if how < 0.7:
                        # half a frame, then the socket goes
                        ws.transport.write(b"\x81\xfe\x10\x00abcd" + b"y" * 100)
                    ws.transport.abort()
                    out["aborted"] += 1
            except Exception:  # noqa: BLE001
                ws.transport.abort()
                out["aborted"] += 1

    await asyncio.gather(*(one(i) for i in range(total)))


async def idle(url, n, seconds, pidfile):
    """Opens n connections (raw sockets: a handshake each), holds them idle `seconds`, closes them."""
    host, _, port = url[len("ws://"):].partition("/")[0].partition(":")
    path = url[len("ws://"):].partition("/")[2]
    socks = []
    t0 = time.monotonic()
    for i in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16))
        s.sendall(b"GET /" + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                  b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        socks.append(s)
    ok = 0
    for s in socks:
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                break
            buf += d
        ok += buf.startswith(b"HTTP/1.1 101")
    out["open"] = ok
    out["open_s"] = round(time.monotonic() - t0, 3)
    print(json.dumps({"open": ok}), flush=True)  # the benchmark samples RSS now
    if pidfile:
        with open(pidfile, "w") as f:
            f.write("open %d\n" % ok)
    await asyncio.sleep(seconds)
    for s in socks:
        s.close()


async def echo_rate(url, conns, seconds, size, kw):
    """conns connections, each a ping-pong loop of `size`-byte messages for `seconds`: messages/s."""
    msg = "m" * size
    counts = [0] * conns

    async def one(i):
        async with websockets.connect(url, **kw) as ws:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await ws.send(msg)
                await ws.recv()
                counts[i] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(conns)))
    out["messages"] = sum(counts)
    out["seconds"] = round(time.monotonic() - t0, 3)
    out["rate"] = round(sum(counts) / (time.monotonic() - t0), 1)


def raw_scenario(url, scenario, args):
    if scenario == "unmasked":
        s, rest = raw_connect(url)
        s.sendall(frame(1, b"not masked", mask=False))
        raw_close_after(s, rest)
    elif scenario == "bad_utf8":
        s, rest = raw_connect(url)
        s.sendall(frame(1, b"ok \xff\xfe bad"))
        raw_close_after(s, rest)
    elif scenario == "bad_utf8_split":
        # a valid character split across two fragments is fine; a truncated one at the end is not
        s, rest = raw_connect(url)
        s.sendall(frame(1, b"caf\xc3", fin=False) + frame(0, b"\xa9"))
        op, payload, rest = read_frame(s, rest)
        out["echo"] = payload.decode("utf-8") if op == 1 else None
        s.sendall(frame(1, b"caf\xc3"))
        raw_close_after(s, rest)
    elif scenario == "ping_between_fragments":
        s, rest = raw_connect(url)
        s.sendall(frame(1, b"one ", fin=False) + frame(9, b"p!") + frame(0, b"two"))
        op1, p1, rest = read_frame(s, rest)
        op2, p2, rest = read_frame(s, rest)
        out["frames"] = [[op1, p1.decode("latin-1")], [op2, p2.decode("latin-1")]]
        s.sendall(frame(8, struct.pack("!H", 1000)))
        raw_close_after(s, rest)
    elif scenario == "bad_continuation":
        s, rest = raw_connect(url)
        s.sendall(frame(0, b"nothing to continue"))
        raw_close_after(s, rest)
    elif scenario == "big_frame":
        # a frame head announcing ARG bytes: refused from the head (1009), before the payload
        s, rest = raw_connect(url)
        n = int(args[0])
        s.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, n) + os.urandom(4) + b"z" * 10)
        raw_close_after(s, rest)
    elif scenario == "bad_close_code":
        s, rest = raw_connect(url)
        s.sendall(frame(8, struct.pack("!H", 1005)))
        raw_close_after(s, rest)
    elif scenario == "close_echo":
        s, rest = raw_connect(url)
        s.sendall(frame(8, struct.pack("!H", 4000) + b"bye"))
        raw_close_after(s, rest)
    elif scenario == "handshake":
        # the handshake only, with extra header lines from ARG ("Name: value" each)
        extra = b"".join(a.encode() + b"\r\n" for a in args)
        s, rest = raw_connect(url, extra)
        out["rest"] = rest.decode("latin-1")
    else:
        return False
    return True


def main():
    if sys.argv[1] == "server":
        asyncio.run(serve(int(sys.argv[2])))
        return
    url, scenario, args = sys.argv[2], sys.argv[3], sys.argv[4:]
    out["scenario"] = scenario
    try:
        if not raw_scenario(url, scenario, args):
            asyncio.run(asyncio.wait_for(client(url, scenario, args), 300))
    except Exception as e:  # noqa: BLE001 - reported to the spec, which decides
        out["error"] = "%s: %s" % (type(e).__name__, e)
        if isinstance(e, websockets.ConnectionClosed):
            out["close_code"] = e.code
            out["close_reason"] = e.reason
        if isinstance(e, websockets.InvalidStatusCode):
            out["status"] = e.status_code
    report()


if __name__ == "__main__":
    main()
