"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314) end to end: real clients (smtplib, swaks,
openssl s_client), the STARTTLS command-injection case (CVE-2011-0411 class), the session restart
after the handshake, hostile TLS input, and certificate reload on SIGHUP."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from sec_helpers import (ALICE, ALICE_PW, BOB, Client, Ports, cert_der, client_context, make_cert,
                         smtplib_client, tls_config, wait_until)
from ternlib import HOSTNAME, header, make_message, split_trace, tern_bin


@pytest.fixture
def tls_srv(tern, tmp_path):
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports))
    srv.ports = ports
    return srv


def ehlo_keywords(lines: list[str]) -> list[str]:
    return [ln.split()[0].upper() for ln in lines[1:] if ln.strip()]


def assert_tls_received(content: bytes, keyword: str = "ESMTPSA") -> str:
    trace, _ = split_trace(content)
    received = header(trace, "Received")
    assert received, f"no Received header: {content[:400]!r}"
    top = received[0]
    assert f"with {keyword}" in top, f"Received should say 'with {keyword}': {top!r}"
    assert "(using TLSv1.3" in top or "(using TLSv1.2" in top, f"Received should record the TLS version: {top!r}"
    return top


# ---------------------------------------------------------------- real clients with AUTH


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["starttls-smtp", "starttls-submission", "implicit-submissions"])
def test_smtplib_tls_auth_delivers(tls_srv, mode, mech):
    port = {"starttls-smtp": tls_srv.port, "starttls-submission": tls_srv.ports.submission,
            "implicit-submissions": tls_srv.ports.submissions}[mode]
    msg = make_message(subject=f"smtplib {mode} {mech}", sender=ALICE, to=BOB)
    with smtplib_client(port, implicit_tls=mode.startswith("implicit")) as s:
        s.ehlo()
        if mode.startswith("starttls"):
            assert s.has_extn("starttls"), f"STARTTLS not offered on {mode}: {s.esmtp_features}"
            code, text = s.starttls(context=client_context())
            assert code == 220, (code, text)
            s.ehlo()
        assert not s.has_extn("starttls"), f"STARTTLS offered again inside TLS: {s.esmtp_features}"
        assert mech in s.esmtp_features.get("auth", "").upper().split(), f"AUTH {mech} not offered: {s.esmtp_features}"
        s.user, s.password = ALICE, ALICE_PW
        code, text = s.auth(mech, getattr(s, f"auth_{mech.lower()}"))
        assert code == 235, (code, text)
        s.sendmail(ALICE, [BOB], msg)
    got = tls_srv.wait_messages(BOB)
    assert_tls_received(got[0])


def swaks(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    if shutil.which("swaks") is None:
        pytest.fail("swaks is not installed (apt-get install swaks); CI must have it")
    return subprocess.run(["swaks", "--timeout", "15", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["starttls-smtp", "starttls-submission", "implicit-submissions"])
def test_swaks_tls_auth_delivers(tls_srv, mode, mech):
    port = {"starttls-smtp": tls_srv.port, "starttls-submission": tls_srv.ports.submission,
            "implicit-submissions": tls_srv.ports.submissions}[mode]
    tls_flag = "--tlsc" if mode.startswith("implicit") else "--tls"
    r = swaks("--server", f"127.0.0.1:{port}", tls_flag, "--auth", mech, "--auth-user", ALICE,
              "--auth-password", ALICE_PW, "--from", ALICE, "--to", BOB, "--ehlo", "client.test",
              "--header", f"Subject: swaks {mode} {mech}")
    assert r.returncode == 0, f"swaks failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert "235 2.7.0" in r.stdout, r.stdout
    got = tls_srv.wait_messages(BOB)
    assert_tls_received(got[0])


def test_received_says_esmtps_without_auth(tls_srv):
    """STARTTLS without AUTH on port 25 (MTA to MTA): Received says ESMTPS and names the TLS version."""
    with Client(tls_srv.port) as c:
        c.start()
        c.starttls()
        c.ehlo()
        c.expect("MAIL FROM:<sender@example.test>", 250)
        c.expect(f"RCPT TO:<{BOB}>", 250)
        c.expect("DATA", 354)
        c.send(make_message(to=BOB) + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    got = tls_srv.wait_messages(BOB)
    top = assert_tls_received(got[0], "ESMTPS")
    assert "ESMTPSA" not in top, top


# ---------------------------------------------------------------- openssl s_client


def test_openssl_s_client_starttls_shows_subject(tls_srv, tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed")
    cert = tmp_path / "cert" / "cert.pem"
    subject = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-subject"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{tls_srv.port}",
                        "-servername", HOSTNAME, "-brief", "-nocommands", "-ign_eof"],
                       input="EHLO client.test\r\nQUIT\r\n", capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert "CONNECTION ESTABLISHED" in out, out
    assert "Protocol version: TLSv1.3" in out or "Protocol version: TLSv1.2" in out, out
    # -brief prints "Peer certificate: <subject>"; compare with the file's subject.
    want = subject.removeprefix("subject=").strip()
    assert want and want in out, f"s_client output does not show the certificate subject {want!r}:\n{out}"
    # Inside the tunnel the new session answers EHLO and QUIT.
    assert f"250-{HOSTNAME} Hello client.test" in out and "221 2.0.0" in out, out


def test_self_signed_cert_subject_names_host(tmp_path):
    """`tern cert self-signed --host NAME`: the subject (what s_client and mail logs show) names the host,
    and the SAN holds it too (RFC 6125: clients match the SAN)."""
    cert, _key = make_cert(tmp_path / "c", "mx.tern.test")
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-ext", "subjectAltName"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert "DNS:mx.tern.test" in text, text
    subject = text.splitlines()[0]
    assert "mx.tern.test" in subject, f"certificate subject should be CN=mx.tern.test, got {subject!r}"


def run_cert(out_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tern_bin()), "cert", "self-signed", "--host", "mx.tern.test",
                           "--out-dir", str(out_dir), *extra], capture_output=True, text=True, timeout=60)


def test_self_signed_cert_never_overwrites_without_force(tmp_path):
    """Issue 10: `tern cert self-signed` creates its files exclusively: the key is 0600, and a second run
    into the same directory exits 73 naming --force, leaving both files byte for byte as they were."""
    r = run_cert(tmp_path)
    assert r.returncode == 0, r.stderr
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    assert key.stat().st_mode & 0o077 == 0, f"key.pem is {oct(key.stat().st_mode)}, want 0600"
    before = (cert.read_bytes(), key.read_bytes())
    r = run_cert(tmp_path)
    assert r.returncode == 73, (r.returncode, r.stderr)
    assert "already exists" in r.stderr and "--force" in r.stderr, r.stderr
    assert (cert.read_bytes(), key.read_bytes()) == before, "an existing pair was overwritten"
    r = run_cert(tmp_path, "--force")
    assert r.returncode == 0, r.stderr
    assert (cert.read_bytes(), key.read_bytes()) != before, "--force did not replace the pair"
    assert key.stat().st_mode & 0o077 == 0, oct(key.stat().st_mode)


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_self_signed_cert_never_follows_a_symlink(tmp_path, dangling):
    """A symlink planted at key.pem (pointing at a file elsewhere, or at a name that does not exist yet)
    is never written through, with or without --force: the target stays untouched (or absent) and
    --force replaces the link itself with a regular 0600 file."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "precious"
    if not dangling:
        victim.write_bytes(b"do not touch\n")
        os.chmod(victim, 0o644)
    os.symlink(victim, out / "key.pem")

    def victim_state():
        return (victim.read_bytes(), victim.stat().st_mode) if victim.exists() else None

    before = victim_state()
    r = run_cert(out)
    assert r.returncode == 73, (r.returncode, r.stderr)
    assert "key.pem" in r.stderr and "--force" in r.stderr, r.stderr
    assert victim_state() == before, "the symlink's target was written"
    assert not (out / "cert.pem").exists(), "a refused run left a half-written pair"
    r = run_cert(out, "--force")
    assert r.returncode == 0, r.stderr
    assert victim_state() == before, "--force wrote through the symlink"
    key = out / "key.pem"
    assert not key.is_symlink() and key.is_file(), "key.pem is still a link"
    assert key.stat().st_mode & 0o077 == 0, oct(key.stat().st_mode)
    assert b"PRIVATE KEY" in key.read_bytes()


# ---------------------------------------------------------------- the session around STARTTLS


def test_ehlo_before_and_after_tls_on_submission(tls_srv):
    with Client(tls_srv.ports.submission) as c:
        c.greet()
        before = ehlo_keywords(c.ehlo())
        assert "STARTTLS" in before, before
        assert "AUTH" not in before, f"AUTH must not be offered in plaintext (RFC 4954 4): {before}"
        c.starttls()
        after = ehlo_keywords(c.ehlo())
        assert "AUTH" in after, after
        assert "STARTTLS" not in after, f"STARTTLS offered inside TLS (RFC 3207 4.2): {after}"


def test_ehlo_after_tls_on_smtp_lists_auth_not_starttls(tls_srv):
    with Client(tls_srv.port) as c:
        c.greet()
        before = ehlo_keywords(c.ehlo())
        assert "STARTTLS" in before and "AUTH" not in before, before
        c.starttls()
        after = ehlo_keywords(c.ehlo())
        assert "AUTH" in after and "STARTTLS" not in after, after
        # A second STARTTLS inside TLS is refused, and the session goes on.
        code, text = c.cmd("STARTTLS")
        assert code in (454, 503), (code, text)
        c.expect("NOOP", 250)


def test_session_starts_over_after_tls(tls_srv):
    """RFC 3207 4.2: after the handshake the server forgets everything: EHLO again, no transaction."""
    with Client(tls_srv.port) as c:
        c.start()
        c.expect("MAIL FROM:<sender@example.test>", 250)
        # STARTTLS inside a transaction: either refused, or the transaction is dropped by the handshake.
        code, _ = c.cmd("STARTTLS")
        if code != 220:
            c.expect("RSET", 250)
            c.starttls()
        else:
            c.tls_handshake()
        c.expect("MAIL FROM:<sender@example.test>", 503, "5.5.1")  # no EHLO yet on the new session
        c.ehlo()
        c.expect(f"RCPT TO:<{BOB}>", 503, "5.5.1")  # the MAIL from before TLS is gone
        c.expect("MAIL FROM:<sender@example.test>", 250)


@pytest.mark.parametrize("injected", [b"RSET\r\n", b"MAIL FROM:<evil@attacker.test>\r\n", b"NOOP\r\nNOOP\r\nQUIT\r\n"])
def test_starttls_injection_discarded(tls_srv, injected):
    """CVE-2011-0411 class: commands pipelined after STARTTLS in the same write arrived in plaintext
    (a man in the middle could have put them there) and must never be executed or answered."""
    with Client(tls_srv.port) as c:
        c.start()
        c.send(b"STARTTLS\r\n" + injected)
        code, lines = c.read_reply()
        assert code == 220, (code, lines)
        # Give the server time to (wrongly) answer the injected commands in plaintext.
        time.sleep(0.3)
        c.tls_handshake()  # fails if any plaintext reply arrived after the 220
        c.send(b"NOOP\r\n")
        code, lines = c.read_reply()
        assert code == 250 and lines == ["2.0.0 OK"], f"first reply inside TLS is not the NOOP's: {code} {lines}"
        extra = c.pending(0.7)
        assert extra == b"", f"replies to injected commands arrived inside TLS: {extra!r}"
        # The injected MAIL did not open a transaction, and QUIT did not close the session.
        c.ehlo()
        c.expect("MAIL FROM:<sender@example.test>", 250, "2.1.0")


# ---------------------------------------------------------------- hostile TLS input


def test_garbage_tls_records_closed_server_still_serves(tls_srv):
    with Client(tls_srv.port) as c:
        c.start()
        c.expect("STARTTLS", 220)
        c.send(os.urandom(4096))
        t0 = time.monotonic()
        c.wait_closed(timeout=5)
        assert time.monotonic() - t0 < 5
    # A garbage "record" that claims to be a handshake of 16 MB must not be buffered either.
    with Client(tls_srv.ports.submissions) as c:
        c.send(b"\x16\x03\x01\xff\xff" + os.urandom(2048))
        c.wait_closed(timeout=5)
    with Client(tls_srv.port) as c:
        c.start()
        c.starttls()
        c.ehlo()
        c.expect("NOOP", 250)
    assert tls_srv.running()


def test_starttls_then_stall_is_closed(tern, tmp_path):
    srv = tern(**tls_config(tmp_path, Ports(), limits={"command_timeout": "2s"}))
    with Client(srv.port) as c:
        c.start()
        c.expect("STARTTLS", 220)
        t0 = time.monotonic()
        c.wait_closed(timeout=8)
        took = time.monotonic() - t0
        assert 1.5 <= took <= 6, f"closed after {took:.1f}s, command_timeout is 2s"
    # Half a ClientHello, then silence.
    with Client(srv.port) as c:
        c.start()
        c.expect("STARTTLS", 220)
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        t0 = time.monotonic()
        c.wait_closed(timeout=8)
        assert time.monotonic() - t0 <= 6
    with Client(srv.port) as c:
        c.start()
        c.expect("NOOP", 250)


def test_implicit_tls_stall_is_closed(tern, tmp_path):
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports, limits={"command_timeout": "2s"}))
    with Client(ports.submissions) as c:
        t0 = time.monotonic()
        got = c.wait_closed(timeout=8)
        took = time.monotonic() - t0
        assert got == b"", f"implicit TLS port must not speak before the handshake: {got!r}"
        assert took <= 6, f"closed after {took:.1f}s, command_timeout is 2s"
    assert srv.running()


def test_sigterm_with_stalled_tls_handshakes(tls_srv):
    """Clients stalled in a TLS handshake (after STARTTLS, or on the implicit-TLS port) must not hold up a
    shutdown: command_timeout is 5 minutes here, tern must still exit 0 within a few seconds."""
    stalled = Client(tls_srv.port)
    implicit = Client(tls_srv.ports.submissions)
    try:
        stalled.start()
        stalled.expect("STARTTLS", 220)
        implicit.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello
        time.sleep(0.5)
        t0 = time.monotonic()
        tls_srv.send_signal(signal.SIGTERM)
        assert tls_srv.wait_exit(timeout=8) == 0
        assert time.monotonic() - t0 < 5
    finally:
        stalled.close()
        implicit.close()


def test_plaintext_client_on_implicit_tls_port(tls_srv):
    """A plaintext SMTP client on the implicit-TLS port gets no greeting and no command is run."""
    with Client(tls_srv.ports.submissions) as c:
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@tern.test>\r\n")
        got = c.wait_closed(timeout=8)
        assert b"250" not in got and b"220" not in got, got


# ---------------------------------------------------------------- certificate reload


def test_sighup_reloads_certificate_sessions_survive(tern, tmp_path):
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports))
    cert = tmp_path / "cert" / "cert.pem"
    key = tmp_path / "cert" / "key.pem"
    old_der = cert_der(cert)
    with Client(srv.port) as old:
        old.start()
        old.starttls()
        old.ehlo()
        assert old.peer_cert_der() == old_der
        with Client(ports.submissions, implicit_tls=True) as old465:
            old465.greet()
            # Replace the pair in place, then SIGHUP.
            new_cert, new_key = make_cert(tmp_path / "new", "mx2.tern.test")
            new_der = cert_der(new_cert)
            assert new_der != old_der
            shutil.copyfile(new_key, key)
            shutil.copyfile(new_cert, cert)
            srv.send_signal(signal.SIGHUP)
            assert wait_until(lambda: "reloaded" in srv.log(), 5), f"no reload in the log:\n{srv.log()}"

            def fresh_cert(port: int, implicit: bool) -> bytes:
                with Client(port, implicit_tls=implicit) as c:
                    if not implicit:
                        c.start()
                        c.starttls()
                    else:
                        c.greet()
                    return c.peer_cert_der()

            assert fresh_cert(srv.port, False) == new_der, "new STARTTLS connection still gets the old certificate"
            assert fresh_cert(ports.submissions, True) == new_der, "new implicit-TLS connection gets the old certificate"
            # The sessions established before the reload keep working.
            old.expect("MAIL FROM:<sender@example.test>", 250)
            old.expect(f"RCPT TO:<{BOB}>", 250)
            old.expect("DATA", 354)
            old.send(make_message(subject="before reload", to=BOB) + b".\r\n")
            code, lines = old.read_reply()
            assert code == 250, lines
            old465.ehlo()
            old465.expect("NOOP", 250)
    srv.wait_messages(BOB)
    # A broken file on the next SIGHUP keeps the current certificate.
    cert.write_text("not a certificate\n")
    srv.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload failed" in srv.log(), 5), srv.log()
    with Client(srv.port) as c:
        c.start()
        c.starttls()
        assert c.peer_cert_der() == new_der
    assert srv.running()


def test_starttls_not_offered_without_cert(srv):
    with srv.session() as c:
        c.send(b"EHLO client.test\r\n")
        _code, lines = c.read_reply()
        assert "STARTTLS" not in ehlo_keywords(lines)
        code, text = c.cmd("STARTTLS")
        assert code == 454 or code == 502, (code, text)
        c.expect("NOOP", 250)


def test_tls_handshake_is_tls12_or_newer(tls_srv):
    """The negotiated protocol is TLS 1.3 (or 1.2); the client's local OpenSSL refuses TLS 1.0/1.1 on its own,
    so offering those could not show anything about the server and is not tried."""
    with Client(tls_srv.ports.submissions, implicit_tls=True) as c:
        assert c.sock.version() in ("TLSv1.3", "TLSv1.2"), c.sock.version()
        c.greet()
