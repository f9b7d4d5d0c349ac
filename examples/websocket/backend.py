#!/usr/bin/python3
"""A WebSocket echo backend for the example (python3-websockets):
    backend.py PORT
"""
import asyncio
import sys

import websockets


async def echo(ws, path=None):
    async for msg in ws:
        await ws.send(msg)


async def main(port):
    async with websockets.serve(echo, "127.0.0.1", port):
        await asyncio.Future()


asyncio.run(main(int(sys.argv[1])))
