"""Size, length, count and time limits (RFC 5321 4.5.3) and the configured [limits]."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from relay_helpers import closed_port, route_to, wait_state
from ternlib import ENHANCED, HOSTNAME, RawSMTP, SMTPClosed, make_message, tern_bin


def domain_of_length(n: int) -> str:
    """A syntactically valid domain of exactly n octets (labels of at most 63)."""
    labels = []
    remaining = n
    while remaining > 0:
        take = min(63, remaining)
        if remaining - take == 1:  # a trailing label of 0 octets is impossible: shorten this one
            take -= 1
        labels.append("a" * take)
        remaining -= take + 1  # +1 for the dot before the next label
    d = ".".join(labels)
    if len(d) < n:
        d = d + "b" * (n - len(d))
    assert len(d) == n, (len(d), n)
    return d


# ---------------------------------------------------------------- address lengths (RFC 5321 4.5.3.1)


def test_local_part_64_accepted(srv):
    local = "a" * 64
    with srv.session() as c:
        c.expect(f"MAIL FROM:<{local}@example.test>", 250, "2.1.0")
        c.expect(f"RCPT TO:<{local}@tern.test>", 250, "2.1.5")


def test_local_part_65_rejected(srv):
    local = "a" * 65
    with srv.session() as c:
        text = c.expect(f"MAIL FROM:<{local}@example.test>", 501, "5.1.7")
        assert "too long" in text.lower(), text
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect(f"RCPT TO:<{local}@tern.test>", 501, "5.1.3")
        assert "too long" in text.lower(), text
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")


def test_domain_256_rejected(srv):
    domain = domain_of_length(256)
    with srv.session() as c:
        text = c.expect(f"MAIL FROM:<a@{domain}>", 501, "5.1.7")
        assert "too long" in text.lower(), text
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect(f"RCPT TO:<a@{domain}>", 501, "5.1.3")
        assert "too long" in text.lower(), text


def test_path_over_256_rejected(srv):
    """Local part and domain each within their limits, but the whole path is longer than 256 octets."""
    domain = domain_of_length(200)
    path = f"<{'a' * 64}@{domain}>"
    assert len(path) > 256
    with srv.session() as c:
        text = c.expect(f"MAIL FROM:{path}", 501, "5.1.7")
        assert "too long" in text.lower(), text
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect(f"RCPT TO:{path}", 501, "5.1.3")
        assert "too long" in text.lower(), text


def test_long_path_within_limits_accepted(srv):
    domain = domain_of_length(200)
    path = f"<{'a' * 40}@{domain}>"
    assert len(path) < 256
    with srv.session() as c:
        c.expect(f"MAIL FROM:{path}", 250, "2.1.0")


# ---------------------------------------------------------------- command line length (RFC 5321 4.5.3.1.4)


@pytest.mark.parametrize("total", [513, 514, 1000, 5000])
def test_line_too_long_then_session_continues(srv, total):
    with srv.session() as c:
        prefix = b"NOOP "
        line = prefix + b"x" * (total - len(prefix) - 2) + b"\r\n"
        assert len(line) == total
        c.send(line)
        code, lines = c.read_reply()
        assert code == 500, lines
        assert lines[0].startswith("5.5.2 "), lines
        assert "too long" in lines[0].lower(), lines
        # Exactly one reply for the long line, then the session works normally.
        c.expect("NOOP", 250, "2.0.0")
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")


def test_line_of_512_accepted(srv):
    """512 octets including CRLF is the limit itself, not beyond it."""
    with srv.session() as c:
        line = b"NOOP " + b"x" * (512 - 5 - 2) + b"\r\n"
        assert len(line) == 512
        c.send(line)
        code, lines = c.read_reply()
        assert code == 250, lines


def test_long_mail_line_does_not_start_transaction(srv):
    # MAIL may take 512 + 500 octets for its parameters (RFC 3461 4, RFC 4954 5); a longer one is too long.
    with srv.session() as c:
        c.send(b"MAIL FROM:<a@example.test> " + b"X" * 1100 + b"\r\n")
        code, lines = c.read_reply()
        assert code == 500 and lines[0].startswith("5.5.2"), lines
        # Within 1012 octets, the line is read and its unknown parameter refused as such.
        c.send(b"MAIL FROM:<a@example.test> " + b"X" * 600 + b"\r\n")
        code, lines = c.read_reply()
        assert code == 555 and lines[0].startswith("5.5.4"), lines
        # The over-long MAIL was not executed: RCPT still needs MAIL.
        c.expect("RCPT TO:<alice@tern.test>", 503, "5.5.1")


# ---------------------------------------------------------------- max_recipients


def test_recipients_beyond_max(tern):
    srv = tern(limits={"max_recipients": 3})
    rcpts = [f"user{i}@tern.test" for i in range(5)]
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        for r in rcpts[:3]:
            c.expect(f"RCPT TO:<{r}>", 250, "2.1.5")
        for r in rcpts[3:]:
            text = c.expect(f"RCPT TO:<{r}>", 452, "4.5.3")
            assert "Too many recipients" in text
        c.expect("DATA", 354)
        c.send(b"Subject: many\r\n\r\nhi\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    for r in rcpts[:3]:
        assert len(srv.wait_messages(r)) == 1, r
    for r in rcpts[3:]:
        assert srv.messages(r) == [], r
    assert len(srv.delivered_files()) == 3


def test_max_recipients_resets_per_transaction(tern):
    srv = tern(limits={"max_recipients": 2})
    with srv.session() as c:
        for _ in range(2):
            c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
            c.expect("RCPT TO:<a1@tern.test>", 250, "2.1.5")
            c.expect("RCPT TO:<a2@tern.test>", 250, "2.1.5")
            c.expect("RCPT TO:<a3@tern.test>", 452, "4.5.3")
            c.expect("RSET", 250, "2.0.0")


# ---------------------------------------------------------------- max_message_size


def test_size_param_over_limit_nothing_delivered(tern):
    srv = tern(limits={"max_message_size": 10000})
    with srv.session() as c:
        text = c.expect("MAIL FROM:<a@example.test> SIZE=20000", 552, "5.3.4")
        assert "Message size exceeds fixed maximum message size" in text
        # No transaction was opened.
        c.expect("RCPT TO:<alice@tern.test>", 503, "5.5.1")
    srv.assert_nothing_delivered(settle=0.3)


@pytest.mark.parametrize("with_size_param", [False, True])
def test_too_much_data_nothing_delivered(tern, with_size_param):
    """The client lies (or says nothing) about the size and sends more than max_message_size."""
    srv = tern(limits={"max_message_size": 10000})
    body = (b"x" * 76 + b"\r\n") * 400  # ~31 KB
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>" + (" SIZE=500" if with_size_param else ""), 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: big\r\n\r\n" + body + b".\r\n")
        code, lines = c.read_reply()
        assert code == 552, lines
        assert lines[0].startswith("5.3.4 "), lines
        # The session goes on and a small message still gets through.
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    assert srv.messages("alice@tern.test") == []
    assert len(srv.wait_messages("bob@tern.test")) == 1
    time.sleep(0.3)
    assert srv.messages("alice@tern.test") == []


def test_message_just_under_limit_delivered(tern):
    srv = tern(limits={"max_message_size": 10000})
    msg = make_message("fits", body=(b"y" * 78 + b"\r\n") * 100)  # ~8.2 KB
    assert len(msg) < 9000
    srv.deliver("sender@example.test", "alice@tern.test", msg)
    assert len(srv.wait_messages("alice@tern.test")) == 1


# ---------------------------------------------------------------- timeouts


def test_command_timeout(tern):
    srv = tern(limits={"command_timeout": "2s"})
    with srv.raw(timeout=8) as c:
        c.greet()
        c.ehlo()
        start = time.monotonic()
        code, lines = c.read_reply()
        waited = time.monotonic() - start
        assert code == 421, lines
        assert lines[0] == f"4.4.2 {HOSTNAME} Timeout, closing connection", lines
        assert 1.5 <= waited <= 6, waited
        c.wait_closed()


def test_command_timeout_before_helo(tern):
    srv = tern(limits={"command_timeout": "2s"})
    with srv.raw(timeout=8) as c:
        c.greet()
        code, lines = c.read_reply()
        assert code == 421 and lines[0].startswith("4.4.2 "), lines
        c.wait_closed()


def test_trickled_command_still_times_out(tern):
    """Slowloris: a byte every 0.4 s never completes a command; 'no command within command_timeout' -> 421."""
    srv = tern(limits={"command_timeout": "2s"})
    with srv.raw(timeout=8) as c:
        c.start()
        start = time.monotonic()
        got = b""
        c.sock.settimeout(0.4)
        while time.monotonic() - start < 8:
            try:
                c.send(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = c.sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            got += chunk
            if b"\r\n" in got:
                break
        waited = time.monotonic() - start
        assert got.startswith(b"421 4.4.2 "), f"after {waited:.1f}s of trickling got {got!r}"
        assert waited < 6, waited


def test_trickled_data_still_times_out(tern):
    """Slowloris in DATA: a short line every 0.4 s never ends the message; data_timeout bounds the whole
    DATA phase (docs/security.md), so 421 4.4.2 comes after about 2 s and nothing is delivered."""
    srv = tern(limits={"data_timeout": "2s", "command_timeout": "30s"})
    with srv.raw(timeout=8) as c:
        c.start()
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        start = time.monotonic()
        got = b""
        c.sock.settimeout(0.4)
        while time.monotonic() - start < 8:
            try:
                c.send(b"x\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = c.sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            got += chunk
            if b"\r\n" in got:
                break
        waited = time.monotonic() - start
        assert got.startswith(b"421 4.4.2 "), f"after {waited:.1f}s of trickling got {got!r}"
        assert 1.5 <= waited < 6, waited
    srv.assert_nothing_delivered(settle=0.5)


def test_command_timeout_is_per_command(tern):
    """The deadline is per command line: a client that sends a full command every second, each
    within command_timeout, keeps its session even though the session outlives command_timeout."""
    srv = tern(limits={"command_timeout": "2s"})
    with srv.raw(timeout=8) as c:
        c.start()
        for _ in range(3):
            c.send(b"NO")
            time.sleep(0.6)
            c.send(b"OP\r\n")
            assert c.read_reply()[0] == 250
            time.sleep(0.6)
        c.expect("QUIT", 221, "2.0.0")


def test_activity_resets_command_timeout(tern):
    srv = tern(limits={"command_timeout": "2s"})
    with srv.session() as c:
        for _ in range(4):
            time.sleep(1)
            c.expect("NOOP", 250, "2.0.0")


def test_data_timeout_nothing_delivered(tern):
    srv = tern(limits={"data_timeout": "2s", "command_timeout": "30s"})
    with srv.raw(timeout=8) as c:
        c.start()
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: slow\r\n\r\npartial line\r\n")
        code, lines = c.read_reply()
        assert code == 421, lines
        assert lines[0].startswith("4.4.2 "), lines
        c.wait_closed()
    srv.assert_nothing_delivered(settle=0.5)


# ---------------------------------------------------------------- max_connections


def test_max_connections(tern):
    srv = tern(limits={"max_connections": 2})
    time.sleep(0.2)  # let the readiness probe's session end
    a = srv.raw()
    b = srv.raw()
    try:
        a.greet()
        b.greet()
        with srv.raw() as c:
            code, lines = c.read_reply()
            assert code == 421, lines
            assert lines[0] == f"4.7.0 {HOSTNAME} Too many connections, try again later", lines
            c.wait_closed()
        # The two admitted sessions are unaffected.
        a.ehlo()
        a.expect("NOOP", 250, "2.0.0")
        b.ehlo()
        b.expect("NOOP", 250, "2.0.0")
        # Once one leaves, a newcomer is admitted again (bounded retry: the slot frees asynchronously).
        a.expect("QUIT", 221)
        a.wait_closed()
        deadline = time.monotonic() + 5
        while True:
            with srv.raw() as d:
                code, lines = d.read_reply()
                if code == 220:
                    break
            assert time.monotonic() < deadline, "slot never freed after QUIT"
            time.sleep(0.1)
    finally:
        a.close()
        b.close()


def test_connections_beyond_limit_many_times(tern):
    """Rejected connections must not leak slots."""
    srv = tern(limits={"max_connections": 1})
    time.sleep(0.2)
    with srv.raw() as a:
        a.greet()
        for _ in range(20):
            with srv.raw() as c:
                try:
                    code, _ = c.read_reply()
                except (SMTPClosed, socket.timeout, ConnectionResetError):
                    code = None
                assert code == 421
    time.sleep(0.3)
    with srv.session() as c:
        c.expect("NOOP", 250, "2.0.0")


# ---------------------------------------------------------------- max_errors, per-IP limits (docs/configuration.md)


def test_max_errors_closes_session(tern):
    srv = tern(limits={"max_errors": 3})
    with srv.session() as c:
        c.expect("FROB", 500, "5.5.1")
        c.expect("FROB", 500, "5.5.1")
        c.send(b"FROB\r\n")
        code, lines = c.read_reply()
        # The error that reaches the limit may be answered itself, then 421 and close.
        if code == 500:
            code, lines = c.read_reply()
        assert code == 421, lines
        assert lines[0].startswith("4.7.0 "), lines
        c.wait_closed()
    with srv.session() as c:
        c.expect("NOOP", 250, "2.0.0")


def test_successful_commands_do_not_count_as_errors(tern):
    # NOOP and RSET are free up to max_junk_commands (test_abuse_limits.py covers the excess).
    srv = tern(limits={"max_errors": 2, "max_junk_commands": 100})
    with srv.session() as c:
        for _ in range(10):
            c.expect("NOOP", 250, "2.0.0")
            c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
            c.expect("RSET", 250, "2.0.0")
        c.expect("FROB", 500, "5.5.1")
        c.expect("NOOP", 250, "2.0.0")


def test_max_connections_per_ip(tern):
    srv = tern(limits={"max_connections_per_ip": 2, "max_connections": 100})
    time.sleep(0.2)
    a, b = srv.raw(), srv.raw()
    try:
        a.greet()
        b.greet()
        with srv.raw() as c:
            code, lines = c.read_reply()
            assert code == 421, lines
            c.wait_closed()
        a.ehlo()
        a.expect("NOOP", 250, "2.0.0")
    finally:
        a.close()
        b.close()


def test_rawsmtp_timeout_is_bounded(srv):
    """Harness self-check: a read with nothing to read fails after the timeout, it does not hang."""
    c = RawSMTP(srv.host, srv.port, timeout=1)
    c.greet()
    start = time.monotonic()
    with pytest.raises(socket.timeout):
        c.read_reply()
    assert time.monotonic() - start < 3
    c.close()


# ---------------------------------------------------------------- documented in docs/configuration.md


def test_default_size_advertised(srv):
    with srv.raw() as c:
        c.greet()
        assert "SIZE 26214400" in c.ehlo()


def test_header_section_over_max_header_size(tern):
    srv = tern(limits={"max_header_size": 1000})
    headers = b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"h" * 60) for i in range(40))  # ~3 KB of headers
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: big header\r\n" + headers + b"\r\nsmall body\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 552, lines
        assert lines[0].startswith("5.3.4 "), lines
        # A large body under a small header section is fine.
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: small header\r\n\r\n" + (b"b" * 70 + b"\r\n") * 100 + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    assert srv.messages("alice@tern.test") == []
    assert len(srv.wait_messages("bob@tern.test")) == 1


def test_mail_loop_not_delivered(tern):
    """docs/configuration.md [queue] max_received_headers: a copy with more Received headers than this
    (tern's own included) is a mail loop. docs/smtp-replies.md: refused at the end of DATA with
    554 5.4.6 (RFC 5321 6.3), nothing delivered."""
    srv = tern(queue={"max_received_headers": 5})
    received = b"".join(
        b"Received: from hop%d.example.test by hop%d.example.test; Sat, 28 Nov 2026 10:00:00 +0000\r\n" % (i, i + 1)
        for i in range(8)
    )
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(received + b"Subject: loop\r\n\r\nround and round\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 554 and lines[0].startswith("5.4.6 "), lines
        # The session goes on: a message one below the limit (4 hops, 5 with tern's) is accepted.
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        below_limit = b"".join(received.splitlines(keepends=True)[:4])
        c.send(below_limit + b"Subject: fine\r\n\r\nReceived: in the body does not count\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    assert len(srv.wait_messages("alice@tern.test")) == 1
    time.sleep(0.5)
    msgs = srv.messages("alice@tern.test")
    assert len(msgs) == 1 and b"Subject: fine" in msgs[0], "a message over max_received_headers was delivered"


def test_messages_per_ip_per_minute(tern):
    srv = tern(limits={"max_messages_per_ip_per_minute": 2}, relay={"trusted_networks": ["10.99.0.0/16"]})
    for i in range(2):
        srv.deliver("a@example.test", "alice@tern.test", make_message(f"rate {i}"))
    with srv.session() as c:
        code, text = c.cmd("MAIL FROM:<a@example.test>")
        assert 400 <= code < 500, (code, text)
        assert ENHANCED.match(text) and text.startswith("4."), text
    assert len(srv.wait_messages("alice@tern.test", 2)) == 2


def test_ehlo_address_literal(srv):
    from ternlib import header, split_trace

    with srv.raw() as c:
        c.greet()
        c.expect("EHLO [127.0.0.1]", 250)
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: literal helo\r\n\r\nx\r\n.\r\n")
        assert c.read_reply()[0] == 250
    [content] = srv.wait_messages("alice@tern.test")
    [received] = header(split_trace(content)[0], "Received")
    assert received.startswith("from [127.0.0.1] ([127.0.0.1])"), received


# Issue 10: each duration key is capped (docs/configuration.md), because durations are added to
# Instant::now() and a huge one would panic there; these are the caps themselves.
LARGEST_DURATIONS = {
    "limits": {"command_timeout": "1h", "data_timeout": "1d"},
    "queue": {"max_age": "30d", "retry_schedule": ["1d"], "delay_warning": "30d"},
    "outbound": {"connect_timeout": "10m", "command_timeout": "1h", "data_timeout": "1h", "tls": "none"},
}


def test_largest_allowed_durations_start_and_answer(tern):
    """With every duration key at its cap, tern starts, takes a local message (command and data
    deadlines armed) and queues and defers a relayed one (connect timeout, retry time, expiry and
    delay warning computed), without a panic; the server still answers afterwards."""
    srv = tern(routes={"remote.test": route_to(closed_port())}, **LARGEST_DURATIONS)
    srv.deliver("a@example.test", "alice@tern.test", make_message("capped durations"))
    assert len(srv.wait_messages("alice@tern.test")) == 1
    qid = srv.deliver("alice@tern.test", "bob@remote.test", make_message("capped relay"))
    status = wait_state(srv, qid, "bob@remote.test", "deferred")
    assert status.get("state") == "deferred", status
    with srv.session() as c:
        c.expect("NOOP", 250, "2.0.0")
    assert srv.proc is not None and srv.proc.poll() is None, "tern exited"
    assert "panicked" not in srv.log(), srv.log()[-2000:]


@pytest.mark.parametrize("section,key,value", [
    ("limits", "command_timeout", "100000000years"),
    ("limits", "data_timeout", "25h"),
    ("queue", "max_age", "31d"),
    ("queue", "retry_schedule", ["5m", "2d"]),
    ("queue", "delay_warning", "100000000years"),
    ("outbound", "connect_timeout", "11m"),
    ("outbound", "command_timeout", "2h"),
    ("outbound", "data_timeout", "100000000years"),
], ids=lambda v: v if isinstance(v, str) else "list")
def test_duration_beyond_its_cap_is_a_config_error(tern, section, key, value):
    """Beyond the cap `tern serve` refuses the file (exit 78) naming the key and the maximum,
    instead of panicking on `Instant + d` at the first command."""
    srv = tern(start=False, **{section: {key: value}})
    r = subprocess.run([str(tern_bin()), "serve", "--config", str(srv.config_path)], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 78, f"rc={r.returncode}\n{out}"
    assert f"{section}.{key}" in out and "is longer than the maximum of" in out and "fix: use at most" in out, out
    assert "panicked" not in out, out
