"""CHUNKING / BDAT outbound (RFC 3030): when the next hop offers CHUNKING, the relay sends the message in
`BDAT <n> [LAST]` chunks of at most 1 MiB instead of DATA, without dot-stuffing.

Covered: tern A relays remote.test to a second `tern serve` B (B's own BDAT inbound), and the Maildir copy at B
is byte-exact (leading-dot lines, 8-bit text); a raw peer offering CHUNKING records the chunk lines and octets
of a 2.5 MiB message (1 MiB chunks, then LAST); a raw peer answering 452 to the LAST chunk leaves the recipient
deferred at A with that reply; a peer without CHUNKING still gets DATA (test_relay.py, aiosmtpd)."""

from __future__ import annotations

import socket
import threading

from relay_helpers import ALICE, WAIT, PeerConn, RawPeer, relay_config, route_to, wait_for, wait_gone, wait_state
from ternlib import as_stored, make_message, split_trace

BOB = "bob@remote.test"
MIB = 1 << 20


class ChunkingPeer:
    """A RawPeer behaviour: a server offering PIPELINING, 8BITMIME and CHUNKING that answers each BDAT chunk
    by its size, records every command line and the octets of each message, and answers the LAST chunk with
    `last_reply`. DATA is answered 502 (a client that uses it here is wrong)."""

    def __init__(self, last_reply: bytes = b"250 2.0.0 queued as RAW1"):
        self.last_reply = last_reply
        self.lines: list[bytes] = []
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    def _read_exact(self, c: PeerConn, n: int) -> bytes | None:
        while len(c.buf) < n:
            if c.stop.is_set():
                return None
            try:
                more = c.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not more:
                return None
            c.buf += more
        data, c.buf = c.buf[:n], c.buf[n:]
        return data

    def __call__(self, c: PeerConn) -> None:
        c.send(b"220 raw.test ESMTP\r\n")
        body = b""
        while (line := c.readline()) is not None:
            with self.lock:
                self.lines.append(line)
            verb = line.split(b" ")[0].upper()
            if verb == b"EHLO":
                c.send(b"250-raw.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 50000000\r\n250 CHUNKING\r\n")
            elif verb == b"BDAT":
                words = line.split(b" ")
                size = int(words[1])
                last = len(words) > 2 and words[2].upper() == b"LAST"
                chunk = self._read_exact(c, size)
                if chunk is None:
                    return
                body += chunk
                if last:
                    with self.lock:
                        self.messages.append(body)
                    body = b""
                    c.send(self.last_reply + b"\r\n")
                else:
                    c.send(b"250 2.0.0 %d octets received\r\n" % size)
            elif verb == b"DATA":
                c.send(b"502 5.5.1 use BDAT\r\n")
            elif verb == b"QUIT":
                c.send(b"221 bye\r\n")
                return
            else:
                c.send(b"250 ok\r\n")

    def bdat_lines(self) -> list[str]:
        with self.lock:
            return [l.decode() for l in self.lines if l.upper().startswith(b"BDAT")]

    def verbs(self) -> list[bytes]:
        with self.lock:
            return [l.split(b" ")[0].upper() for l in self.lines]


class Tap:
    """`with Tap(port) as t:` a TCP forwarder on 127.0.0.1:t.port to 127.0.0.1:port that records what the
    client sends (t.sent()): what crosses the wire between two terns, since B's log does not name BDAT."""

    def __init__(self, target: int):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.upstream = bytearray()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        src.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if record:
                with self.lock:
                    self.upstream += data
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            self.conns += [conn, up]
            for args in ((conn, up, True), (up, conn, False)):
                t = threading.Thread(target=self._pump, args=args, daemon=True)
                self.threads.append(t)
                t.start()

    def sent(self) -> bytes:
        with self.lock:
            return bytes(self.upstream)

    def __enter__(self) -> "Tap":
        t = threading.Thread(target=self._accept, daemon=True)
        self.threads.append(t)
        t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        for s in self.conns + [self.sock]:
            try:
                s.close()
            except OSError:
                pass


def exact_body() -> bytes:
    """Lines that DATA would dot-stuff (a lone dot among them), 8-bit text, a long line."""
    return (b"First line.\r\n.\r\n..two dots\r\n. dot space\r\n.leading\r\n"
            + "caf\u00e9 \u00fcber \u65e5\u672c\r\n".encode() + b"y" * 990 + b"\r\n\r\nlast line\r\n")


def test_relay_to_tern_over_bdat_is_byte_exact(tern):
    b = tern(hostname="b.tern.test", local={"domains": ["remote.test"]})
    with Tap(b.port) as tap:
        a = tern(**relay_config(routes={"remote.test": route_to(tap.port)}))
        msg = make_message("bdat between two terns", body=exact_body(), sender=ALICE, to=BOB)
        qid = a.deliver(ALICE, BOB, msg, mail_options=["BODY=8BITMIME"])
        got = b.wait_messages(BOB, 1, timeout=WAIT)[0]
        wait_gone(a, qid)
        wire = tap.sent()
    trace, rest = split_trace(got)
    assert rest == as_stored(msg, rest), "the message at B must be byte-identical after the trace headers"
    names = [n.lower() for n, _ in trace]
    assert names.count("received") == 2, f"A's and B's Received, got {trace}"
    # B offers CHUNKING: A sent one `BDAT <n> LAST` (PIPELINING: right after MAIL and RCPT), no DATA.
    assert b"BODY=8BITMIME" in wire, wire[:300]
    lines = [l for l in wire.split(b"\r\n") if l.startswith(b"BDAT ")]
    assert len(lines) == 1 and lines[0].endswith(b" LAST"), lines
    assert b"\r\nDATA\r\n" not in wire, wire[:300]
    # Verbatim: DATA would have sent `...two dots`, `..leading` and `..` for the lone dot.
    assert exact_body() in wire and b"\r\n...two dots" not in wire and b"\r\n..leading" not in wire
    assert wire.endswith(b"last line\r\nQUIT\r\n") or wire.endswith(b"last line\r\n"), wire[-100:]
    assert a.messages(ALICE) == [], "a delivered message must not bounce"


def test_raw_peer_sees_1mib_chunks_then_last(tern):
    peer = ChunkingPeer()
    with RawPeer(peer) as p:
        srv = tern(**relay_config(routes={"remote.test": route_to(p.port)}))
        line = b".dotted line " + b"z" * 85 + b"\r\n"
        body = exact_body() + line * ((5 * MIB // 2) // len(line))
        msg = make_message("big over bdat", body=body, sender=ALICE, to=BOB)
        qid = srv.deliver(ALICE, BOB, msg, mail_options=["BODY=8BITMIME"])
        wait_for(lambda: peer.messages, what="the peer received the message")
        wait_gone(srv, qid)
        got = peer.messages[0]
        trace, rest = split_trace(got)
        assert rest == msg, "chunks reassembled must be the message (after A's Received), no dot-stuffing"
        assert [n.lower() for n, _ in trace] == ["received"], trace
        assert peer.bdat_lines() == [f"BDAT {MIB}", f"BDAT {MIB}", f"BDAT {len(got) - 2 * MIB} LAST"]
        verbs = peer.verbs()
        assert b"DATA" not in verbs, verbs
        mail = [l for l in peer.lines if l.upper().startswith(b"MAIL")][0]
        assert b"BODY=8BITMIME" in mail.upper(), mail
    assert srv.messages(ALICE) == []


def test_452_to_last_chunk_defers_at_a(tern):
    peer = ChunkingPeer(last_reply=b"452 4.3.1 insufficient system storage (raw peer)")
    with RawPeer(peer) as p:
        srv = tern(**relay_config(routes={"remote.test": route_to(p.port)}))
        msg = make_message("deferred at last chunk", sender=ALICE, to=BOB)
        qid = srv.deliver(ALICE, BOB, msg)
        status = wait_state(srv, qid, BOB, "deferred")
        assert "insufficient system storage (raw peer)" in status["last_reply"], status
        assert peer.bdat_lines() == [f"BDAT {len(peer.messages[0])} LAST"]
        # The transaction is over after a refused chunk: RSET before anything else.
        verbs = peer.verbs()
        i = verbs.index(b"BDAT")
        assert verbs[i + 1:i + 2] in ([b"RSET"], [b"QUIT"], []), verbs
        assert b"DATA" not in verbs, verbs
    assert srv.messages(ALICE) == [], "a deferred message must not bounce"
