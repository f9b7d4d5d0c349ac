#!/usr/bin/python3
"""A raw HTTP/2 client for the specs (python3-h2 and hpack from Debian).

    h2peer.py PORT SCENARIO [ARG]

Connects to 127.0.0.1:PORT with prior knowledge (h2c), plays one scenario,
and prints one JSON object with what happened: the frames and statuses it
saw, whether the gateway sent GOAWAY (and its error code), whether the
connection was closed. Every scenario is bounded in frames and in time.
"""
import json
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack

PORT = int(sys.argv[1])
SCENARIO = sys.argv[2]
ARG = sys.argv[3] if len(sys.argv) > 3 else None
DEADLINE = time.monotonic() + 30

out = {"scenario": SCENARIO, "goaway": None, "closed": False, "statuses": {}, "resets": {}, "bodies": {},
       "data": {}, "events": 0}


def connect(window=None):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    if window is not None:
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    s.sendall(c.data_to_send())
    return s, c


def headers(path, method="GET", extra=()):
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", "localhost")] + list(extra)


def pump(s, c, until, timeout=10.0, ack=True, stall=()):
    """Reads and handles events until until() or timeout; returns False when the connection closed."""
    end = min(time.monotonic() + timeout, DEADLINE)
    while not until():
        left = end - time.monotonic()
        if left <= 0:
            return True
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            return True
        except (ConnectionResetError, BrokenPipeError):
            out["closed"] = True
            return False
        if not data:
            out["closed"] = True
            return False
        try:
            events = c.receive_data(data)
        except Exception as e:  # the gateway did something h2 refuses
            out["client_error"] = repr(e)
            return False
        for ev in events:
            out["events"] += 1
            sid = str(getattr(ev, "stream_id", 0))
            if isinstance(ev, h2.events.InformationalResponseReceived):
                out.setdefault("interim", {}).setdefault(sid, []).append(dict(ev.headers))
            elif isinstance(ev, h2.events.ResponseReceived):
                out["statuses"][sid] = dict(ev.headers).get(":status")
                out.setdefault("headers", {})[sid] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                out["data"][sid] = out["data"].get(sid, 0) + len(ev.data)
                if out["data"][sid] <= 4096:
                    out["bodies"][sid] = out["bodies"].get(sid, "") + ev.data.decode("latin-1")
                if ev.stream_id in stall:
                    # the connection's window is given back, the stream's is not: only that stream stops
                    if ev.flow_controlled_length:
                        c.increment_flow_control_window(ev.flow_controlled_length)
                elif ack:
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                out.setdefault("trailers", {})[sid] = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamReset):
                out["resets"][sid] = int(ev.error_code)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                out["goaway"] = int(ev.error_code)
                out["last_stream_id"] = ev.last_stream_id
        pending = c.data_to_send()
        if pending:
            try:
                s.sendall(pending)
            except (ConnectionResetError, BrokenPipeError):
                out["closed"] = True
                return False
    return True


def wait_closed(s, c, timeout=10.0):
    pump(s, c, lambda: out["closed"], timeout)


def raw_frame(ftype, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def send_raw(s, data):
    try:
        s.sendall(data)
        return True
    except (ConnectionResetError, BrokenPipeError):
        out["closed"] = True
        return False


def scenario_get():
    """GET ARG (default /): status, headers and body."""
    s, c = connect()
    c.send_headers(1, headers(ARG or "/"), end_stream=True)
    s.sendall(c.data_to_send())
    pump(s, c, lambda: "1" in out["resets"] or c.streams.get(1) is None or c.streams[1].closed)


def scenario_hpack_bomb():
    """One small header block that expands past any sane header list (indexed repeats of one big field)."""
    s, c = connect()
    enc = hpack.Encoder()
    big = ("x-bomb", "y" * 4000)
    fields = headers("/") + [big] * 2000  # ~8 MB decoded, a few KB encoded: each repeat is one index byte
    block = enc.encode(fields)
    out["encoded_bytes"] = len(block)
    # HEADERS then CONTINUATIONs of at most 16 KiB (the default max frame size)
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    frames = b""
    for i, ch in enumerate(chunks):
        last = 0x4 if i == len(chunks) - 1 else 0
        frames += raw_frame(0x1 if i == 0 else 0x9, last | (0x1 if i == 0 else 0), 1, ch)
    send_raw(s, frames)
    wait_closed(s, c)


def scenario_continuation_flood():
    """HEADERS without END_HEADERS, then CONTINUATION frames without end."""
    s, c = connect()
    enc = hpack.Encoder()
    send_raw(s, raw_frame(0x1, 0x1, 1, enc.encode(headers("/"))))  # END_STREAM, no END_HEADERS
    sent = 0
    for _ in range(10000):
        if not send_raw(s, raw_frame(0x9, 0, 1, b"")):
            break
        sent += 1
    out["continuations_sent"] = sent
    wait_closed(s, c)


def scenario_rapid_reset():
    """Opens streams and cancels them at once, in a loop (CVE-2023-44487)."""
    s, c = connect()
    sid, opened = 1, 0
    for _ in range(int(ARG or 5000)):
        try:
            c.send_headers(sid, headers("/slow"), end_stream=True)
            c.reset_stream(sid, error_code=8)
        except Exception:
            break
        if not send_raw(s, c.data_to_send()):
            break
        sid += 2
        opened += 1
        if opened % 100 == 0 and not pump(s, c, lambda: False, 0.001):
            break
        if out["goaway"] is not None:
            break
    out["opened"] = opened
    wait_closed(s, c, 5)


def flood(frame, n):
    s, c = connect()
    sent = 0
    for _ in range(n):
        if not send_raw(s, frame):
            break
        sent += 1
        if sent % 200 == 0 and not pump(s, c, lambda: False, 0.001):
            break
        if out["goaway"] is not None:
            break
    out["sent"] = sent
    wait_closed(s, c, 5)


def scenario_ping_flood():
    flood(raw_frame(0x6, 0, 0, b"12345678"), 20000)


def scenario_settings_flood():
    flood(raw_frame(0x4, 0, 0, b""), 20000)


def scenario_empty_data_flood():
    s, c = connect()
    c.send_headers(1, headers("/echo", "POST"), end_stream=False)
    s.sendall(c.data_to_send())
    sent = 0
    for _ in range(20000):
        if not send_raw(s, raw_frame(0x0, 0, 1, b"")):
            break
        sent += 1
        if sent % 200 == 0 and not pump(s, c, lambda: False, 0.001):
            break
        if out["goaway"] is not None:
            break
    out["sent"] = sent
    wait_closed(s, c, 5)


def scenario_max_streams():
    """ARG streams at once to a slow handler: those over the limit are refused."""
    s, c = connect()
    n = int(ARG or 200)
    for i in range(n):
        c.send_headers(1 + 2 * i, headers("/slow"), end_stream=True)
    s.sendall(c.data_to_send())
    pump(s, c, lambda: len(out["statuses"]) + len(out["resets"]) >= n, 15)
    out["max_concurrent_streams"] = c.remote_settings.max_concurrent_streams


def scenario_stalled_stream():
    """Stream 1 downloads ARG without giving its window back; stream 3 (/fast) must still complete."""
    s, c = connect()
    c.send_headers(1, headers(ARG or "/big"), end_stream=True)
    s.sendall(c.data_to_send())
    pump(s, c, lambda: out["data"].get("1", 0) >= 65535, 5, stall={1})
    out["stalled_at"] = out["data"].get("1", 0)
    c.send_headers(3, headers("/fast"), end_stream=True)
    s.sendall(c.data_to_send())
    t = time.monotonic()
    # stream 1's window stays closed; the connection window is given back so stream 3 can flow
    pump(s, c, lambda: out["data"].get("3", 0) >= 4, 5, stall={1})
    out["fast_ms"] = round((time.monotonic() - t) * 1000)
    out["stalled_after"] = out["data"].get("1", 0)
    # then stream 1 is given up on by the gateway after its send timeout
    pump(s, c, lambda: "1" in out["resets"], 10, stall={1})


def scenario_partial_headers():
    """HEADERS without END_HEADERS, then silence: the header timeout closes the connection."""
    s, c = connect()
    pump(s, c, lambda: False, 0.3)  # the SETTINGS exchange first: nothing may come between HEADERS and CONTINUATION
    enc = hpack.Encoder()
    send_raw(s, raw_frame(0x1, 0x1, 1, enc.encode(headers("/"))))
    t = time.monotonic()
    wait_closed(s, c, 15)
    out["closed_after_ms"] = round((time.monotonic() - t) * 1000)


def scenario_idle():
    """An open connection with no stream: closed after the keep-alive (or preface) timeout."""
    s, c = connect()
    t = time.monotonic()
    wait_closed(s, c, 15)
    out["closed_after_ms"] = round((time.monotonic() - t) * 1000)


def scenario_inflight_goaway():
    """Stream 1 to ARG (a slow route); reports the response and the GOAWAY that a drain sends."""
    s, c = connect()
    c.send_headers(1, headers(ARG or "/slow"), end_stream=True)
    s.sendall(c.data_to_send())
    print(json.dumps({"started": True}), flush=True)
    pump(s, c, lambda: out["closed"], 15)


def scenario_cookies():
    """Two cookie fields (crumbs, RFC 9113 §8.2.3) on one request to ARG."""
    s, c = connect()
    c.send_headers(1, headers(ARG or "/", extra=[("cookie", "a=1"), ("cookie", "b=2")]), end_stream=True)
    s.sendall(c.data_to_send())
    pump(s, c, lambda: c.streams.get(1) is None or c.streams[1].closed)


def scenario_two_streams():
    """Stream 1 to ARG, then 0.6 s later stream 3 on the same connection (a reload happens between)."""
    s, c = connect()
    c.send_headers(1, headers(ARG or "/"), end_stream=True)
    s.sendall(c.data_to_send())
    pump(s, c, lambda: False, 0.6)
    c.send_headers(3, headers(ARG or "/"), end_stream=True)
    s.sendall(c.data_to_send())
    pump(s, c, lambda: all(c.streams.get(i) is None or c.streams[i].closed for i in (1, 3)), 10)


def scenario_never_reads():
    """Opens every window wide, asks for ARG, and then never reads the socket."""
    s, c = connect(window=2 ** 31 - 1)
    c.increment_flow_control_window(2 ** 31 - 1 - 65535)
    c.send_headers(1, headers(ARG or "/"), end_stream=True)
    s.sendall(c.data_to_send())
    time.sleep(4)  # the kernel buffers fill, then the gateway's send timeout (1 s in the spec) runs out
    s.settimeout(10)
    try:
        while s.recv(1 << 20):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    out["closed"] = True


def scenario_grpc_call():
    """A gRPC call to ARG with raw frames: HEADERS, one message, END_STREAM. Reports the frames of the answer."""
    s, c = connect()
    extra = []
    path = ARG or "/"
    payload = b"hi"
    if "|" in path:  # "/path|header=value|...|body=message"
        parts = path.split("|")
        path = parts[0]
        extra = [tuple(p.split("=", 1)) for p in parts[1:]]
        payload = dict(extra).pop("body", "hi").encode()
        extra = [e for e in extra if e[0] != "body"]
    authority = dict(extra).get(":authority", "localhost")
    extra = [e for e in extra if e[0] != ":authority"]
    h = [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", authority),
         ("content-type", "application/grpc"), ("te", "trailers")] + extra
    c.send_headers(1, h, end_stream=False)
    c.send_data(1, b"\x00" + struct.pack(">I", len(payload)) + payload, end_stream=True)
    s.sendall(c.data_to_send())
    end = {}

    def done():
        return "1" in out["resets"] or end.get("ended")

    orig = c.receive_data

    def spy(data):
        events = orig(data)
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                end["headers_only"] = ev.stream_ended is not None  # trailers-only: one HEADERS with END_STREAM
            if isinstance(ev, h2.events.StreamEnded):
                end["ended"] = True
        return events
    c.receive_data = spy
    pump(s, c, done)
    out["trailers_only"] = end.get("headers_only", False)


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}

if __name__ == "__main__":
    if SCENARIO not in SCENARIOS:
        sys.exit("unknown scenario %s (%s)" % (SCENARIO, ", ".join(sorted(SCENARIOS))))
    try:
        SCENARIOS[SCENARIO]()
    except (ConnectionResetError, BrokenPipeError):
        out["closed"] = True
    print(json.dumps(out), flush=True)
