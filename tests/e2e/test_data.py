"""The DATA phase: dot-stuffing (RFC 5321 4.5.2), 8-bit bodies (RFC 6152), SMTPUTF8 (RFC 6531),
and messages that do not end with CRLF."""

from __future__ import annotations

import re
import smtplib

import pytest

from ternlib import as_stored, header, make_message, split_trace


def raw_send(srv, wire_body: bytes, rcpt: str = "alice@tern.test", mail_params: str = "") -> None:
    """Sends wire_body exactly as given after 354 (caller does the dot-stuffing and the final dot)."""
    with srv.session() as c:
        c.expect(f"MAIL FROM:<a@example.test>{mail_params}", 250, "2.1.0")
        c.expect(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(wire_body)
        code, lines = c.read_reply()
        assert code == 250, lines


def test_dot_stuffing_decoded(srv):
    """Client-side stuffed lines ("..x", "..", "...") arrive with one dot removed."""
    wire = (
        b"Subject: dots\r\n\r\n"
        b"..leading dot\r\n"
        b"..\r\n"
        b"...\r\n"
        b"middle . dot\r\n"
        b"..end\r\n"
        b".\r\n"
    )
    raw_send(srv, wire)
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    expected = b"Subject: dots\r\n\r\n.leading dot\r\n.\r\n..\r\nmiddle . dot\r\n.end\r\n"
    assert rest == as_stored(expected, content)


def test_dot_lines_round_trip_through_smtplib(srv):
    """smtplib stuffs; the server unstuffs: what arrives is what was given, lone-dot lines included."""
    body = b".\r\n..\r\n.hidden\r\n. space\r\nnormal\r\n.\r\n"
    msg = make_message("round trip", body=body)
    srv.deliver("sender@example.test", "alice@tern.test", msg)
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert rest == as_stored(msg, content)


def test_unstuffed_leading_dot_keeps_line(srv):
    """A line starting with a single dot followed by text (a client that forgot to stuff) is kept as the text
    after the dot (RFC 5321 4.5.2: the first dot is deleted), never treated as the end."""
    raw_send(srv, b"Subject: unstuffed\r\n\r\n.forgot\r\nafter\r\n.\r\n")
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert rest == as_stored(b"Subject: unstuffed\r\n\r\nforgot\r\nafter\r\n", content)


@pytest.mark.parametrize("param", [" BODY=8BITMIME", ""])
def test_8bit_body(srv, param):
    body = "Grüße aus Köln — ünïcödé\r\n".encode() + bytes(range(0x80, 0x100)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
    wire = b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
    raw_send(srv, wire + b".\r\n", mail_params=param)
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert rest == as_stored(wire, content)


def test_8bit_through_smtplib(srv):
    msg = make_message("8bit smtplib", body="naïve café ☕\r\n".encode())
    srv.deliver("sender@example.test", "alice@tern.test", msg, mail_options=["BODY=8BITMIME"])
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert rest == as_stored(msg, content)


def test_smtputf8_address(srv):
    sender = "sénder@exämple.test"
    rcpt = "jösé@tern.test"
    msg = make_message("utf8 address", sender=sender, to=rcpt, body="héllo\r\n".encode())
    with srv.smtp() as s:
        s.ehlo()
        assert s.has_extn("smtputf8")
        refused = s.sendmail(sender, [rcpt], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert refused == {}
    [content] = srv.wait_messages(rcpt)
    trace, rest = split_trace(content)
    assert header(trace, "Return-Path") == [f"<{sender}>"]
    assert header(trace, "Delivered-To") == [rcpt]
    assert rest == as_stored(msg, content)
    assert srv.maildir(rcpt).name == "jösé"


def test_smtputf8_uppercase_ascii_folded(srv):
    rcpt = "JÖSÉ.Ascii@TERN.test"
    with srv.smtp() as s:
        s.ehlo()
        s.sendmail("a@example.test", [rcpt], make_message("fold").decode(), mail_options=["SMTPUTF8"])
    files = srv.delivered_files()
    assert len(files) == 1
    # The domain and the ASCII letters are lower-cased (issue 2).
    assert files[0].parent.parent.parent.name == "tern.test"
    assert files[0].parent.parent.name.startswith("j"), files[0]
    assert files[0].parent.parent.name.endswith(".ascii"), files[0]


def test_message_without_final_crlf(srv):
    """smtplib appends the CRLF before the final dot; the stored message ends with that one line end."""
    msg = b"Subject: no newline\r\n\r\nlast line without newline"
    srv.deliver("sender@example.test", "alice@tern.test", msg)
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert rest == as_stored(msg + b"\r\n", content)


def test_empty_body(srv):
    raw_send(srv, b".\r\n")
    [content] = srv.wait_messages("alice@tern.test")
    trace, rest = split_trace(content)
    assert header(trace, "Received")
    assert rest.strip(b"\r\n") == b"", rest


def test_headers_only_no_blank_line(srv):
    raw_send(srv, b"Subject: only headers\r\n.\r\n")
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert rest == as_stored(b"Subject: only headers\r\n", content)


def test_long_body_lines_kept(srv):
    """Lines longer than 1000 octets violate RFC 5322 but must not be truncated or split silently: either the
    message is kept exactly or refused with a 5xx - here we check it is at least not corrupted."""
    long_line = b"z" * 5000 + b"\r\n"
    wire = b"Subject: long body line\r\n\r\n" + long_line
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(wire + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250 or 500 <= code < 600, lines
    if code == 250:
        [content] = srv.wait_messages("alice@tern.test")
        _, rest = split_trace(content)
        assert rest == as_stored(wire, content)
    else:
        srv.assert_nothing_delivered(settle=0.3)


def test_smtplib_refuses_nothing_for_good_message(srv):
    with srv.smtp() as s:
        refused = s.sendmail("a@example.test", ["alice@tern.test", "bob@tern.test"], make_message("ok"))
    assert refused == {}
    assert len(srv.delivered_files()) == 2


def test_smtplib_sees_rejected_recipient(tern):
    srv = tern(relay={"trusted_networks": ["10.99.0.0/16"]})
    with srv.smtp() as s:
        refused = s.sendmail("a@example.test", ["alice@tern.test", "x@elsewhere.test"], make_message("partial"))
    assert set(refused) == {"x@elsewhere.test"}
    assert refused["x@elsewhere.test"][0] == 550
    assert len(srv.wait_messages("alice@tern.test")) == 1
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        with srv.smtp() as s:
            s.sendmail("a@example.test", ["x@elsewhere.test"], make_message("none"))


def test_stuffed_first_line(srv):
    """The first data line follows the DATA command's CRLF: a leading dot there is stuffing too."""
    raw_send(srv, b"..first line starts with a dot\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert rest == as_stored(b".first line starts with a dot\r\nSubject: x\r\n\r\nbody\r\n", content)


@pytest.mark.parametrize("mode", ["normalize", "reject"])
@pytest.mark.parametrize("start", [b".\n", b".\r", b".\rX\r\n"], ids=["dot-lf", "dot-cr", "dot-cr-text"])
def test_fake_end_at_very_start_of_data(tern, mode, start):
    """A dot with a bare line ending right after 354 is not the end of data (smuggling at offset 0):
    rejected, or (normalize) stored as one message whose first line is the dot."""
    srv = tern(smtp={"bare_line_endings": mode})
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(start + b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob@tern.test>\r\nDATA\r\nx\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == (554 if mode == "reject" else 250), lines
        c.expect("NOOP", 250, "2.0.0")
    if mode == "reject":
        srv.assert_nothing_delivered(settle=0.5)
        return
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert rest.startswith(b".\n"), rest
    assert b"\nMAIL FROM:<evil@attacker.test>\nRCPT TO:<bob@tern.test>\nDATA\nx\n" in rest, rest
    assert srv.messages("bob@tern.test") == []


def test_large_message_exact(srv):
    """5 MB in odd-sized writes is stored byte for byte (the data path streams across buffer boundaries)."""
    import hashlib
    import random

    rnd = random.Random(5)
    lines = []
    size = 0
    while size < 5 * 1024 * 1024:
        n = rnd.randint(0, 990)
        line = bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz .0123456789") for _ in range(n)) + b"\r\n"
        lines.append(line)
        size += len(line)
    body = b"".join(lines)
    msg = b"Subject: large\r\n\r\n" + body
    # RFC 5321 4.5.2: the client doubles a leading dot on every line.
    stuffed = re.sub(rb"(?m)^\.", b"..", msg)
    assert stuffed.count(b"\n..") > 0
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test> SIZE=%d" % len(msg), 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        wire = stuffed + b".\r\n"
        pos = 0
        while pos < len(wire):
            step = rnd.randint(1, 70000)
            c.send(wire[pos : pos + step])
            pos += step
        c.sock.settimeout(30)
        code, lines_ = c.read_reply()
        assert code == 250, lines_
    [content] = srv.wait_messages("alice@tern.test")
    _, rest = split_trace(content)
    assert hashlib.sha256(rest).hexdigest() == hashlib.sha256(as_stored(msg, content)).hexdigest()
