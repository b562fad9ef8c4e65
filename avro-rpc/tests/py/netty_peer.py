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
  netty_peer.py paced-client PROTOCOL.avpr PORT --rate R --seconds S [--events M] [--prefix P]
      appendBatch calls of M events with bodies "P-<n>" (n counting up), offered at R events/s
      for S seconds whatever the answers; print one JSON line {"ok": [n...], "failed": calls}.
  netty_peer.py slow-server PROTOCOL.avpr --rate R --seconds S --out FILE
      listen on 127.0.0.1:0, print "PORT <n>", serve connections one after another for S
      seconds, answering each appendBatch of k events OK k/R seconds after it could start on
      it: a downstream that accepts R events/s. Each event's body is appended to FILE as
      one line before the OK goes out.

Exits by itself after 60 s (or --seconds + 30 s) in any case.
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


def run_paced_client(proto, port, rate, seconds, events, prefix):
    import time
    conn = connect(port, False)
    req = StatefulRequestor(proto, NettyTransceiver(conn, port))
    ok, failed, n = [], 0, 0
    start = time.monotonic()
    calls = 0
    while time.monotonic() - start < seconds:
        # Offered load: call k is due at k * events / rate; a slow answer is not made up for
        # by a burst, so the offer never exceeds the rate.
        due = start + calls * events / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        calls += 1
        ids = list(range(n, n + events))
        n += events
        evs = [{"headers": {"src": "python"}, "body": ("%s-%d" % (prefix, i)).encode()} for i in ids]
        if req.request("appendBatch", {"events": evs}) == "OK":
            ok.extend(ids)
        else:
            failed += 1
    print(json.dumps({"ok": ok, "failed": failed, "calls": calls}), flush=True)


def run_slow_server(proto, rate, seconds, out_path):
    import time
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    print("PORT %d" % listener.getsockname()[1], flush=True)
    out = open(out_path, "ab")
    start = time.monotonic()
    free_at = start
    responder = avro.ipc.Responder(proto)
    while time.monotonic() - start < seconds:
        try:
            sock, _ = listener.accept()
        except socket.timeout:
            continue
        sock.settimeout(None)
        conn = Conn(sock, False)
        remote = None
        while True:
            try:
                serial, body = conn.read_pack()
            except (OSError, struct.error):
                break
            if serial is None:
                break
            dec = avro.io.BinaryDecoder(io.BytesIO(body))
            reply = io.BytesIO()
            enc = avro.io.BinaryEncoder(reply)
            if remote is None:
                remote = responder.process_handshake(dec, enc)
                if remote is None:
                    conn.write_pack(serial, reply.getvalue())
                    continue
            avro.ipc.META_READER.read(dec)
            name = dec.read_utf8()
            params = avro.io.DatumReader(remote.messages[name].request, proto.messages[name].request).read(dec)
            evs = params["events"] if name == "appendBatch" else [params["event"]]
            out.write(b"".join(e["body"] + b"\n" for e in evs))
            out.flush()
            # The downstream's capacity: each event costs 1/R s of its time, and idle time is
            # not saved up, so no batch is ever taken faster than R events/s.
            free_at = max(free_at, time.monotonic()) + len(evs) / rate
            time.sleep(max(0.0, free_at - time.monotonic()))
            avro.ipc.META_WRITER.write({}, enc)
            enc.write_boolean(False)
            avro.io.DatumWriter(proto.messages[name].response).write("OK", enc)
            try:
                conn.write_pack(serial, reply.getvalue())
            except OSError:
                break
        sock.close()
    out.close()


def main(argv):
    def opt(name, default):
        return int(argv[argv.index(name) + 1]) if name in argv else default

    signal.alarm(max(60, opt("--seconds", 0) + 30))
    mode, proto_path = argv[1], argv[2]
    with open(proto_path) as f:
        proto = avro.protocol.parse(f.read())
    deflate = "--deflate" in argv
    TLS["client"] = "--tls" in argv
    if "--tls-cert" in argv:
        TLS["cert"] = argv[argv.index("--tls-cert") + 1]
        TLS["key"] = argv[argv.index("--tls-key") + 1]

    if mode == "client":
        run_client(proto, int(argv[3]), deflate, opt("--batches", 3), opt("--events", 4))
    elif mode == "spark-client":
        run_spark_client(proto, int(argv[3]))
    elif mode == "server":
        run_server(proto, deflate)
    elif mode == "paced-client":
        prefix = argv[argv.index("--prefix") + 1] if "--prefix" in argv else "py"
        run_paced_client(proto, int(argv[3]), opt("--rate", 1000), opt("--seconds", 10),
                         opt("--events", 50), prefix)
    elif mode == "slow-server":
        run_slow_server(proto, opt("--rate", 1000), opt("--seconds", 30),
                        argv[argv.index("--out") + 1])
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main(sys.argv)
