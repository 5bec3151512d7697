"""`tern spf check` and `tern dkim verify`: the inbound verification engine (tern-auth on mail-auth) run by hand,
against a fake DNS (dnslib) and messages signed by an independent signer (dkimpy).

Covered: SPF pass / fail / softfail / neutral / none, permerror for more than 10 DNS lookups and for more than 2
void lookups (RFC 7208 4.6.4), temperror for a SERVFAIL, each with its exit code and an Authentication-Results field
that Python `authres` parses; `tern dkim verify` on a dkimpy-signed message (pass), with the body altered, with a
signed header altered, with the key in DNS not the signing key, with text appended past an `l=` body length, and
with an `x=` expiry in the past (none passes, exit 1)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import authres
import dkim

from send_helpers.fakedns import FakeDNS
from ternlib import tern_bin

HERE = Path(__file__).resolve().parent
TESTDATA = HERE.parents[1] / "crates" / "auth" / "testdata"
CLIENT = "192.0.2.1"
STRANGER = "203.0.113.9"


def run_tern(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # No config: TERN_CONFIG unset so the machine's /etc/tern is not read by accident.
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run([str(tern_bin()), *args], capture_output=True, text=True, timeout=timeout, env=env)


def header_of(stdout: str) -> authres.AuthenticationResultsHeader:
    """The Authentication-Results field tern printed, unfolded (RFC 5322 2.2.3) and parsed by authres."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Authentication-Results:"))
    field = lines[start]
    for line in lines[start + 1:]:
        if not line[:1] in (" ", "\t"):
            break
        field += " " + line.strip()
    return authres.AuthenticationResultsHeader.parse(field)


def results(header: authres.AuthenticationResultsHeader, method: str) -> list[str]:
    return [r.result for r in header.results if r.method == method]


SPF_ZONE = {
    "pass.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
    "soft.test": {"TXT": ["v=spf1 ip4:198.51.100.1 ~all"]},
    "neutral.test": {"TXT": ["v=spf1 ?all"]},
    # Eleven a: mechanisms that each resolve (to another address): one more DNS lookup than allowed.
    "many.test": {"TXT": ["v=spf1 " + " ".join(f"a:h{i}.many.test" for i in range(11)) + " -all"]},
    **{f"h{i}.many.test": {"A": ["198.51.100.7"]} for i in range(11)},
    # Three names that do not exist: one void lookup more than allowed.
    "void.test": {"TXT": ["v=spf1 a:v1.void.test a:v2.void.test a:v3.void.test ip4:192.0.2.0/24 -all"]},
    "broken.test": "SERVFAIL",
}


def spf_check(dns: FakeDNS, sender: str, ip: str = CLIENT, helo: str = "client.test") -> subprocess.CompletedProcess:
    return run_tern("spf", "check", "--ip", ip, "--from", sender, "--helo", helo, "--nameserver", dns.addr)


def test_spf_check_results_exit_codes_and_header():
    expected = [
        # sender, ip, result, exit code
        ("a@pass.test", CLIENT, "pass", 0),
        ("a@pass.test", STRANGER, "fail", 1),
        ("a@soft.test", CLIENT, "softfail", 1),
        ("a@neutral.test", CLIENT, "neutral", 2),
        ("a@nothing.test", CLIENT, "none", 2),
        ("a@many.test", CLIENT, "permerror", 3),
        ("a@void.test", CLIENT, "permerror", 3),
        ("a@broken.test", CLIENT, "temperror", 75),
    ]
    with FakeDNS(SPF_ZONE) as dns:
        for sender, ip, result, code in expected:
            r = spf_check(dns, sender, ip)
            assert r.returncode == code, (sender, ip, r.returncode, r.stdout, r.stderr)
            assert r.stdout.startswith(f"result: {result}\n"), (sender, r.stdout)
            assert "explanation: " in r.stdout, r.stdout
            header = header_of(r.stdout)
            assert results(header, "spf") == [result], (sender, r.stdout)
            mailfrom = [p.value for res in header.results for p in res.properties if p.name == "mailfrom"]
            assert mailfrom == [sender], r.stdout
        void = spf_check(dns, "a@void.test")
        assert "void" in void.stdout and "RFC 7208 4.6.4" in void.stdout, void.stdout


def test_spf_check_of_the_null_sender_uses_helo():
    with FakeDNS({"client.pass.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]}}) as dns:
        r = spf_check(dns, "", helo="client.pass.test")
        assert r.returncode == 0, r
        helo = [p.value for res in header_of(r.stdout).results for p in res.properties if p.name == "helo"]
        assert helo == ["client.pass.test"], r.stdout


def test_spf_check_refuses_a_sender_that_is_not_an_address():
    r = run_tern("spf", "check", "--ip", CLIENT, "--from", "nobody", "--helo", "x.test", "--nameserver", "127.0.0.1:9")
    assert r.returncode == 64, r
    assert "not an address" in r.stderr


# ---------------------------------------------------------------- DKIM

DOMAIN = "signer.test"
MESSAGE = (b"From: Alice <alice@signer.test>\r\nTo: bob@receiver.test\r\nSubject: quarterly report\r\n"
           b"Date: Mon, 1 Jun 2026 10:00:00 +0000\r\nMessage-ID: <r1@signer.test>\r\n\r\n"
           b"The numbers are in.\r\nSee you Monday.\r\n")


def record_of(key: Path) -> str:
    r = run_tern("dkim", "record", "--key", str(key))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def dkimpy_signed(key: Path, selector: str = "s1") -> bytes:
    sig = dkim.sign(MESSAGE, selector.encode(), DOMAIN.encode(), key.read_bytes(),
                    include_headers=[b"From", b"To", b"Subject", b"Date", b"Message-ID"])
    return sig + MESSAGE


def dkimpy_signed_with_length(key: Path) -> bytes:
    """Signed with `l=` (the body length), so text appended later is outside the signature."""
    sig = dkim.sign(MESSAGE, b"s1", DOMAIN.encode(), key.read_bytes(),
                    include_headers=[b"From", b"To", b"Subject", b"Date", b"Message-ID"], length=True)
    return sig + MESSAGE


class _Expired(dkim.DKIM):
    """dkimpy's signer with t= and x= (RFC 6376 3.5) in 2020: a good signature, long expired."""

    def gen_header(self, fields, *args, **kwargs):
        fields = [(n, v) for n, v in fields if n != b"t"] + [(b"t", b"1600000000"), (b"x", b"1600003600")]
        return super().gen_header(fields, *args, **kwargs)


def dkimpy_signed_expired(key: Path) -> bytes:
    sig = _Expired(MESSAGE).sign(b"s1", DOMAIN.encode(), key.read_bytes(),
                                 include_headers=[b"From", b"To", b"Subject", b"Date", b"Message-ID"])
    return sig + MESSAGE


def verify(tmp: Path, dns: FakeDNS, message: bytes, name: str) -> subprocess.CompletedProcess:
    path = tmp / name
    path.write_bytes(message)
    return run_tern("dkim", "verify", str(path), "--nameserver", dns.addr)


def test_dkim_verify_passes_a_dkimpy_signature_and_fails_each_tampering(tmp_path):
    key = TESTDATA / "rsa-2048-pkcs1.pem"
    other = tmp_path / "other.pem"
    keygen = run_tern("dkim", "keygen", "--domain", DOMAIN, "--selector", "s2", "--out", str(other))
    assert keygen.returncode == 0, keygen.stderr
    zone = {
        f"s1._domainkey.{DOMAIN}": {"TXT": [record_of(key)]},
        # s2 publishes another key than the one that signs as s2 below.
        f"s2._domainkey.{DOMAIN}": {"TXT": [record_of(other)]},
    }
    signed = dkimpy_signed(key)
    # The oracle agrees the signature is good before tern is asked.
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: zone[name.decode().rstrip(".")]["TXT"][0].encode())
    with FakeDNS(zone) as dns:
        ok = verify(tmp_path, dns, signed, "ok.eml")
        assert ok.returncode == 0, (ok.stdout, ok.stderr)
        assert f"signature 1: dkim=pass d={DOMAIN} s=s1" in ok.stdout, ok.stdout
        header = header_of(ok.stdout)
        assert results(header, "dkim") == ["pass"], ok.stdout

        # The same file saved with LF line endings still verifies (it travelled with CRLF).
        lf = verify(tmp_path, dns, signed.replace(b"\r\n", b"\n"), "lf.eml")
        assert lf.returncode == 0, (lf.stdout, lf.stderr)

        cases = {
            "body": signed.replace(b"The numbers are in.", b"The numbers are out."),
            "header": signed.replace(b"Subject: quarterly report", b"Subject: quarterly refund"),
            "wrong-key": dkimpy_signed(key, "s2"),
            # The l= trick: a signed message with text appended after the signed length.
            "appended-after-l": dkimpy_signed_with_length(key) + b"Click here: http://evil.test/\r\n",
            "expired": dkimpy_signed_expired(key),
        }
        for name, message in cases.items():
            r = verify(tmp_path, dns, message, f"{name}.eml")
            assert r.returncode == 1, (name, r.stdout, r.stderr)
            assert "did not pass" in r.stderr, (name, r.stderr)
            got = results(header_of(r.stdout), "dkim")
            assert len(got) == 1 and got[0] != "pass", (name, r.stdout)


def test_dkim_verify_without_a_signature_exits_1(tmp_path):
    with FakeDNS({}) as dns:
        r = verify(tmp_path, dns, MESSAGE, "plain.eml")
        assert r.returncode == 1, r
        assert "no DKIM-Signature" in r.stderr
