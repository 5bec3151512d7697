"""A 250 after the final dot is a promise: the message survives kill -9 right after it (issue 2: the 250 only
after fsync). Also graceful shutdown on SIGTERM/SIGINT: stop accepting, answer 421, exit 0."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from ternlib import HOSTNAME, SMTPClosed, as_stored, split_trace


def send_and_kill(srv, rcpt: str, subject: str, body: bytes) -> tuple[bytes, str]:
    """Sends one message over a raw socket and kill -9s the server the instant the 250 has arrived."""
    msg = f"From: <a@example.test>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\n".encode() + body
    with srv.session() as c:
        c.send(f"MAIL FROM:<a@example.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        for expected in (250, 250, 354):
            code, lines = c.read_reply()
            assert code == expected, lines
        c.send(msg + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
        srv.kill9()
        return msg, lines[0]


def assert_complete(srv, rcpt: str, msg: bytes, count: int = 1) -> None:
    got = srv.wait_messages(rcpt, count, timeout=10)
    assert len(got) == count, f"{rcpt}: {len(got)} messages, expected {count}"
    matches = [m for m in got if split_trace(m)[1] == as_stored(msg, m)]
    assert matches, f"no complete copy of the message among {len(got)} in {rcpt}'s Maildir"


def test_kill9_right_after_250(srv):
    body = b"".join(f"line {i:05d} of a durable message\r\n".encode() for i in range(2000))  # ~70 KB
    msg, _ = send_and_kill(srv, "durable@tern.test", "durable", body)
    assert not srv.running()
    srv.start()
    assert_complete(srv, "durable@tern.test", msg)
    # Delivered exactly once, even after the restart (no duplicate from a spool replay).
    time.sleep(1.0)
    assert len(srv.messages("durable@tern.test")) == 1


@pytest.mark.timeout(240)
def test_kill9_loop(tern):
    """20 iterations of send / 250 / kill -9 / restart: every acknowledged message is there, complete, once."""
    srv = tern()
    sent: list[bytes] = []
    deadline = time.monotonic() + 150
    for i in range(20):
        assert time.monotonic() < deadline, f"loop too slow: only {i} iterations"
        body = (f"iteration {i}\r\n".encode()) * (50 * (i + 1))
        msg, _ = send_and_kill(srv, "loop@tern.test", f"loop {i}", body)
        sent.append(msg)
        srv.start()
    srv.wait_messages("loop@tern.test", len(sent), timeout=15)
    time.sleep(1.0)
    got = srv.messages("loop@tern.test")
    assert len(got) == len(sent), f"{len(got)} stored for {len(sent)} acknowledged"
    stored_bodies = sorted(split_trace(m)[1] for m in got)
    expected = sorted(as_stored(m, got[0]) for m in sent)
    assert stored_bodies == expected



def test_kill9_mid_data_nothing_delivered_after_restart(srv):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<partial@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: partial\r\n\r\n" + b"p" * 50000 + b"\r\n")
        time.sleep(0.2)
        srv.kill9()
    srv.start()
    time.sleep(1.0)
    assert srv.messages("partial@tern.test") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_signal_exit_0(srv, sig):
    srv.stop(sig)  # asserts exit status 0 within 10 s
    assert not srv.running()
    with pytest.raises(OSError):
        socket.create_connection((srv.host, srv.port), timeout=1).close()


def test_sigterm_with_idle_session(srv):
    """An idle session is told 421 4.3.2 and closed; the process exits 0."""
    with srv.session() as c:
        c.expect("NOOP", 250, "2.0.0")
        srv.send_signal(signal.SIGTERM)
        code, lines = c.read_reply()
        assert code == 421, lines
        assert lines[0] == f"4.3.2 {HOSTNAME} Service shutting down", lines
        c.wait_closed()
    assert srv.wait_exit() == 0


def test_sigterm_during_data_then_finish_or_abort(srv):
    """A session inside DATA when SIGTERM arrives is finished or cleanly aborted: if the client got a 250 the
    message is stored complete, otherwise nothing is."""
    msg = b"Subject: during shutdown\r\n\r\n" + b"d" * 1000 + b"\r\n"
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<shutdown@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(msg[:200])
        srv.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:
            c.send(msg[200:] + b".\r\n")
            code, lines = c.read_reply()
        except (BrokenPipeError, ConnectionResetError, SMTPClosed):
            code, lines = None, []
    assert srv.wait_exit() == 0
    stored = srv.messages("shutdown@tern.test")
    if code == 250:
        assert len(stored) == 1 and split_trace(stored[0])[1] == as_stored(msg, stored[0])
    else:
        assert code is None or code == 421 or 400 <= code < 500, (code, lines)
        assert stored == []


def test_new_connections_refused_after_sigterm(srv):
    with srv.session() as c:
        srv.send_signal(signal.SIGTERM)
        c.read_reply()  # 421
    assert srv.wait_exit() == 0
    with pytest.raises(OSError):
        socket.create_connection((srv.host, srv.port), timeout=1).close()


def test_restart_keeps_mailboxes(srv):
    srv.deliver("a@example.test", "keep@tern.test", b"Subject: one\r\n\r\n1\r\n")
    srv.restart()
    srv.deliver("a@example.test", "keep@tern.test", b"Subject: two\r\n\r\n2\r\n")
    assert len(srv.wait_messages("keep@tern.test", 2)) == 2


def test_sigterm_with_many_idle_sessions(srv):
    clients = [srv.session() for _ in range(5)]
    try:
        srv.send_signal(signal.SIGTERM)
        for c in clients:
            code, lines = c.read_reply()
            assert code == 421 and lines[0].startswith("4.3.2 "), lines
            c.wait_closed()
    finally:
        for c in clients:
            c.close()
    assert srv.wait_exit() == 0


def test_sigterm_with_client_that_never_reads(srv):
    """A client whose replies pile up unread must not hold the shutdown past 10 s."""
    import threading

    bad = socket.create_connection((srv.host, srv.port), timeout=5)
    bad.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop = threading.Event()

    def flood():
        chunk = b"HELP\r\n" * 2000
        bad.settimeout(0.5)
        while not stop.is_set():
            try:
                bad.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        srv.send_signal(signal.SIGTERM)
        assert srv.wait_exit(timeout=10) == 0
    finally:
        stop.set()
        t.join(timeout=5)
        bad.close()
