"""Abuse resistance (issue 5 item 5): per-IP and total connection limits, message rate per IP,
errors per session, the header-section size limit, HTTP / cross-protocol requests, and memory that
stays bounded whatever a client sends. Untrusted clients come from 127.0.0.2 / 127.0.0.3."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sec_helpers import OTHER_IP, UNTRUSTED_IP, Client
from ternlib import HOSTNAME, make_message

UNTRUSTED = {"relay": {"trusted_networks": ["127.0.0.1/32"]}}


def refused_421(port: int, source: str) -> str:
    """Connects and expects an immediate 421 4.7.0 followed by the close; returns the text."""
    with Client(port, source=source) as c:
        code, lines = c.read_reply()
        assert code == 421, (code, lines)
        assert lines[0].startswith("4.7.0 "), lines
        c.wait_closed(timeout=5)
        return lines[0]


# ---------------------------------------------------------------- connections


def test_per_ip_connection_limit(tern):
    srv = tern(limits={"max_connections_per_ip": 2, "max_connections": 100}, **UNTRUSTED)
    a = Client(srv.port, source=UNTRUSTED_IP)
    b = Client(srv.port, source=UNTRUSTED_IP)
    try:
        a.greet()
        b.greet()
        refused_421(srv.port, UNTRUSTED_IP)
        # Another IP is not affected.
        with Client(srv.port, source=OTHER_IP) as other:
            other.start()
            other.expect("NOOP", 250)
        # The open sessions keep working; freeing a slot lets the IP in again.
        a.ehlo()
        a.expect("NOOP", 250)
        a.expect("QUIT", 221)
        a.wait_closed()

        def third_ok() -> bool:
            with Client(srv.port, source=UNTRUSTED_IP) as c:
                code, _ = c.read_reply()
                return code == 220

        deadline = time.monotonic() + 5
        while not third_ok():
            assert time.monotonic() < deadline, "slot of a closed connection was never freed"
            time.sleep(0.1)
    finally:
        a.close()
        b.close()


def test_total_connection_limit(tern):
    srv = tern(limits={"max_connections": 3, "max_connections_per_ip": 0})
    held = [Client(srv.port, source=f"127.0.0.{10 + i}") for i in range(3)]
    try:
        for c in held:
            c.greet()
        text = refused_421(srv.port, "127.0.0.20")
        assert HOSTNAME in text
    finally:
        for c in held:
            c.close()


def test_refused_connections_do_not_leak_slots(tern):
    """Many refused connections in a row leave the counters right (no slot leak)."""
    srv = tern(limits={"max_connections_per_ip": 1}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP) as held:
        held.greet()
        for _ in range(20):
            refused_421(srv.port, UNTRUSTED_IP)
    time.sleep(0.3)
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start()
        c.expect("NOOP", 250)


# ---------------------------------------------------------------- message rate


def test_message_rate_per_ip(tern):
    srv = tern(limits={"max_messages_per_ip_per_minute": 2}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start()
        for i in range(2):
            c.expect("MAIL FROM:<sender@example.test>", 250, "2.1.0")
            c.expect("RCPT TO:<alice@tern.test>", 250)
            c.expect("DATA", 354)
            c.send(make_message(subject=f"rate {i}") + b".\r\n")
            assert c.read_reply()[0] == 250
        c.expect("MAIL FROM:<sender@example.test>", 450, "4.7.1")
    # Per IP, not per session: a new connection from the same IP is limited too.
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start()
        c.expect("MAIL FROM:<sender@example.test>", 450, "4.7.1")
    # Other IPs and trusted networks are not affected.
    with Client(srv.port, source=OTHER_IP) as c:
        c.start()
        c.expect("MAIL FROM:<sender@example.test>", 250, "2.1.0")
    with Client(srv.port, source="127.0.0.1") as c:
        c.start()
        for _ in range(3):
            c.expect("MAIL FROM:<sender@example.test>", 250, "2.1.0")
            c.expect("RSET", 250)
    assert len(srv.messages("alice@tern.test")) == 2


# ---------------------------------------------------------------- errors per session


def test_max_errors_closes_and_stops_scanning(tern):
    """After max_errors bad commands: 421 and close; commands pipelined after them are never run."""
    srv = tern(limits={"max_errors": 3}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start()
        c.send(b"FOO\r\nBAR\r\nBAZ\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<alice@tern.test>\r\nDATA\r\n"
               + make_message(subject="after max_errors") + b".\r\n")
        replies = [c.read_reply() for _ in range(3)]
        assert [r[0] for r in replies] == [500, 500, 421], replies
        assert replies[2][1][0].startswith("4.7.0 "), replies
        rest = c.wait_closed(timeout=5)
        assert rest == b"", f"replies after the 421: {rest!r}"
    srv.assert_nothing_delivered(settle=0.5)


# ---------------------------------------------------------------- cross-protocol


@pytest.mark.parametrize("request_line", [
    b"GET / HTTP/1.1", b"POST /cgi-bin/form HTTP/1.1", b"CONNECT mx.tern.test:25 HTTP/1.1",
    b"get /index.html HTTP/1.0", b"HEAD / HTTP/1.1", b"PUT /x HTTP/1.1", b"OPTIONS * HTTP/1.1",
])
def test_http_request_line_disconnected(tern, request_line):
    srv = tern(**UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.greet()
        c.send(request_line + b"\r\nHost: mx.tern.test\r\nContent-Length: 10\r\n\r\n")
        code, lines = c.read_reply()
        assert code == 421, (code, lines)
        rest = c.wait_closed(timeout=5)
        assert rest == b"", f"more replies after the 421 (headers were executed as commands): {rest!r}"


def test_cross_protocol_post_smuggles_no_mail(tern):
    """A browser tricked into POSTing SMTP commands as a form body (cross-protocol attack) sends nothing."""
    srv = tern(**UNTRUSTED)
    body = (b"EHLO evil.test\r\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<alice@tern.test>\r\nDATA\r\n"
            + make_message(subject="cross protocol") + b".\r\nQUIT\r\n")
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.greet()
        c.send(b"POST / HTTP/1.1\r\nHost: mx.tern.test\r\nContent-Type: text/plain\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        code, _ = c.read_reply()
        assert code == 421
        c.wait_closed(timeout=5)
    srv.assert_nothing_delivered(settle=0.5)


def test_http_word_after_helo_is_just_an_error(tern):
    srv = tern(**UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start()
        c.expect("GET / HTTP/1.1", 500, "5.5.1")
        c.expect("NOOP", 250)


# ---------------------------------------------------------------- header section size


def test_header_section_over_limit_552(tern):
    srv = tern(limits={"max_header_size": 2048}, **UNTRUSTED)
    big = b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"y" * 60) for i in range(60))  # ~4.6 KB
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start()
        c.expect("MAIL FROM:<sender@example.test>", 250)
        c.expect("RCPT TO:<alice@tern.test>", 250)
        c.expect("DATA", 354)
        c.send(make_message(subject="big header", extra=big) + b".\r\n")
        code, lines = c.read_reply()
        assert code == 552 and lines[0].startswith("5.3.4 "), (code, lines)
        # The session goes on, and a message with a small header is accepted.
        c.expect("MAIL FROM:<sender@example.test>", 250)
        c.expect("RCPT TO:<alice@tern.test>", 250)
        c.expect("DATA", 354)
        c.send(make_message(subject="small header") + b".\r\n")
        assert c.read_reply()[0] == 250
    got = srv.wait_messages("alice@tern.test")
    assert len(got) == 1 and b"small header" in got[0]


def test_header_without_end_over_limit_552(tern):
    """A 'header' that never ends (no blank line) is a header section as long as the message."""
    srv = tern(limits={"max_header_size": 2048}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start()
        c.expect("MAIL FROM:<sender@example.test>", 250)
        c.expect("RCPT TO:<alice@tern.test>", 250)
        c.expect("DATA", 354)
        c.send(b"".join(b"X-H%04d: v\r\n" % i for i in range(400)) + b".\r\n")
        code, lines = c.read_reply()
        assert code == 552 and lines[0].startswith("5.3.4 "), (code, lines)
    srv.assert_nothing_delivered(settle=0.3)


# ---------------------------------------------------------------- bounded memory


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_bounded_on_endless_line(tern):
    """Clients sending megabytes without a line end: 500 5.5.2, and the server's memory barely moves."""
    srv = tern(**UNTRUSTED)
    assert srv.proc is not None
    before = rss_kb(srv.proc.pid)
    clients = [Client(srv.port, source=f"127.0.0.{30 + i}", timeout=20) for i in range(4)]
    try:
        for c in clients:
            c.start()
        chunk = b"A" * (1 << 20)
        for _ in range(8):  # 8 MB per client, 32 MB in total
            for c in clients:
                c.send(chunk)
        for c in clients:
            c.send(b"\r\n")
            code, lines = c.read_reply()
            assert (code, lines[0].split()[0]) == (500, "5.5.2"), (code, lines)
            c.expect("NOOP", 250)
        grown = rss_kb(srv.proc.pid) - before
        assert grown < 24 * 1024, f"RSS grew by {grown} KB while clients sent 32 MB of one line"
    finally:
        for c in clients:
            c.close()


def test_idle_connections_cost_little_memory(tern):
    """Issue 15: 10,000 idle connections in under 60 MB. Each idle session's state (its future, its
    boxed session, its command buffer) is asserted here per connection, on 3,000 greeted connections,
    with a margin: the limit, 6 KiB each, is what 10,000 may cost in 60 MB; tern measures ~4 KiB (and
    measured 12 KiB before the large, rarely used parts of a session were boxed)."""
    import resource
    import selectors
    import socket

    n = 3000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 500
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    # tern inherits the raised limit from this process.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        srv = tern(limits={"max_connections": n + 1000, "max_connections_per_ip": 0})
        assert srv.proc is not None

        def open_greeted(count: int) -> list[socket.socket]:
            socks = []
            for _ in range(count):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                socks.append(s)
            # Every connection must get its 220 (bounded wait; epoll, as the fds pass 1024).
            got = {s.fileno(): b"" for s in socks}
            with selectors.DefaultSelector() as sel:
                for s in socks:
                    sel.register(s, selectors.EVENT_READ)
                left = len(socks)
                deadline = time.monotonic() + 30
                while left and time.monotonic() < deadline:
                    for key, _ in sel.select(timeout=1.0):
                        s = key.fileobj
                        got[s.fileno()] += s.recv(512)
                        if b"\r\n" in got[s.fileno()]:
                            assert got[s.fileno()].startswith(b"220 "), got[s.fileno()]
                            sel.unregister(s)
                            left -= 1
            assert not left, f"{left} connections got no 220"
            return socks

        # Warm up first: thread stacks, pools and the allocator's first arenas are not per connection.
        warm = open_greeted(200)
        before = rss_kb(srv.proc.pid)
        idle = open_greeted(n)
        after = rss_kb(srv.proc.pid)
        per_conn = (after - before) / n
        assert per_conn < 6.0, f"{per_conn:.1f} KiB per idle connection ({before} -> {after} KiB for {n})"
        for s in warm + idle:
            s.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_pipelined_burst_answered_in_order(tern):
    """A 100 KB pipelined burst of commands is answered one by one (no unbounded buffering or crash).
    The NOOPs are made free here: this is about buffering, not the junk-command limit."""
    srv = tern(limits={"max_junk_commands": 100000}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP, timeout=20) as c:
        c.start()
        c.send(b"NOOP\r\n" * 20000)
        for _ in range(20000):
            code, _ = c.read_reply()
            assert code == 250
        c.expect("QUIT", 221)



