"""CHUNKING / BDAT inbound (RFC 3030) against a real `tern serve`: messages sent in BDAT chunks
land in the Maildir byte for byte, a large 8-bit message with long lines arrives whole, and
chunks pipelined in one write (RFC 3030 4.2) are split right whatever they contain. The replies
themselves are covered by testdata/transcripts/bdat-*.tr."""

from __future__ import annotations

import random

from ternlib import as_stored, header, make_message, split_trace

RCPT = "alice@tern.test"


def bdat(chunk: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def envelope(c, mail_params: str = "") -> None:
    c.expect(f"MAIL FROM:<a@example.test>{mail_params}", 250, "2.1.0")
    c.expect(f"RCPT TO:<{RCPT}>", 250, "2.1.5")


def send_chunks(c, chunks: list[bytes]) -> str:
    """One BDAT per chunk, each waiting for its reply; returns the LAST one's text."""
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        c.send(bdat(chunk, last))
        code, lines = c.read_reply()
        assert code == 250, lines
        if not last:
            assert lines == [f"2.0.0 {len(chunk)} octets received"], lines
    assert "queued as" in lines[0], lines
    return lines[0]


def stored_body(srv, count: int = 1) -> tuple[bytes, bytes]:
    content = srv.wait_messages(RCPT, count)[-1]
    _, rest = split_trace(content)
    return rest, content


def test_chunking_offered_after_ehlo_only(srv):
    with srv.raw() as c:
        c.greet()
        keywords = [line.split()[0] for line in c.ehlo()[1:]]
        assert "CHUNKING" in keywords, keywords
        assert keywords.index("CHUNKING") == keywords.index("DSN") + 1, keywords
        code, text = c.cmd("HELO client.test")
        assert code == 250 and "CHUNKING" not in text


def test_bdat_message_lands_byte_exact(srv):
    """Chunks split anywhere (mid-line, between CR and LF, on a dot line): the stored message is
    their concatenation, with no dot-unstuffing (a leading dot stays) and tern's trace on top."""
    msg = make_message(
        "chunked", body=b"line one\r\n.leading dot kept\r\n..two dots kept\r\n.\r\nlast line\r\n"
    )
    cuts = [10, msg.index(b"\r\n.leading") + 1, msg.index(b".\r\nlast") + 1]
    chunks = [msg[a:b] for a, b in zip([0] + cuts, cuts + [len(msg)])]
    assert b"".join(chunks) == msg
    with srv.session() as c:
        envelope(c)
        text = send_chunks(c, chunks)
        c.expect("QUIT", 221)
    rest, content = stored_body(srv)
    assert rest == as_stored(msg, content)
    trace, _ = split_trace(content)
    assert any(text.split()[-1] in r for r in header(trace, "Received")), (text, trace)


def test_large_8bit_long_line_message_arrives_whole(srv):
    """300 KiB of 8-bit text with lines far over 998 octets, in uneven chunks (some far larger
    than the server's reads): the message is streamed to the spool, never rejected for its
    lines, and stored whole."""
    rng = random.Random(3030)
    body = bytearray()
    while len(body) < 300 * 1024:
        n = rng.choice([10, 80, 2000, 20000])
        line = bytes(rng.choice(b"abcdefghij \xc3\xa9\xe2\x82\xac.") for _ in range(n))
        body += line.lstrip(b".") + b"\r\n"
    msg = make_message("big 8bit", body=bytes(body))
    sizes = [1, 70_000, 3, 150_000]
    chunks, pos = [], 0
    for s in sizes:
        chunks.append(msg[pos : pos + s])
        pos += s
    chunks.append(msg[pos:])
    with srv.session() as c:
        envelope(c, " BODY=8BITMIME")
        send_chunks(c, chunks)
    rest, content = stored_body(srv)
    assert rest == as_stored(msg, content)


def test_pipelined_chunks_in_one_write(srv):
    """MAIL, RCPT, three BDATs (one holding what DATA would take for the end of data and a
    second transaction) and NOOP in one write: the replies come in order and the smuggled
    commands are message content."""
    smuggle = b"\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob@tern.test>\r\nDATA\r\n"
    msg = make_message("pipelined", body=b"before" + smuggle + b"after\r\n")
    chunks = [msg[:50], msg[50:-20], msg[-20:]]
    with srv.session() as c:
        c.send(
            b"MAIL FROM:<a@example.test>\r\nRCPT TO:<alice@tern.test>\r\n"
            + bdat(chunks[0])
            + bdat(chunks[1])
            + bdat(chunks[2], True)
            + b"NOOP\r\n"
        )
        replies = [c.read_reply() for _ in range(6)]
        assert [code for code, _ in replies] == [250] * 6, replies
        assert replies[2][1] == ["2.0.0 50 octets received"]
        assert replies[3][1] == [f"2.0.0 {len(chunks[1])} octets received"]
        assert "queued as" in replies[4][1][0], replies
        assert replies[5][1] == ["2.0.0 OK"]
        c.expect("QUIT", 221)
    rest, content = stored_body(srv)
    assert rest == as_stored(msg, content)
    assert srv.messages("bob@tern.test") == []


def test_bdat_without_transaction_consumes_its_octets(srv):
    with srv.session() as c:
        c.send(bdat(b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob@tern.test>\r\n", True))
        code, lines = c.read_reply()
        assert code == 503 and lines[0].startswith("5.5.1"), lines
        c.expect("NOOP", 250, "2.0.0")
    srv.assert_nothing_delivered(settle=0.3)


def test_rset_between_chunks_discards(srv):
    """A large first chunk (spooled), then RSET: nothing is delivered; a new BDAT message then
    arrives alone."""
    with srv.session() as c:
        envelope(c)
        big = b"Subject: dropped\r\n\r\n" + b"x" * 200_000 + b"\r\n"
        c.send(bdat(big))
        code, _ = c.read_reply()
        assert code == 250
        c.expect("RSET", 250, "2.0.0")
        envelope(c)
        msg = make_message("kept")
        send_chunks(c, [msg])
    rest, content = stored_body(srv)
    assert rest == as_stored(msg, content)
    assert len(srv.delivered_files()) == 1


def test_too_big_is_552_and_session_goes_on(tern):
    srv = tern(limits={"max_message_size": 10_000})
    with srv.session() as c:
        envelope(c)
        c.send(bdat(b"a" * 6000) + bdat(b"b" * 6000) + bdat(b"c" * 10, True))
        assert c.read_reply()[0] == 250
        code, lines = c.read_reply()
        assert code == 552 and lines[0].startswith("5.3.4"), lines
        code, lines = c.read_reply()
        assert code == 503, lines
        c.expect("RSET", 250)
        envelope(c)
        msg = make_message("fits")
        send_chunks(c, [msg])
    rest, content = stored_body(srv)
    assert rest == as_stored(msg, content)
    assert len(srv.delivered_files()) == 1

