#!/usr/bin/python3
"""A small HTTP/2 (h2c) server for the specs, on python3-h2.

    h2server.py PORT MODE

Answers every request 200 "ok from connection N". MODE:
    normal               serve until killed
    silent_after_first   on each connection, after the first response stop
                         reading: PINGs are never answered (a dead peer that
                         keeps the TCP connection open)
    reset                answers every request with RST_STREAM(INTERNAL_ERROR)
    data_on_head         answers with a body even to HEAD (which HTTP forbids)
    bad_frame            answers with a WINDOW_UPDATE of 0 (a connection error)
Prints "connection N" on stdout for every accepted connection.
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events

PORT, MODE = int(sys.argv[1]), sys.argv[2]


def handle(sock, n):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    served = 0
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                body = ("ok from connection %d" % n).encode()
                if MODE == "reset":
                    conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                elif MODE == "bad_frame":  # WINDOW_UPDATE of 0 on the connection: a connection error (RFC 9113 §6.9)
                    sock.sendall(conn.data_to_send() + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
                elif MODE == "data_on_head":  # a body in answer to HEAD: against RFC 9110 §9.3.2
                    conn.send_headers(ev.stream_id, [(":status", "200")])
                    conn.send_data(ev.stream_id, body, end_stream=True)
                else:
                    conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                    conn.send_data(ev.stream_id, body, end_stream=True)
                served += 1
        sock.sendall(conn.data_to_send())
        if MODE == "silent_after_first" and served:
            threading.Event().wait(3600)  # keeps the socket open, reads nothing


def main():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", PORT))
    ls.listen(16)
    print("listening", flush=True)
    n = 0
    while True:
        sock, _ = ls.accept()
        n += 1
        print("connection %d" % n, flush=True)
        threading.Thread(target=handle, args=(sock, n), daemon=True).start()


main()
