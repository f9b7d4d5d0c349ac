#!/usr/bin/python3
"""A small gRPC service for the example (python3-grpcio, no generated code:
messages are UTF-8 text). demo.Greeter/Hello answers "hello, <name>";
demo.Greeter/Count streams the numbers 1..N.
Usage: server.py [PORT] (default $GRPC_PORT, else 50051)."""
import os
import sys
from concurrent import futures

import grpc


def hello(req, ctx):
    return ("hello, " + req.decode()).encode()


def count(req, ctx):
    for i in range(1, int(req.decode() or "3") + 1):
        yield str(i).encode()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[
    grpc.method_handlers_generic_handler("demo.Greeter", {
        "Hello": grpc.unary_unary_rpc_method_handler(hello),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    })])
port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("GRPC_PORT", "50051"))
server.add_insecure_port("127.0.0.1:%d" % port)
server.start()
print("serving on 127.0.0.1:%d" % port, flush=True)
server.wait_for_termination()
