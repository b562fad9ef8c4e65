#!/usr/bin/python3
"""An independent Avro IPC peer for weir's interop tests, built on Debian's python3-avro.

Python's avro.ipc speaks the protocol (handshake, call envelopes, schema resolution) but only
ships an HTTP transport, and its Requestor/Responder send a handshake with *every* message
(stateless transport). Netty is stateful: the handshake is only exchanged until the first
BOTH/CLIENT. So this script supplies the Netty pack framing (and optional zlib stream with a
sync flush per pack, like Flume's compression-type=deflate), uses avro.ipc's handshake logic
for the first exchange, and avro.ipc's call encoding without handshake afterwards.

Usage:
  Options --tls (client: TLS without verification, like trust-all-certs) and
  --tls-cert FILE --tls-key FILE (server) wrap the socket in TLS, outside the zlib stream.

  netty_peer.py client PROTOCOL.avpr PORT [--deflate] [--batches N] [--events M]
      connect to 127.0.0.1:PORT, send N appendBatch calls of M events, then one append;
      print one JSON line {"results": [...]}.
  netty_peer.py spark-client PROTOCOL.avpr PORT
      getEventBatch(5), ack(seq), getEventBatch(5), nack(seq); print {"batches": [...]}.
  netty_peer.py server PROTOCOL.avpr [--deflate]
      listen on 127.0.0.1:0, print "PORT <n>", serve one connection until EOF answering OK,
      then print {"batches": [...]} with every received event (body as hex).

Exits by itself after 60 s in any case.
"""

import io
import json
import signal
import socket
import ssl
import struct
import sys
import zlib

try:
    import avro.io
    import avro.ipc
    import avro.protocol
except ImportError:  # pragma: no cover - reported to the Rust test
    sys.stderr.write("python3-avro is not installed: apt-get install -y python3-avro\n")
    sys.exit(3)


class Conn:
    """Netty packs over a socket, optionally inside one zlib stream per direction."""

    def __init__(self, sock, deflate):
        self.sock = sock
        self.deflate = deflate
        self.comp = zlib.compressobj(6) if deflate else None
        self.decomp = zlib.decompressobj() if deflate else None
        self.buf = b""
        self.serial = 0

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            if self.decomp is not None:
                chunk = self.decomp.decompress(chunk)
            self.buf += chunk
        return True

    def _take(self, n):
        if not self._fill(n):
            return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_pack(self):
        head = self._take(8)
        if head is None:
            return None, None
        serial, count = struct.unpack(">ii", head)
        body = []
        for _ in range(count):
            (n,) = struct.unpack(">i", self._take(4))
            body.append(self._take(n))
        return serial, b"".join(body)

    def write_pack(self, serial, payload):
        # Split like Java does (8 KiB chunks) to exercise multi-buffer decoding.
        chunks = [payload[i:i + 8192] for i in range(0, len(payload), 8192)] or [b""]
        data = struct.pack(">ii", serial, len(chunks))
        for c in chunks:
            data += struct.pack(">i", len(c)) + c
        if self.comp is not None:
            data = self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)


class NettyTransceiver:
    """What avro.ipc.Requestor needs: transceive(bytes) -> bytes, remote_name."""

    def __init__(self, conn, port):
        self.conn = conn
        self.remote_name = "127.0.0.1:%d" % port

    def transceive(self, request):
        self.conn.serial += 1
        self.conn.write_pack(self.conn.serial, request)
        serial, body = self.conn.read_pack()
        if serial != self.conn.serial:
            raise RuntimeError("serial mismatch: sent %d got %r" % (self.conn.serial, serial))
        return body


class StatefulRequestor(avro.ipc.Requestor):
    """Handshake only until it succeeded; then plain call requests."""

    handshaken = False

    def request(self, message_name, request_datum):
        if not self.handshaken:
            result = super().request(message_name, request_datum)
            self.handshaken = True
            return result
        buf = io.BytesIO()
        self.write_call_request(message_name, request_datum, avro.io.BinaryEncoder(buf))
        response = self.transceiver.transceive(buf.getvalue())
        return self.read_call_response(message_name, avro.io.BinaryDecoder(io.BytesIO(response)))


TLS = {"client": False, "cert": None, "key": None}


def connect(port, deflate):
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if TLS["client"]:
        # Like Flume's trust-all-certs: encrypt, do not authenticate (test certificates).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    return Conn(sock, deflate)


def run_client(proto, port, deflate, batches, events):
    conn = connect(port, deflate)
    req = StatefulRequestor(proto, NettyTransceiver(conn, port))
    results = []
    for b in range(batches):
        evs = [
            {"headers": {"src": "python", "i": str(e)}, "body": ("py-b%d-e%d" % (b, e)).encode()}
            for e in range(events)
        ]
        results.append(req.request("appendBatch", {"events": evs}))
    results.append(req.request("append", {"event": {"headers": {}, "body": b"\x00\xff single"}}))
    print(json.dumps({"results": results}), flush=True)


def run_spark_client(proto, port):
    conn = connect(port, False)
    req = StatefulRequestor(proto, NettyTransceiver(conn, port))
    out = []
    for verb in ("ack", "nack"):
        batch = req.request("getEventBatch", {"n": 5})
        out.append({
            "errorMsg": batch["errorMsg"],
            "sequenceNumber": batch["sequenceNumber"],
            "events": [{"headers": e["headers"], "body": e["body"].hex()} for e in batch["events"]],
        })
        req.request(verb, {"sequenceNumber": batch["sequenceNumber"]})
    print(json.dumps({"batches": out}), flush=True)


def run_server(proto, deflate):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print("PORT %d" % listener.getsockname()[1], flush=True)
    sock, _ = listener.accept()
    if TLS["cert"]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(TLS["cert"], TLS["key"])
        sock = ctx.wrap_socket(sock, server_side=True)
    conn = Conn(sock, deflate)
    responder = avro.ipc.Responder(proto)
    remote = None
    batches = []
    while True:
        serial, body = conn.read_pack()
        if serial is None:
            break
        dec = avro.io.BinaryDecoder(io.BytesIO(body))
        out = io.BytesIO()
        enc = avro.io.BinaryEncoder(out)
        if remote is None:
            remote = responder.process_handshake(dec, enc)
            if remote is None:  # NONE: the reply is the handshake alone
                conn.write_pack(serial, out.getvalue())
                continue
        avro.ipc.META_READER.read(dec)
        name = dec.read_utf8()
        local_msg = proto.messages[name]
        remote_msg = remote.messages[name]
        params = avro.io.DatumReader(remote_msg.request, local_msg.request).read(dec)
        evs = params["events"] if name == "appendBatch" else [params["event"]]
        batches.append([{"headers": e["headers"], "body": e["body"].hex()} for e in evs])
        avro.ipc.META_WRITER.write({}, enc)
        enc.write_boolean(False)
        avro.io.DatumWriter(local_msg.response).write("OK", enc)
        conn.write_pack(serial, out.getvalue())
    print(json.dumps({"batches": batches}), flush=True)


def main(argv):
    signal.alarm(60)
    mode, proto_path = argv[1], argv[2]
    with open(proto_path) as f:
        proto = avro.protocol.parse(f.read())
    deflate = "--deflate" in argv
    TLS["client"] = "--tls" in argv
    if "--tls-cert" in argv:
        TLS["cert"] = argv[argv.index("--tls-cert") + 1]
        TLS["key"] = argv[argv.index("--tls-key") + 1]

    def opt(name, default):
        return int(argv[argv.index(name) + 1]) if name in argv else default

    if mode == "client":
        run_client(proto, int(argv[3]), deflate, opt("--batches", 3), opt("--events", 4))
    elif mode == "spark-client":
        run_spark_client(proto, int(argv[3]))
    elif mode == "server":
        run_server(proto, deflate)
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main(sys.argv)
