#!/usr/bin/python3
"""An independent TLS/TCP/UDP client for weir's listener tests (Python's ssl module, OpenSSL).

Prints one JSON object: {"outcome": "ok", "reply": "..."} or
{"outcome": "handshake_failed" | "refused" | "closed", "detail": "..."} ("closed": the server
closed before --read-lines lines came back).

  net_client.py HOST PORT [--udp] [--source IP] [--ca FILE | --system-ca] [--send TEXT]
                [--read-lines N] [--read-all]

--source binds the client socket to a local address first (127.0.0.2 is a different peer
address on Linux loopback), so one test can be both an allowed and a refused peer.
--ca trusts that PEM file; --system-ca trusts only the system bundle (so a self-signed
server certificate is not trusted). Without either, the connection is plaintext.
"""
import argparse
import json
import socket
import ssl
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--source")
    p.add_argument("--ca")
    p.add_argument("--system-ca", action="store_true")
    p.add_argument("--send", default="")
    p.add_argument("--read-lines", type=int, default=0)
    p.add_argument("--read-all", action="store_true")
    a = p.parse_args()
    payload = a.send.encode().decode("unicode_escape").encode("latin-1")

    if a.udp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if a.source:
            s.bind((a.source, 0))
        s.sendto(payload, (a.host, a.port))
        print(json.dumps({"outcome": "ok", "reply": ""}))
        return

    source = (a.source, 0) if a.source else None
    try:
        s = socket.create_connection((a.host, a.port), timeout=20, source_address=source)
    except OSError as e:
        print(json.dumps({"outcome": "refused", "detail": str(e)}))
        return
    if a.ca or a.system_ca:
        ctx = ssl.create_default_context(cafile=a.ca) if a.ca else ssl.create_default_context()
        try:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        except (ssl.SSLError, OSError) as e:
            print(json.dumps({"outcome": "handshake_failed", "detail": str(e)}))
            return
    try:
        if payload:
            s.sendall(payload)
        reply = b""
        while a.read_all or reply.count(b"\n") < a.read_lines:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    except (ssl.SSLError, OSError) as e:
        print(json.dumps({"outcome": "closed", "detail": str(e)}))
        return
    if reply.count(b"\n") < a.read_lines:
        print(json.dumps({"outcome": "closed", "detail": reply.decode("latin-1")}))
        return
    print(json.dumps({"outcome": "ok", "reply": reply.decode("latin-1")}))


if __name__ == "__main__":
    sys.exit(main())
