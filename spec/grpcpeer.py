#!/usr/bin/python3
"""gRPC peers for the specs (python3-grpcio from Debian), with generic
handlers: messages are raw bytes, so no generated code is needed.

    grpcpeer.py server PORT [max_age_ms]
        serves test.Echo on 127.0.0.1:PORT until killed; max_age_ms makes the
        server send GOAWAY to every connection that old (grpc.max_connection_age_ms).
        Methods:
          Unary         echoes the request; "fail:N:msg" aborts with status N,
                        "sleep:MS" sleeps first, "timeout?" answers the
                        grpc-timeout the server saw (in ms), "big:N" answers N bytes
          ServerStream  "COUNT:SIZE" -> COUNT messages of SIZE bytes
          Watch         "COUNT:MS" -> COUNT messages, each MS after the previous one
          ClientStream  -> the number of messages and bytes received, "n:bytes"
          Bidi          echoes every message as it comes; "stop" ends the call
        It counts calls in flight and writes the maximum to stderr at exit.

    grpcpeer.py client PORT SCENARIO [ARG]
        plays a scenario against 127.0.0.1:PORT (through a gateway) and prints
        one JSON object: statuses (gRPC code names), details, messages, times.
"""
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def serve(port, max_age_ms=None):
    inflight = {"now": 0, "max": 0}
    lock = threading.Lock()

    def track(fn):
        def wrapped(*a):
            with lock:
                inflight["now"] += 1
                inflight["max"] = max(inflight["max"], inflight["now"])
            try:
                return fn(*a)
            finally:
                with lock:
                    inflight["now"] -= 1
        return wrapped

    def unary(req, ctx):
        if req.startswith(b"fail:"):
            _, code, msg = req.decode().split(":", 2)
            ctx.abort(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == int(code)).value), msg)
        if req.startswith(b"sleep:"):
            time.sleep(int(req[6:]) / 1000)
        if req == b"timeout?":
            left = ctx.time_remaining()
            return str(int(left * 1000) if left is not None else -1).encode()
        if req.startswith(b"big:"):
            return b"x" * int(req[4:])
        return req

    def server_stream(req, ctx):
        count, size = (int(x) for x in req.decode().split(":"))
        for i in range(count):
            yield bytes([65 + i % 26]) * size

    def watch(req, ctx):
        count, gap = (int(x) for x in req.decode().split(":"))
        for i in range(count):
            yield ("w%d" % i).encode()
            time.sleep(gap / 1000)

    def client_stream(it, ctx):
        n = total = 0
        for m in it:
            n += 1
            total += len(m)
        return ("%d:%d" % (n, total)).encode()

    def bidi(it, ctx):
        for m in it:
            if m == b"stop":
                return
            yield m

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(track(unary)),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Watch": grpc.unary_stream_rpc_method_handler(watch),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    if max_age_ms:
        opts += [("grpc.max_connection_age_ms", max_age_ms), ("grpc.max_connection_age_grace_ms", 5000)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), handlers=[handler], options=opts,
                         maximum_concurrent_rpcs=2000)
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("serving", flush=True)
    try:
        server.wait_for_termination()
    finally:
        sys.stderr.write("max in flight %d\n" % inflight["max"])


def name(code):
    return code.name if code else None


def client(port, scenario, arg):
    arg = None if arg == "-" else arg
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    if os.environ.get("GRPCPEER_AUTHORITY"):  # the :authority the gateway routes on
        opts.append(("grpc.default_authority", os.environ["GRPCPEER_AUTHORITY"]))
    ch = grpc.insecure_channel("127.0.0.1:%d" % port, options=opts)
    out = {"scenario": scenario}
    unary = ch.unary_unary("/%s/Unary" % SERVICE)

    def call(fn, *a, **kw):
        t = time.monotonic()
        try:
            r = fn(*a, **kw)
            return {"code": "OK", "ms": round((time.monotonic() - t) * 1000), "value": r}
        except grpc.RpcError as e:
            return {"code": name(e.code()), "details": e.details(), "ms": round((time.monotonic() - t) * 1000),
                    "trailers": dict(e.trailing_metadata() or ())}

    if scenario == "unary":
        r = call(unary, (arg or "hello").encode(), timeout=10, metadata=[("x-test", "1")])
        if r["code"] == "OK":
            r["value"] = r["value"].decode("latin-1")
        out.update(r)
    elif scenario == "timeout":
        r = call(unary, b"timeout?", timeout=float(arg or 2))
        r["value"] = r.get("value", b"").decode() if r["code"] == "OK" else None
        out.update(r)
    elif scenario == "deadline":  # a call the server answers after 2 s, with a short deadline
        out.update(call(unary, b"sleep:2000", timeout=float(arg or 0.3)))
    elif scenario == "big":
        n = int(arg or 4 * 1024 * 1024)
        r = call(unary, b"x" * n, timeout=30)
        r["value"] = len(r["value"]) if r["code"] == "OK" else None
        r2 = call(unary, ("big:%d" % n).encode(), timeout=30)
        out.update(r)
        out["down"] = len(r2["value"]) if r2["code"] == "OK" else r2["code"]
    elif scenario == "server_stream":
        t = time.monotonic()
        msgs = list(ch.unary_stream("/%s/ServerStream" % SERVICE)((arg or "10:1000").encode(), timeout=30))
        out.update({"code": "OK", "count": len(msgs), "bytes": sum(len(m) for m in msgs),
                    "ms": round((time.monotonic() - t) * 1000)})
    elif scenario == "client_stream":
        n, size = (int(x) for x in (arg or "100:1000").split(":"))
        r = call(ch.stream_unary("/%s/ClientStream" % SERVICE), iter([b"y" * size] * n), timeout=30)
        r["value"] = r["value"].decode() if r["code"] == "OK" else None
        out.update(r)
    elif scenario == "bidi":
        # ping-pong: each message is sent after the previous answer came back (streamed both ways, not buffered)
        q = []
        ev = threading.Event()
        sent = []

        def gen():
            for i in range(int(arg or 20)):
                m = ("m%d" % i).encode()
                sent.append(m)
                yield m
                if not ev.wait(5):
                    return
                ev.clear()
            yield b"stop"
        got = []
        try:
            for m in ch.stream_stream("/%s/Bidi" % SERVICE)(gen(), timeout=30):
                got.append(m.decode())
                ev.set()
            out.update({"code": "OK", "got": got})
        except grpc.RpcError as e:
            out.update({"code": name(e.code()), "details": e.details(), "got": got})
    elif scenario == "watch":
        # a server-streaming call that sends a message every MS ("COUNT:MS"): how it ends, with what it got
        got = []
        t = time.monotonic()
        try:
            for m in ch.unary_stream("/%s/Watch" % SERVICE)((arg or "3:100").encode(),
                                                            timeout=float(os.environ.get("GRPCPEER_TIMEOUT", 60))):
                got.append(m.decode())
            out.update({"code": "OK", "got": len(got)})
        except grpc.RpcError as e:
            out.update({"code": name(e.code()), "details": e.details(), "got": len(got)})
        out["ms"] = round((time.monotonic() - t) * 1000)
    elif scenario == "bidi_slow":
        # "N:MS": N messages MS apart, each echoed (a chat-like stream that lasts N * MS)
        n, gap = (int(x) for x in (arg or "5:100").split(":"))

        def gen():
            for i in range(n):
                yield ("m%d" % i).encode()
                time.sleep(gap / 1000)
            yield b"stop"
        got = []
        t = time.monotonic()
        try:
            for m in ch.stream_stream("/%s/Bidi" % SERVICE)(gen(), timeout=float(os.environ.get("GRPCPEER_TIMEOUT", 60))):
                got.append(m.decode())
            out.update({"code": "OK", "got": len(got)})
        except grpc.RpcError as e:
            out.update({"code": name(e.code()), "details": e.details(), "got": len(got)})
        out["ms"] = round((time.monotonic() - t) * 1000)
    elif scenario == "cancel":
        # a call the server would answer after ARG ms, cancelled by the client after 1 s
        fut = unary.future(("sleep:%s" % (arg or 3000)).encode(), timeout=30)
        time.sleep(1)
        fut.cancel()
        out.update({"code": "CANCELLED" if fut.cancelled() else "not cancelled"})
        time.sleep(0.3)
    elif scenario == "many":
        # N concurrent unary calls on one channel (one HTTP/2 connection to the gateway)
        n = int(arg or 1000)
        futs = [unary.future(("sleep:50" if i % 2 else "m%d" % i).encode(), timeout=30) for i in range(n)]
        codes = {}
        for f in futs:
            try:
                f.result()
                c = "OK"
            except grpc.RpcError as e:
                c = name(e.code())
            codes[c] = codes.get(c, 0) + 1
        out.update({"codes": codes})
    elif scenario == "load":
        # ARG seconds of 20 concurrent callers (for GOAWAY mid-load); every failure is reported
        until = time.monotonic() + float(arg or 3)
        codes = {}
        lock = threading.Lock()

        def worker():
            while time.monotonic() < until:
                r = call(unary, b"sleep:5", timeout=10)
                with lock:
                    codes[r["code"]] = codes.get(r["code"], 0) + 1
        ts = [threading.Thread(target=worker) for _ in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out.update({"codes": codes})
    else:
        sys.exit("unknown scenario " + scenario)
    if isinstance(out.get("value"), bytes):
        out["value"] = out["value"].decode("latin-1")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        client(int(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
