"""SMTP smuggling (CVE-2023-51766 and kin): only <CRLF>.<CRLF> ends DATA, and nothing after a fake
end-of-data is ever read as a command. Every test runs in both `smtp.bare_line_endings` modes: "reject"
refuses a message with a bare LF or CR (docs/smtp-replies.md: 554 5.6.0); "normalize" (the default)
stores it as ONE message with CRLF line ends, the fake end and the smuggled commands as its content."""

from __future__ import annotations

import time

import pytest

from ternlib import split_trace


@pytest.fixture(params=["normalize", "reject"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def srv(tern, mode):
    """The default server, with the bare line ending policy of `mode`."""
    return tern(smtp={"bare_line_endings": mode})


def assert_one_message_for_alice(srv, *, containing: bytes) -> bytes:
    """normalize: exactly one message, for alice only, holding the smuggled text as content."""
    [content] = srv.wait_messages("alice@tern.test")
    time.sleep(0.5)
    assert len(srv.delivered_files()) == 1, srv.delivered_files()
    assert srv.messages("bob@tern.test") == []
    _, message = split_trace(content)
    assert containing in message, message
    # Stored with one line ending throughout (LF in the Maildir file): no bare CR survives.
    assert b"\r" not in message, message
    return message

SMUGGLED = (
    b"MAIL FROM:<evil@attacker.test>\r\n"
    b"RCPT TO:<bob@tern.test>\r\n"
    b"DATA\r\n"
    b"From: <ceo@tern.test>\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
)

# The fake end-of-data sequences, each following the text "legit body".
FAKE_ENDS = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-cr": b"\r.\r",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "lf-dot-cr-lf-with-space": b"\n. \r\n",
}


def open_data(c, rcpt: str = "alice@tern.test") -> None:
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
    c.expect(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
    c.expect("DATA", 354)


def assert_single_reply_then_alive(c, mode: str) -> None:
    """After the real end of data: exactly one reply for the message (5xx in reject mode, 250 in
    normalize mode), then the next command's own reply."""
    code, lines = c.read_reply()
    if mode == "reject":
        assert 500 <= code < 600, f"expected 5xx for a message with a fake end-of-data, got {code} {lines}"
    else:
        assert code == 250, f"expected one 250 for the whole normalized message, got {code} {lines}"
    # A NOOP with a marker: if the smuggled MAIL/RCPT/DATA had been read as commands their replies would come first.
    c.send(b"NOOP marker\r\n")
    code2, lines2 = c.read_reply()
    assert (code2, lines2[0]) == (250, "2.0.0 OK"), f"unexpected extra reply {code2} {lines2}"


@pytest.mark.parametrize("fake_end", list(FAKE_ENDS.values()), ids=list(FAKE_ENDS))
def test_fake_end_of_data_rejected_and_nothing_delivered(srv, mode, fake_end):
    with srv.session() as c:
        open_data(c)
        c.send(b"From: <a@example.test>\r\nSubject: legit\r\n\r\nlegit body" + fake_end + SMUGGLED + b"\r\n.\r\n")
        assert_single_reply_then_alive(c, mode)
        c.expect("QUIT", 221)
    if mode == "reject":
        srv.assert_nothing_delivered(settle=1.0)
        assert srv.messages("bob@tern.test") == []
    else:
        msg = assert_one_message_for_alice(srv, containing=b"RCPT TO:<bob@tern.test>\n")
        assert b"legit body\n" in msg, msg


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n"], ids=["lf-dot-lf", "crlf-dot-lf", "lf-dot-crlf"])
def test_smuggling_documented_reply(srv, mode, fake_end):
    with srv.session() as c:
        open_data(c)
        c.send(b"Subject: x\r\n\r\nbody" + fake_end + SMUGGLED + b"\r\n.\r\n")
        code, lines = c.read_reply()
        if mode == "reject":
            assert code == 554, lines
            assert lines[0] == "5.6.0 Message rejected: bare <LF> or <CR> in message data (see SMTP smuggling)", lines
        else:
            assert code == 250, lines
            assert lines[0].startswith("2.0.0 OK: queued as "), lines


def test_fake_end_in_separate_writes(srv, mode):
    """The fake end and the smuggled commands arrive as separate TCP segments, with pauses between them."""
    with srv.session() as c:
        open_data(c)
        c.send(b"Subject: x\r\n\r\nbody\n.\n")
        time.sleep(0.3)
        # If the server ended DATA at the bare-LF dot, its 250 would be waiting now.
        c.sock.settimeout(0.5)
        try:
            early = c.sock.recv(4096)
        except TimeoutError:
            early = b""
        c.sock.settimeout(5)
        assert early == b"", f"server answered a bare-LF end of data: {early!r}"
        c.send(SMUGGLED)
        time.sleep(0.2)
        c.send(b"\r\n.\r\n")
        assert_single_reply_then_alive(c, mode)
    if mode == "reject":
        srv.assert_nothing_delivered(settle=1.0)
    else:
        assert_one_message_for_alice(srv, containing=b"body\n.\nMAIL FROM:<evil@attacker.test>\n")


@pytest.mark.parametrize(
    "body",
    [b"line one\nline two\r\n", b"line one\rline two\r\n", b"trailing bare lf\n", b"\n", b"x\r\r\n"],
    ids=["bare-lf-mid", "bare-cr-mid", "bare-lf-end", "lone-lf", "cr-cr-lf"],
)
def test_bare_lf_or_cr_anywhere_rejected(srv, mode, body):
    # Only <CRLF>.<CRLF> ends the data: a body ending in a bare LF is followed by a real
    # CRLF before the dot (<LF>.<CRLF> is itself a smuggling variant and must not end it).
    with srv.session() as c:
        open_data(c)
        c.send(b"Subject: bare\r\n\r\n" + body + b"\r\n.\r\n")
        code, lines = c.read_reply()
        if mode == "reject":
            assert code == 554, lines
            assert lines[0].startswith("5.6.0 "), lines
        else:
            assert code == 250, lines
        c.expect("NOOP", 250, "2.0.0")
    if mode == "reject":
        srv.assert_nothing_delivered(settle=0.5)
    else:
        # Each bare CR or LF became a line end of its own (written LF in the Maildir file).
        want = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + b"\n"
        msg = assert_one_message_for_alice(srv, containing=b"Subject: bare\n\n")
        assert msg == b"Subject: bare\n\n" + want, msg


def test_bare_lf_in_headers_rejected(srv, mode):
    with srv.session() as c:
        open_data(c)
        c.send(b"Subject: bare\nX-Other: y\r\n\r\nbody\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == (554 if mode == "reject" else 250), lines
    if mode == "reject":
        srv.assert_nothing_delivered(settle=0.5)
    else:
        msg = assert_one_message_for_alice(srv, containing=b"Subject: bare\nX-Other: y\n\nbody\n")
        assert msg == b"Subject: bare\nX-Other: y\n\nbody\n", msg


def test_rejected_then_clean_message_delivered_once(srv, mode):
    """After a smuggling attempt the same session can send one clean message, and exactly one arrives
    (reject mode; in normalize mode the attempt itself is one message for alice, nothing for bob)."""
    with srv.session() as c:
        open_data(c)
        c.send(b"Subject: evil\r\n\r\nbody\n.\n" + SMUGGLED + b"\r\n.\r\n")
        code, _ = c.read_reply()
        if mode == "reject":
            assert 500 <= code < 600
        else:
            assert code == 250
        open_data(c, "carol@tern.test")
        c.send(b"Subject: clean\r\n\r\nclean body\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
        c.expect("QUIT", 221)
    srv.wait_messages("carol@tern.test")
    time.sleep(1.0)
    files = srv.delivered_files()
    assert srv.messages("bob@tern.test") == []
    [carol] = srv.messages("carol@tern.test")
    assert b"clean body" in carol and b"smuggled" not in carol
    if mode == "reject":
        assert len(files) == 1, files
    else:
        assert len(files) == 2, files
        [evil] = srv.messages("alice@tern.test")
        assert b"body\n.\nMAIL FROM:<evil@attacker.test>\n" in evil


def test_smuggled_dot_crlf_crlf_dot_inside_is_just_data(srv):
    """A real <CRLF>.<CRLF> ends the message, so a smuggling payload after it IS a new command sequence; this
    control case shows the harness would notice a second message (the tests above are able to fail)."""
    with srv.session() as c:
        open_data(c)
        c.send(b"Subject: control\r\n\r\nbody\r\n.\r\n" + SMUGGLED + b".\r\n")
        replies = [c.read_reply()[0] for _ in range(5)]
        assert replies == [250, 250, 250, 354, 250], replies
    assert len(srv.wait_messages("alice@tern.test")) == 1
    assert len(srv.wait_messages("bob@tern.test")) == 1
