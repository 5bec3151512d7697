"""Hostile and broken clients: garbage, NULs, huge lines, clients that vanish, half-close, or never read.
After each, the server still serves a well-behaved client and nothing half-received is delivered."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

from ternlib import SMTPClosed, make_message


def server_still_works(srv, rcpt: str = "healthy@tern.test") -> None:
    qid = srv.deliver("sender@example.test", rcpt, make_message("still alive"))
    assert qid
    assert len(srv.wait_messages(rcpt)) >= 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x00\r\n",
        b"\xff\xfe\xfd\xfc binary \x01\x02\x03\r\n",
        b"EHLO \x00client\r\n",
        b"MAIL FROM:<a\x00b@example.test>\r\n",
        bytes(range(1, 256)).replace(b"\n", b"").replace(b"\r", b"") + b"\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64).replace(b"\n", b"x") + b"\r\n",  # TLS hello
    ],
    ids=["nuls", "high-bytes", "nul-in-ehlo", "nul-in-path", "all-bytes", "tls-client-hello"],
)
def test_garbage_command_gets_5xx_or_close(srv, garbage):
    with srv.raw() as c:
        c.greet()
        c.send(garbage)
        try:
            code, lines = c.read_reply()
        except SMTPClosed:
            code = None
        if code is not None:
            assert 500 <= code < 600, (code, lines)
            # The session continues after a 5xx.
            c.expect("NOOP", 250, "2.0.0")
    server_still_works(srv)


def test_random_garbage_stream(srv):
    rnd = os.urandom(64 * 1024)
    with srv.raw() as c:
        c.greet()
        try:
            c.send(rnd)
        except (BrokenPipeError, ConnectionResetError):
            pass
    server_still_works(srv)
    assert all(f.parent.parent.name == "healthy" for f in srv.delivered_files()), srv.delivered_files()


def test_one_megabyte_line(srv):
    with srv.raw(timeout=10) as c:
        c.greet()
        c.ehlo()
        try:
            c.send(b"NOOP " + b"A" * (1024 * 1024) + b"\r\n")
            code, lines = c.read_reply()
        except (BrokenPipeError, ConnectionResetError, SMTPClosed):
            code, lines = None, []
        if code is not None:
            assert code == 500 and lines[0].startswith("5.5.2"), (code, lines)
            c.expect("NOOP", 250, "2.0.0")
    server_still_works(srv)


def test_one_megabyte_line_inside_data_bounded(tern):
    """A 1 MB line inside DATA under a small size limit: refused (552) or the connection dropped, never stored."""
    srv = tern(limits={"max_message_size": 100000})
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<big@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        try:
            c.send(b"Subject: huge\r\n\r\n" + b"B" * (1024 * 1024) + b"\r\n.\r\n")
            code, lines = c.read_reply()
            assert code == 552, lines
        except (BrokenPipeError, ConnectionResetError, SMTPClosed):
            pass
    assert srv.messages("big@tern.test") == []
    server_still_works(srv)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_drops_mid_data(srv, how):
    c = srv.session()
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
    c.expect("RCPT TO:<dropped@tern.test>", 250, "2.1.5")
    c.expect("DATA", 354)
    c.send(b"Subject: dropped\r\n\r\nhalf a message\r\nmore")
    if how == "reset":
        # SO_LINGER 0: close sends RST instead of FIN.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    server_still_works(srv)
    time.sleep(0.5)
    assert srv.messages("dropped@tern.test") == []
    md = srv.maildir("dropped@tern.test")
    if (md / "tmp").is_dir():
        assert list((md / "tmp").iterdir()) == [], "a dropped message left a file in tmp/"


def test_client_drops_after_dot_without_reading(srv):
    """The client sends a full message and closes at once; the server may deliver it (it got the dot) but
    must do so at most once, and keep serving."""
    c = srv.session()
    c.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<fast@tern.test>\r\nDATA\r\n")
    for _ in range(3):
        c.read_reply()
    c.send(b"Subject: fast\r\n\r\nbody\r\n.\r\n")
    c.close()
    server_still_works(srv)
    time.sleep(0.5)
    assert len(srv.messages("fast@tern.test")) <= 1


def test_half_closed_client_gets_replies(srv):
    """The client shuts down its sending side after its last command: pending replies still arrive."""
    with srv.raw() as c:
        c.greet()
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<half@tern.test>\r\nDATA\r\n"
               b"Subject: half\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        codes = [c.read_reply()[0] for _ in range(6)]
        assert codes == [250, 250, 250, 354, 250, 221], codes
        c.wait_closed()
    assert len(srv.wait_messages("half@tern.test")) == 1


def test_half_closed_mid_data_nothing_delivered(srv):
    with srv.raw() as c:
        c.start()
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<halfdata@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: cut\r\n\r\nno end")
        c.sock.shutdown(socket.SHUT_WR)
        # The server sees EOF inside DATA: it closes (maybe after a 4xx/5xx), it does not store.
        rest = c.wait_closed(timeout=5)
        assert not rest.startswith(b"250"), rest
    time.sleep(0.3)
    assert srv.messages("halfdata@tern.test") == []
    server_still_works(srv)


def test_half_closed_without_quit(srv):
    with srv.raw() as c:
        c.greet()
        c.send(b"EHLO client.test\r\nNOOP\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_reply()[0] == 250
        assert c.read_reply()[0] == 250
        c.wait_closed(timeout=5)
    server_still_works(srv)


def test_client_that_never_reads(srv):
    """A client floods pipelined commands and never reads the replies: the server's writes block for that
    client only; others are served meanwhile."""
    bad = socket.create_connection((srv.host, srv.port), timeout=5)
    bad.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop = threading.Event()
    sent = [0]

    def flood():
        chunk = b"".join(b"NOOP\r\n" for _ in range(1000)) + b"HELP\r\n" * 100
        bad.settimeout(0.5)
        while not stop.is_set() and sent[0] < 64 * 1024 * 1024:
            try:
                sent[0] += bad.send(chunk)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        for i in range(3):
            server_still_works(srv, f"meanwhile{i}@tern.test")
    finally:
        stop.set()
        t.join(timeout=5)
        bad.close()
    server_still_works(srv, "after@tern.test")


def test_many_silent_connections_then_service(tern):
    srv = tern(limits={"max_connections": 50})
    socks = [socket.create_connection((srv.host, srv.port), timeout=5) for _ in range(30)]
    try:
        server_still_works(srv)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    server_still_works(srv, "later@tern.test")


def test_connect_and_close_immediately_many_times(srv):
    for _ in range(100):
        s = socket.create_connection((srv.host, srv.port), timeout=5)
        s.close()
    server_still_works(srv)
    assert srv.running()


def test_bare_cr_does_not_split_command_lines(srv):
    """'NOOP<CR>MAIL FROM:...' is one line (only LF ends a command line): one reply, no hidden MAIL."""
    with srv.session() as c:
        c.send(b"NOOP\rMAIL FROM:<evil@attacker.test>\r\n")
        code, lines = c.read_reply()
        assert code == 250 or 500 <= code < 600, (code, lines)
        # If MAIL had run, this MAIL would get 503 "Sender already specified".
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("QUIT", 221)


def test_hostile_helo_name_keeps_received_parseable(srv):
    import email.utils

    from ternlib import header, split_trace

    with srv.raw() as c:
        c.greet()
        code, _ = c.cmd("EHLO evil(host);x<y>")
        if code != 250:
            assert 500 <= code < 600
            return
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: helo\r\n\r\nx\r\n.\r\n")
        assert c.read_reply()[0] == 250
    [content] = srv.wait_messages("alice@tern.test")
    trace, _ = split_trace(content)
    [received] = header(trace, "Received")
    helo_token = received.split()[1]
    assert not set(helo_token) & set("();<>"), received
    assert received.count(";") == 1, received
    assert email.utils.parsedate_to_datetime(received.rpartition(";")[2].strip())
