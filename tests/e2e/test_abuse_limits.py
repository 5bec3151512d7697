"""Issue 10, items 4 and 6: AUTH and inbound abuse limits, each tried as an attacker would.

AUTH: a bounded number of password checks at once (454 4.7.0 beyond, memory stays bounded, mail
is still stored meanwhile), failures counted when an attempt starts (parallel guesses get no
extra checks), a success clears only its own user name, and a per-user-name limit.
Slot holding: junk commands and rejected RCPTs count as errors, sessions have a maximum age, and
stress mode shortens the waits of idle clients. Untrusted clients come from 127.0.0.2 and up."""

from __future__ import annotations

import base64
import re
import threading
from pathlib import Path

import pytest

from sec_helpers import ALICE, ALICE_PW, BOB, BOB_PW, OTHER_IP, UNTRUSTED_IP, Client, users, wait_until
from ternlib import HOSTNAME, SMTPClosed, free_port, make_message

UNTRUSTED = {"relay": {"trusted_networks": ["127.0.0.1/32"]}}
MIB = 1024 * 1024


def plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def auth_server(tern, **limits):
    """Submission in plaintext (no TLS handshakes to slow the flood down) with alice and bob."""
    port = free_port()
    srv = tern(users=users(), limits=limits,
               submission={"listen": [f"127.0.0.1:{port}"], "require_tls_for_auth": False})
    srv.sub_port = port
    return srv


def sessions(srv, n: int, source: str = UNTRUSTED_IP) -> list[Client]:
    out = []
    for _ in range(n):
        c = Client(srv.sub_port, source=source, timeout=120)
        c.start()
        out.append(c)
    return out


def send_all(clients: list[Client], lines: list[str]) -> None:
    """Sends each client its line as close to the same moment as threads allow."""
    barrier = threading.Barrier(len(clients))

    def go(c: Client, line: str) -> None:
        barrier.wait()
        c.send(line + "\r\n")

    threads = [threading.Thread(target=go, args=(c, ln)) for c, ln in zip(clients, lines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def answer(c: Client) -> tuple[int, str]:
    try:
        code, lines = c.read_reply()
        return code, lines[0]
    except SMTPClosed:
        return 0, "closed"


def peak_rss(srv) -> int:
    """The server's peak resident set (VmHWM), in bytes."""
    status = Path(f"/proc/{srv.proc.pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert m, status
    return int(m.group(1)) * 1024


# ---------------------------------------------------------------- AUTH (item 4)


def test_auth_flood_gets_454_memory_stays_bounded_and_mail_is_still_stored(tern):
    """40 password checks at once against max_auth_checks = 2: the excess is refused with 454 4.7.0
    without touching argon2 (19 MiB each), so the peak RSS stays far below 40 x 19 MiB, and a message
    sent during the flood is stored (storage does not queue behind the checks)."""
    n = 40
    srv = auth_server(tern, max_auth_checks=2, max_auth_failures=1000, max_auth_failures_per_user=1000)
    clients = sessions(srv, n)
    try:
        baseline = peak_rss(srv)
        send_all(clients, [plain(f"user{i}@tern.test", f"guess-{i}") for i in range(n)])
        # While the checks run, mail still goes through.
        with Client(srv.port) as m:
            m.start()
            m.expect("MAIL FROM:<a@example.test>", 250)
            m.expect(f"RCPT TO:<{ALICE}>", 250)
            m.expect("DATA", 354)
            m.send(make_message(subject="during the flood") + b".\r\n")
            code, lines = m.read_reply()
            assert code == 250, lines
        replies = [answer(c) for c in clients]
    finally:
        for c in clients:
            c.close()
    codes = [code for code, _ in replies]
    assert set(codes) <= {535, 454}, replies
    busy = [text for code, text in replies if code == 454]
    assert len(busy) >= n - 10, f"only {len(busy)} of {n} refused with max_auth_checks = 2: {replies}"
    assert all(t == "4.7.0 Too many authentications in progress, try again later" for t in busy), busy
    assert codes.count(535) >= 2, replies
    growth = peak_rss(srv) - baseline
    # 2 checks need about 2 x 19 MiB; 40 unbounded checks would need about 760 MiB.
    assert growth < 200 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB during the flood"
    assert len(srv.wait_messages(ALICE, 1)) == 1


def test_parallel_guesses_are_counted_before_any_is_checked(tern):
    """Nine wrong guesses at once, then the right password, from one address, with
    max_auth_failures = 3: each attempt counts as a failure when it starts, so the tenth is refused
    (421) even though none of the guesses had been answered yet; it must never log in."""
    srv = auth_server(tern, max_auth_failures=3, max_auth_checks=16, max_auth_failures_per_user=1000)
    guessers = sessions(srv, 9)
    last = sessions(srv, 1)[0]
    replies: list = [None] * len(guessers)
    first = threading.Event()

    def collect(i: int, c: Client) -> None:
        replies[i] = answer(c)
        first.set()

    readers = [threading.Thread(target=collect, args=(i, c)) for i, c in enumerate(guessers)]
    try:
        for r in readers:
            r.start()
        send_all(guessers, [plain(ALICE, f"guess-{i}") for i in range(9)])
        # The right password goes once tern has answered one guess (a quick 421, or a 535 after
        # its check): by then it has read all nine, which arrived together. Sent right after
        # the nine without waiting, it could be read before them and rightly succeed.
        assert first.wait(60), "no guess was answered"
        code, text = last.cmd(plain(ALICE, ALICE_PW))
        for r in readers:
            r.join(60)
    finally:
        for c in guessers + [last]:
            c.close()
    assert code == 421 and text.startswith("4.7.0 "), (code, text)
    # At most max_auth_failures guesses were checked; the others were refused before any check.
    checked = [r for r in replies if r[0] == 535]
    assert len(checked) <= 2, replies
    assert all(c in (535, 421) for c, _ in replies), replies


def test_a_valid_login_does_not_clear_guesses_at_another_account(tern):
    """Two wrong passwords for alice, then bob logs in from the same address: bob's success must not
    clear alice's failures, so the third wrong guess for alice reaches max_auth_failures = 3 (421)."""
    srv = auth_server(tern, max_auth_failures=3, max_auth_failures_per_user=1000)
    with sessions(srv, 1)[0] as c:
        assert c.cmd(plain(ALICE, "guess-1"))[0] == 535
        assert c.cmd(plain(ALICE, "guess-2"))[0] == 535
    with sessions(srv, 1)[0] as c:
        assert c.cmd(plain(BOB, BOB_PW))[0] == 235
    with sessions(srv, 1)[0] as c:
        code, text = c.cmd(plain(ALICE, "guess-3"))
        assert (code, text[:6]) == (421, "4.7.0 "), (code, text)


def test_success_resets_the_users_own_failures(tern):
    """An honest typo followed by the right password leaves no failures behind for that user."""
    srv = auth_server(tern, max_auth_failures=100, max_auth_failures_per_user=2)
    with sessions(srv, 1)[0] as c:
        assert c.cmd(plain(ALICE, "typo"))[0] == 535
    with sessions(srv, 1)[0] as c:
        assert c.cmd(plain(ALICE, ALICE_PW))[0] == 235
    with sessions(srv, 1)[0] as c:
        assert c.cmd(plain(ALICE, "typo"))[0] == 535
        assert c.cmd(plain(ALICE, ALICE_PW))[0] == 235


def test_per_user_limit_holds_across_addresses(tern):
    """Guessing alice's password from many addresses: past max_auth_failures_per_user the name is
    locked (454 4.7.0, no password checked, not even the right one) for every address, while
    other users still log in."""
    srv = auth_server(tern, max_auth_failures=100, max_auth_failures_per_user=2)
    for source in (UNTRUSTED_IP, OTHER_IP):
        with sessions(srv, 1, source=source)[0] as c:
            assert c.cmd(plain(ALICE, f"guess-from-{source}"))[0] == 535
    with sessions(srv, 1, source="127.0.0.4")[0] as c:
        code, text = c.cmd(plain(ALICE, ALICE_PW))
        assert (code, text) == (454, "4.7.0 Too many failed logins for this user, try again later")
        # Also for a spelling in other case.
        code, _ = c.cmd(plain(ALICE.upper(), ALICE_PW))
        assert code == 454
        assert c.cmd(plain(BOB, BOB_PW))[0] == 235


# ---------------------------------------------------------------- slot holding (item 6)


@pytest.mark.parametrize("junk", ["NOOP", "RSET", "HELP", "VRFY alice", "EHLO client.test", "HELO client.test"])
def test_junk_commands_count_toward_max_errors(tern, junk):
    """A client repeating a harmless command to hold its slot: the first max_junk_commands are
    free, every one after counts as an error, and max_errors ends the session with 421 4.7.0."""
    srv = tern(limits={"max_junk_commands": 5, "max_errors": 3}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.greet()
        answered = 0
        for _ in range(100):
            c.send(junk + "\r\n")
            code, lines = c.read_reply()
            if code == 421:
                assert lines[0] == f"4.7.0 {HOSTNAME} Too many errors, closing connection", lines
                break
            assert code in (250, 252, 214), (junk, code, lines)
            answered += 1
        else:
            pytest.fail(f"{junk} x 100 never closed the session")
        c.wait_closed()
    # 5 free ones, then 2 errors answered as usual; the 3rd error closes.
    assert answered == 5 + 2, answered


def test_rejected_recipients_count_toward_max_errors(tern):
    """Address harvesting (and relay probing): every rejected RCPT is an error, so a client can try
    at most max_errors addresses per session."""
    srv = tern(users=users(), local={"catch_all": False}, limits={"max_errors": 4}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start()
        c.expect("MAIL FROM:<a@example.test>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("RCPT TO:<nobody1@tern.test>", 550, "5.1.1")
        c.expect("RCPT TO:<nobody2@tern.test>", 550, "5.1.1")
        c.expect("RCPT TO:<someone@other.test>", 550, "5.7.1")
        code, lines = c.cmd("RCPT TO:<nobody3@tern.test>")
        assert (code, lines) == (421, f"4.7.0 {HOSTNAME} Too many errors, closing connection")
        c.wait_closed()


def test_max_session_time_closes_a_busy_session(tern):
    """A client that keeps its session alive by talking is still closed after max_session_time."""
    srv = tern(limits={"max_session_time": "2s", "max_junk_commands": 100000}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP, timeout=30) as c:
        c.start()
        for _ in range(10**7):
            code, text = c.cmd("NOOP")
            if code != 250:
                break
        assert (code, text) == (421, f"4.4.2 {HOSTNAME} Session time limit exceeded, closing connection")
        c.wait_closed()


def test_max_session_time_closes_an_idle_session(tern):
    srv = tern(limits={"max_session_time": "1s"}, **UNTRUSTED)
    with Client(srv.port, source=UNTRUSTED_IP, timeout=30) as c:
        c.start()
        code, lines = c.read_reply()
        assert (code, lines[0]) == (421, f"4.4.2 {HOSTNAME} Session time limit exceeded, closing connection")
        c.wait_closed()


def test_stress_mode_drops_idle_clients_and_lets_new_ones_in(tern):
    """Slot holding: idle clients take more than stress_threshold (here 50 %) of max_connections.
    The waits already in progress shrink to stress_command_timeout, so idle clients are dropped
    with 421 4.4.2 until the load is back under the threshold; stress mode is logged when it
    starts and when it ends, and a new client is served normally afterwards."""
    srv = tern(limits={"max_connections": 10, "max_connections_per_ip": 0, "stress_threshold": 50,
                       "stress_command_timeout": "1s", "command_timeout": "5m"}, **UNTRUSTED)
    idle = [Client(srv.port, source=UNTRUSTED_IP, timeout=60) for _ in range(5)]
    try:
        for c in idle:
            c.greet()
        assert "stress mode started" not in srv.log()
        sixth = Client(srv.port, source=UNTRUSTED_IP, timeout=60)
        idle.append(sixth)
        sixth.greet()
        assert wait_until(lambda: "stress mode started busy=6" in srv.log(), 10), srv.log()
        assert wait_until(lambda: "stress mode ended" in srv.log(), 30), srv.log()
        seen = [c.pending(1.0) for c in idle]
    finally:
        for c in idle:
            c.close()
    dropped = [s for s in seen if s]
    assert dropped, "no idle client was dropped in stress mode"
    assert all(s == f"421 4.4.2 {HOSTNAME} Timeout, closing connection\r\n".encode() for s in dropped), seen
    with Client(srv.port, source=OTHER_IP) as c:
        c.start()
        c.expect("MAIL FROM:<a@example.test>", 250)
