"""`tern send` hands credentials only to a server whose certificate verifies (issue 10), pins a
self-signed server with `--tls-fingerprint SHA256`, and never falls back to cleartext over a certificate.

The servers are a real `tern serve` with a certificate from `tern cert self-signed --host 127.0.0.1`
(submission port with AUTH, and port 25 with STARTTLS), and an aiosmtpd sink with STARTTLS and AUTH
that records every AUTH it sees, to prove that no AUTH command reached a server that did not verify.

Covered: --user refused (exit 75, before AUTH, the error names --tls-ca FILE and --tls-fingerprint
SHA256) under opportunistic and required TLS; --user accepted with --tls-ca and with --tls-fingerprint
(hex from hashlib, and openssl's own output line), delivered with ESMTPSA; a wrong fingerprint refused
(both fingerprints named, nothing delivered, no cleartext retry); opportunistic STARTTLS to an
unverifiable certificate delivered over TLS (Received: with ESMTPS) and `-v` says why it is unverified;
--user with --tls none or --insecure and malformed or conflicting --tls-fingerprint are usage errors (64)."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from sec_helpers import ALICE, ALICE_PW, BOB, Ports, cert_der, tls_config
from send_helpers.run import err, tern_send
from send_helpers.sink import Sink, self_signed

HINT_CA = "--tls-ca FILE"
HINT_PIN = "--tls-fingerprint SHA256"


@pytest.fixture
def sub(tern, tmp_path):
    """tern serve with [tls] (self-signed for 127.0.0.1), users alice and bob, submission with AUTH."""
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports, host="127.0.0.1"))
    srv.ports = ports
    srv.cert = tmp_path / "cert" / "cert.pem"
    return srv


@pytest.fixture
def password(tmp_path):
    pw = tmp_path / "alice.pw"
    pw.write_text(ALICE_PW + "\n")
    return pw


def fingerprint(cert) -> str:
    """SHA-256 of the DER certificate, lower-case hex without colons (what msmtp users paste too)."""
    return hashlib.sha256(cert_der(cert)).hexdigest()


def colons(hexdigest: str) -> str:
    """`AB:CD:...`: how openssl prints a fingerprint and how tern names one in its errors."""
    return ":".join(hexdigest[i:i + 2] for i in range(0, len(hexdigest), 2)).upper()


def submit(srv, password, *extra: str) -> subprocess.CompletedProcess:
    """alice -> bob through the submission port with AUTH, STARTTLS required unless `extra` says."""
    return tern_send("--server", f"127.0.0.1:{srv.ports.submission}", "--from", ALICE, "--to", BOB,
                     "--subject", "policy", "--user", ALICE, "--password-file", str(password), *extra,
                     stdin=b"hello\n")


# ---------------------------------------------------------------- no credentials to an unverified server


@pytest.mark.parametrize("tls", ["opportunistic", "required"])
def test_user_refused_before_auth_when_the_certificate_does_not_verify(tmp_path, tls):
    _ca, _key, ctx = self_signed(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("s3cret-pass\n")
    with Sink(tls_context=ctx, auth={"user1": "s3cret-pass"}) as sink:
        r = tern_send("--server", f"127.0.0.1:{sink.port}", "--tls", tls, "--user", "user1",
                      "--password-file", str(pw), "--from", "a@example.test", "--to", "b@example.test",
                      "-v", stdin=b"x\n")
        assert sink.handler.auth_seen == [], "an AUTH reached a server whose certificate did not verify"
        assert not sink.messages
    log = err(r)
    assert r.returncode == 75, log
    assert HINT_CA in log and HINT_PIN in log, log
    assert "UnknownIssuer" in log, log
    assert "C: AUTH" not in log, log
    # The password never left in the clear either: no reconnect without TLS.
    assert "without TLS" not in log, log


def test_user_refused_against_tern_serve_nothing_delivered(sub, password):
    r = submit(sub, password, "--tls", "required")
    assert r.returncode == 75, err(r)
    assert HINT_CA in err(r) and HINT_PIN in err(r), err(r)
    assert sub.delivered_files() == []


def test_user_with_tls_ca_is_delivered_with_auth(sub, password):
    r = submit(sub, password, "--tls", "required", "--tls-ca", str(sub.cert), "-v")
    assert r.returncode == 0, err(r) + sub.log()
    assert "certificate verified" in err(r), err(r)
    stored = sub.wait_messages(BOB)[0].decode(errors="replace")
    assert "with ESMTPSA" in stored, stored


@pytest.mark.parametrize("form", ["hashlib-hex", "openssl-line"])
def test_user_with_the_right_fingerprint_is_delivered(sub, password, form):
    if form == "hashlib-hex":
        pin = fingerprint(sub.cert)
    else:
        out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(sub.cert)],
                             capture_output=True, check=True, timeout=30)
        pin = out.stdout.decode().strip()  # "sha256 Fingerprint=AB:CD:..." (SHA256 in older openssl)
        assert "=" in pin, pin
    r = submit(sub, password, "--tls-fingerprint", pin, "-v")
    assert r.returncode == 0, err(r) + sub.log()
    assert "certificate matches the pinned fingerprint" in err(r), err(r)
    stored = sub.wait_messages(BOB)[0].decode(errors="replace")
    assert "with ESMTPSA" in stored, stored


def test_a_wrong_fingerprint_is_refused_naming_both(sub, password):
    wrong = hashlib.sha256(b"not the server's certificate").hexdigest()
    r = submit(sub, password, "--tls-fingerprint", wrong)
    log = err(r)
    assert r.returncode == 75, log
    assert colons(wrong) in log and colons(fingerprint(sub.cert)) in log, log
    assert sub.delivered_files() == []


def test_a_wrong_fingerprint_never_falls_back_to_cleartext(sub):
    """Opportunistic, no credentials: a mismatching pin ends the attempt instead of a plaintext retry."""
    wrong = hashlib.sha256(b"still not it").hexdigest()
    r = tern_send("--server", f"127.0.0.1:{sub.port}", "--tls-fingerprint", wrong, "-v",
                  "--from", "sender@example.test", "--to", BOB, stdin=b"x\n")
    log = err(r)
    assert r.returncode == 75, log
    assert "without TLS" not in log and "C: MAIL" not in log, log
    assert sub.delivered_files() == []


# ---------------------------------------------------------------- opportunistic: encrypted, unverified


def test_opportunistic_unverified_certificate_delivers_over_tls(sub):
    r = tern_send("--server", f"127.0.0.1:{sub.port}", "-v", "--from", "sender@example.test", "--to", BOB,
                  "--subject", "unverified", stdin=b"still encrypted\n")
    log = err(r)
    assert r.returncode == 0, log + sub.log()
    assert "certificate NOT verified" in log and "UnknownIssuer" in log, log
    assert "without TLS" not in log, log
    assert log.count("C: EHLO") == 2, log  # RFC 3207: EHLO again over TLS, on the same connection
    stored = sub.wait_messages(BOB)[0].decode(errors="replace")
    assert "with ESMTPS" in stored, stored


def test_opportunistic_without_verbose_says_nothing_about_the_certificate(sub):
    r = tern_send("--server", f"127.0.0.1:{sub.port}", "--from", "sender@example.test", "--to", BOB,
                  stdin=b"quiet\n")
    assert r.returncode == 0, err(r)
    assert err(r) == "", err(r)
    assert "with ESMTPS" in sub.wait_messages(BOB)[0].decode(errors="replace")


# ---------------------------------------------------------------- usage errors, before any connection


@pytest.mark.parametrize("flags, needle", [
    (["--tls", "none"], "--allow-plaintext-auth"),
    (["--insecure"], HINT_PIN),
])
def test_user_where_nothing_could_verify_is_a_usage_error(sub, password, flags, needle):
    r = submit(sub, password, *flags)
    assert r.returncode == 64, err(r)
    assert needle in err(r), err(r)
    assert sub.delivered_files() == []


@pytest.mark.parametrize("flags, needle", [
    (["--tls-fingerprint", "AB:CD"], "32"),
    (["--tls-fingerprint", "a9993e364706816aba3e25717850c26c9cd0d89d"], "SHA-1"),
    (["--tls-fingerprint", "zz" * 32], "not a hexadecimal digit"),
    (["--tls-fingerprint", "00" * 32, "--insecure"], "--insecure"),
    (["--tls-fingerprint", "00" * 32, "--tls-ca", "/nonexistent.pem"], "--tls-ca"),
])
def test_bad_or_conflicting_fingerprints_are_usage_errors(flags, needle):
    r = tern_send("--server", "127.0.0.1:1", "--from", "a@example.test", "--to", "b@example.test", *flags,
                  stdin=b"x\n")
    assert r.returncode == 64, err(r)
    assert "--tls-fingerprint" in err(r) and needle in err(r), err(r)
