"""SMTP AUTH (RFC 4954) and submission (RFC 6409): AUTH only over TLS, 530 before AUTH, 535 for bad
credentials, sender ownership, malformed AUTH input, and brute-force throttling per client IP
(growing delay, then 421, while other IPs are unaffected)."""

from __future__ import annotations

import base64
import threading
import time

import pytest

from sec_helpers import (ALICE, ALICE_PW, BOB, BOB_PW, OTHER_IP, UNTRUSTED_IP, Client, Ports, tls_config)
from ternlib import SMTPClosed, make_message


@pytest.fixture
def sub(tern, tmp_path):
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports))
    srv.ports = ports
    return srv


def tls_session(srv, port: int | None = None, source: str = "127.0.0.1") -> Client:
    """Greeting, EHLO, STARTTLS, EHLO on the submission port (or `port`)."""
    c = Client(port or srv.ports.submission, source=source)
    c.start()
    c.starttls()
    c.ehlo()
    return c


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


# ---------------------------------------------------------------- the submission rules


def test_mail_before_auth_on_submission_530(sub):
    with tls_session(sub) as c:
        c.expect(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")
        code, _ = c.auth_plain(ALICE, ALICE_PW)
        assert code == 235
        c.expect(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")


def test_mail_before_auth_on_implicit_tls_530(sub):
    with Client(sub.ports.submissions, implicit_tls=True) as c:
        c.start()
        c.expect(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")


def test_mail_before_tls_on_submission_530(sub):
    with Client(sub.ports.submission) as c:
        c.start()
        c.expect(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_auth_in_plaintext_refused_538(sub, listener):
    port = sub.port if listener == "smtp" else sub.ports.submission
    with Client(port) as c:
        c.start()
        code, text = c.auth_plain(ALICE, ALICE_PW)
        assert (code, text.split()[0]) == (538, "5.7.11"), (code, text)
        code, text = c.cmd("AUTH LOGIN")
        assert (code, text.split()[0]) == (538, "5.7.11"), (code, text)
        # The password was never checked, and the session is usable.
        c.expect("NOOP", 250)


def test_auth_without_tls_allowed_when_configured(tern, tmp_path):
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports, submission={"listen": [f"127.0.0.1:{ports.submission}"],
                                                        "require_tls_for_auth": False}))
    with Client(ports.submission) as c:
        c.greet()
        assert any(ln.upper().startswith("AUTH") for ln in c.ehlo()), "AUTH should be offered in plaintext here"
        code, text = c.auth_plain(ALICE, ALICE_PW)
        assert code == 235, (code, text)
    # The MTA port still never takes a plaintext password.
    with Client(srv.port) as c:
        c.start()
        code, _ = c.auth_plain(ALICE, ALICE_PW)
        assert code == 538


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("who", ["wrong-password", "unknown-user", "other-users-password"])
def test_bad_credentials_535(sub, mech, who):
    user, pw = {"wrong-password": (ALICE, "nope"), "unknown-user": ("mallory@tern.test", ALICE_PW),
                "other-users-password": (ALICE, BOB_PW)}[who]
    with tls_session(sub) as c:
        code, text = c.auth_plain(user, pw) if mech == "PLAIN" else c.auth_login(user, pw)
        assert (code, text.split()[0]) == (535, "5.7.8"), (code, text)
        c.expect(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")  # still not authenticated


def test_authzid_must_match_user(sub):
    """AUTH PLAIN authzid (RFC 4616): alice's password must not let her act as bob."""
    with tls_session(sub) as c:
        code, text = c.cmd("AUTH PLAIN " + b64(f"{BOB}\0{ALICE}\0{ALICE_PW}"))
        assert code == 535, (code, text)
        code, text = c.cmd("AUTH PLAIN " + b64(f"{ALICE}\0{ALICE}\0{ALICE_PW}"))
        assert code == 235, (code, text)


def test_enforce_sender_553(sub):
    with tls_session(sub) as c:
        assert c.auth_login(ALICE, ALICE_PW)[0] == 235
        c.expect(f"MAIL FROM:<{BOB}>", 553, "5.7.1")
        c.expect("MAIL FROM:<ceo@other.test>", 553, "5.7.1")
        c.expect("MAIL FROM:<ALICE@TERN.TEST>", 250, "2.1.0")


def test_enforce_sender_off(tern, tmp_path):
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports, submission={"listen": [f"127.0.0.1:{ports.submission}"],
                                                        "enforce_sender": False}))
    srv.ports = ports
    with tls_session(srv) as c:
        assert c.auth_plain(ALICE, ALICE_PW)[0] == 235
        c.expect(f"MAIL FROM:<{BOB}>", 250, "2.1.0")


def test_auth_twice_and_inside_transaction_503(sub):
    with tls_session(sub) as c:
        assert c.auth_plain(ALICE, ALICE_PW)[0] == 235
        code, _ = c.auth_plain(ALICE, ALICE_PW)
        assert code == 503
    with tls_session(sub, port=sub.port) as c:  # port 25: MAIL without AUTH is fine
        c.expect("MAIL FROM:<x@example.test>", 250)
        code, _ = c.auth_plain(ALICE, ALICE_PW)
        assert code == 503


def test_authentication_dropped_by_new_tls_session_not_possible(sub):
    """After TLS the session restarts; an AUTH before TLS is impossible, so nothing can leak across."""
    with Client(sub.ports.submission) as c:
        c.start()
        assert c.auth_plain(ALICE, ALICE_PW)[0] == 538
        c.starttls()
        c.ehlo()
        c.expect(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")


# ---------------------------------------------------------------- malformed AUTH input


@pytest.mark.parametrize("line", [
    "AUTH PLAIN !!!not-base64!!!",
    "AUTH PLAIN " + b64("no-nul-separators"),
    "AUTH PLAIN " + b64("\0only-user"),
    "AUTH PLAIN " + b64(b"\0alice@tern.test\0\xff\xfe"),  # not UTF-8: must not crash, just fail
])
def test_auth_plain_garbage(sub, line):
    with tls_session(sub) as c:
        code, text = c.cmd(line)
        assert code in (501, 535), (code, text)
        if "!!!" in line:
            assert (code, text.split()[0]) == (501, "5.5.2"), (code, text)
        c.expect("NOOP", 250, "2.0.0")
        assert c.auth_plain(ALICE, ALICE_PW)[0] == 235


def test_auth_login_garbage_username(sub):
    with tls_session(sub) as c:
        c.expect("AUTH LOGIN", 334)
        code, text = c.cmd("%%%garbage%%%")
        assert (code, text.split()[0]) == (501, "5.5.2"), (code, text)
        c.expect("NOOP", 250, "2.0.0")


def test_auth_cancel(sub):
    with tls_session(sub) as c:
        c.expect("AUTH LOGIN", 334)
        code, _ = c.cmd("*")
        assert code == 501
        c.expect("NOOP", 250, "2.0.0")


def test_auth_line_100kb_in_command(sub):
    big = "AUTH PLAIN " + "A" * 100_000
    with tls_session(sub) as c:
        c.expect(big, 500, "5.5.2")
        c.expect("NOOP", 250, "2.0.0")
        assert c.auth_plain(ALICE, ALICE_PW)[0] == 235
    assert_other_clients_fine(sub)


@pytest.mark.parametrize("mech", ["LOGIN", "PLAIN"])
def test_auth_response_100kb_ends_exchange(sub, mech):
    """A 100 KB line as the AUTH response: 500 5.5.2, and the exchange is over (RFC 4954 4: the server
    answers the AUTH command once). The next line is a command again, not a credential."""
    with tls_session(sub) as c:
        c.expect(f"AUTH {mech}", 334)
        c.expect("A" * 100_000, 500, "5.5.2")
        code, text = c.cmd("NOOP")
        assert code == 250, f"NOOP after an aborted AUTH exchange was taken as a SASL response: {code} {text!r}"
        assert c.auth_plain(ALICE, ALICE_PW)[0] == 235
    assert_other_clients_fine(sub)


def assert_other_clients_fine(srv) -> None:
    with tls_session(srv, source=OTHER_IP) as c:
        assert c.auth_plain(BOB, BOB_PW)[0] == 235
        c.expect(f"MAIL FROM:<{BOB}>", 250)
    assert srv.running()


def test_message_through_submission_lands(sub):
    with tls_session(sub) as c:
        assert c.auth_plain(ALICE, ALICE_PW)[0] == 235
        c.expect(f"MAIL FROM:<{ALICE}>", 250)
        c.expect(f"RCPT TO:<{BOB}>", 250)
        c.expect("DATA", 354)
        c.send(make_message(sender=ALICE, to=BOB) + b".\r\n")
        assert c.read_reply()[0] == 250
    assert "with ESMTPSA" in sub.wait_messages(BOB)[0].decode(errors="replace")


# ---------------------------------------------------------------- brute force


def timed_auth(c: Client, user: str, pw: str) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        code, text = c.auth_plain(user, pw)
    except SMTPClosed as e:
        return 0, f"closed: {e}", time.monotonic() - t0
    return code, text, time.monotonic() - t0


def test_bruteforce_throttled_then_421_other_ip_unaffected(tern, tmp_path):
    max_failures = 3
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports, limits={"max_auth_failures": max_failures},
                            relay={"trusted_networks": ["127.0.0.1/32"]}))
    srv.ports = ports
    results: list[tuple[int, str, float]] = []
    honest: list = []

    def honest_client() -> None:
        # Starts while the attacker is being slowed down; must not wait behind the attacker's delay.
        time.sleep(1.0)
        with tls_session(srv, source=OTHER_IP) as c:
            honest.append(timed_auth(c, BOB, BOB_PW))

    t = threading.Thread(target=honest_client)
    t.start()
    with tls_session(srv, source=UNTRUSTED_IP) as c:
        for _ in range(max_failures + 1):
            code, text, took = timed_auth(c, ALICE, f"guess-{len(results)}")
            results.append((code, text, took))
            if code != 535:
                break
        tail = c.pending(1.0)
    t.join(timeout=30)
    codes = [r[0] for r in results]
    # Every failure before the limit is 535 5.7.8; at the limit (or the attempt after it): 421 and close.
    assert codes[-1] == 421, f"no 421 after {max_failures} failures: {results}"
    assert len(codes) in (max_failures, max_failures + 1), results
    assert all(code == 535 and text.startswith("5.7.8") for code, text, _ in results[:-1]), results
    assert results[-1][1].startswith("4.7.0"), results
    assert tail == b"", f"connection not closed after 421: {tail!r}"
    # Growing delay: 1 s per earlier failure (argon2 itself may add some).
    delays = [r[2] for r in results]
    for i in range(1, len(delays)):
        assert delays[i] >= i * 1.0 - 0.1, f"attempt {i + 1} answered after {delays[i]:.2f}s; delays {delays}"
    assert delays[-1] > delays[0] + 1.5, delays
    # The honest client from another IP authenticated at the same time, without the attacker's delay.
    assert honest and honest[0][0] == 235, honest
    # Compared with the attacker's own last answer (its penalty of 2 s or more plus the same
    # argon2 cost), not with a fixed number of seconds: a loaded machine slows both alike.
    assert honest[0][2] < delays[-1], f"honest client waited {honest[0][2]:.2f}s; attacker delays {delays}"


def test_bruteforce_lockout_holds_on_reconnect(tern, tmp_path):
    """After max_auth_failures from one IP, reconnecting must not give that IP a fresh set of guesses:
    within the memory window, even the right password is not accepted from it (otherwise the limit
    costs an attacker one reconnect, and parallel connections multiply the guessing rate)."""
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports, limits={"max_auth_failures": 2}))
    srv.ports = ports
    with tls_session(srv, source=UNTRUSTED_IP) as c:
        for _ in range(3):
            code, _text, _ = timed_auth(c, ALICE, "wrong")
            if code != 535:
                break
        assert code == 421
    with tls_session(srv, source=UNTRUSTED_IP) as c:
        code, text, _ = timed_auth(c, ALICE, ALICE_PW)
        assert code != 235, (
            "an IP over limits.max_auth_failures can still log in (and so keep guessing) on a new connection: "
            f"{code} {text!r}")
    # Another IP is not locked out.
    with tls_session(srv, source=OTHER_IP) as c:
        assert c.auth_plain(ALICE, ALICE_PW)[0] == 235

