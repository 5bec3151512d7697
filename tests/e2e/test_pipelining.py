"""RFC 2920 command pipelining: many commands in one write, one reply each, in order."""

from __future__ import annotations

from ternlib import queue_id


def read_codes(c, n: int) -> list[tuple[int, str]]:
    out = []
    for _ in range(n):
        code, lines = c.read_reply()
        out.append((code, lines[0]))
    return out


def test_envelope_group_in_one_write(srv):
    """RFC 2920 3.1: MAIL, RCPTs and DATA sent together; DATA ends the group."""
    with srv.session() as c:
        c.send(
            b"MAIL FROM:<a@example.test>\r\n"
            b"RCPT TO:<alice@tern.test>\r\n"
            b"RCPT TO:<bob@tern.test>\r\n"
            b"DATA\r\n"
        )
        replies = read_codes(c, 4)
        assert [r[0] for r in replies] == [250, 250, 250, 354], replies
        c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    assert len(srv.wait_messages("alice@tern.test")) == 1
    assert len(srv.wait_messages("bob@tern.test")) == 1


def test_whole_session_in_one_write(srv):
    """Greeting aside, the whole session - EHLO to QUIT including the message - arrives as one segment."""
    with srv.raw() as c:
        c.greet()
        c.send(
            b"EHLO client.test\r\n"
            b"MAIL FROM:<a@example.test>\r\n"
            b"RCPT TO:<alice@tern.test>\r\n"
            b"DATA\r\n"
            b"Subject: one write\r\n\r\nall at once\r\n.\r\n"
            b"QUIT\r\n"
        )
        replies = read_codes(c, 6)
        assert [r[0] for r in replies] == [250, 250, 250, 354, 250, 221], replies
        qid = queue_id(replies[4][1])
        assert qid
        assert c.wait_closed() == b""
    [content] = srv.wait_messages("alice@tern.test")
    assert content.rstrip(b"\r\n").endswith(b"all at once")
    assert b"QUIT" not in content


def test_replies_in_order_with_mixed_outcomes(tern):
    srv = tern(relay={"trusted_networks": ["10.99.0.0/16"]})
    with srv.session() as c:
        c.send(
            b"MAIL FROM:<a@example.test>\r\n"
            b"RCPT TO:<alice@tern.test>\r\n"
            b"RCPT TO:<x@elsewhere.test>\r\n"
            b"RCPT TO:<>\r\n"
            b"RCPT TO:<bob@tern.test>\r\n"
            b"NOOP\r\n"
            b"DATA\r\n"
        )
        replies = read_codes(c, 7)
        codes = [r[0] for r in replies]
        assert codes == [250, 250, 550, 501, 250, 250, 354], replies
        assert replies[2][1].startswith("5.7.1"), replies
        assert replies[3][1].startswith("5.1.3"), replies
        c.send(b"Subject: mixed\r\n\r\nx\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    assert len(srv.wait_messages("alice@tern.test")) == 1
    assert len(srv.wait_messages("bob@tern.test")) == 1
    assert len(srv.delivered_files()) == 2


def test_failed_mail_makes_pipelined_rcpt_and_data_fail(srv):
    """RFC 2920 3.1: if MAIL fails, the RCPTs and DATA that follow in the group fail too, and nothing is stored."""
    with srv.session() as c:
        c.send(
            b"MAIL FROM:<a@>\r\n"
            b"RCPT TO:<alice@tern.test>\r\n"
            b"DATA\r\n"
            b"Subject: should not arrive\r\n\r\nx\r\n.\r\n"
            b"NOOP\r\n"
        )
        replies = read_codes(c, 3)
        assert [r[0] for r in replies] == [501, 503, 503], replies
        # The message lines are now read as commands: every one of them gets an error, then NOOP's 250.
        seen = []
        for _ in range(10):
            code, lines = c.read_reply()
            seen.append((code, lines[0]))
            if code == 250:
                break
        assert seen[-1][0] == 250, seen
        assert all(code >= 500 for code, _ in seen[:-1]), seen
    srv.assert_nothing_delivered(settle=0.5)


def test_several_transactions_in_one_write(srv):
    with srv.session() as c:
        batch = b""
        for i in range(5):
            batch += (
                b"MAIL FROM:<a@example.test>\r\n"
                + f"RCPT TO:<user{i}@tern.test>\r\n".encode()
                + b"DATA\r\n"
                + f"Subject: batch {i}\r\n\r\nmessage {i}\r\n.\r\n".encode()
            )
        batch += b"RSET\r\nNOOP\r\nQUIT\r\n"
        c.send(batch)
        replies = read_codes(c, 5 * 4 + 3)
        expected = [250, 250, 354, 250] * 5 + [250, 250, 221]
        assert [r[0] for r in replies] == expected, replies
        qids = [queue_id(replies[4 * i + 3][1]) for i in range(5)]
        assert len(set(qids)) == 5
    for i in range(5):
        [content] = srv.wait_messages(f"user{i}@tern.test")
        assert f"message {i}".encode() in content


def test_many_pipelined_noops(tern):
    """A large group is answered completely and in order (the server must not stall on its own output).
    NOOP is made free here (max_junk_commands): this is about output, not the junk-command limit."""
    srv = tern(limits={"max_junk_commands": 100000})
    n = 2000
    with srv.session() as c:
        c.send(b"".join(f"NOOP {i}\r\n".encode() for i in range(n)) + b"QUIT\r\n")
        for i in range(n):
            code, lines = c.read_reply()
            assert code == 250, (i, lines)
        code, _ = c.read_reply()
        assert code == 221
