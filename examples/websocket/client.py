#!/usr/bin/python3
"""A one-shot WebSocket client that can send handshake headers (python3-websockets),
which `python3 -m websockets` cannot:

    client.py URL [--header "Name: value"]... [MESSAGE]...

Sends each MESSAGE, prints each answer (one per message), then closes.
Without messages it prints the first message the server sends.
"""
import asyncio
import sys

import websockets


async def main(argv):
    url, headers, messages = argv[0], [], []
    args = iter(argv[1:])
    for a in args:
        if a == "--header":
            name, _, value = next(args).partition(":")
            headers.append((name.strip(), value.strip()))
        else:
            messages.append(a)
    # websockets 10 (Debian 12) calls it extra_headers; from 14 on, additional_headers
    async with websockets.connect(url, extra_headers=headers) as ws:
        for m in messages:
            await ws.send(m)
            print(await ws.recv(), flush=True)
        if not messages:
            print(await ws.recv(), flush=True)


try:
    asyncio.run(main(sys.argv[1:]))
except websockets.InvalidStatusCode as e:
    print("refused: HTTP %d" % e.status_code, file=sys.stderr)
    sys.exit(1)
