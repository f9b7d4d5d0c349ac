#!/usr/bin/python3
"""Calls the example through the gateway: client.py [API_KEY|-] [GATEWAY_PORT]
(the port: default $GATEWAY_PORT, else 8080)."""
import os
import sys

import grpc

key = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None
port = int(sys.argv[2] if len(sys.argv) > 2 else os.environ.get("GATEWAY_PORT", "8080"))
channel = grpc.insecure_channel("127.0.0.1:%d" % port)
meta = [("x-api-key", key)] if key else []
for what, call in (("Hello", lambda: channel.unary_unary("/demo.Greeter/Hello")(b"moongate", metadata=meta, timeout=5).decode()),
                   ("Count", lambda: [m.decode() for m in channel.unary_stream("/demo.Greeter/Count")(b"3", metadata=meta, timeout=5)]),
                   ("Admin", lambda: channel.unary_unary("/demo.Admin/Reboot")(b"", timeout=5))):
    try:
        print("%s: OK %s" % (what, call()))
    except grpc.RpcError as e:
        print("%s: %s %s" % (what, e.code().name, e.details()))
