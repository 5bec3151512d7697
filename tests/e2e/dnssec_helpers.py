"""A DNSSEC-signed test zone served by a real authoritative server (BIND 9's `named`, Debian bind9 and
bind9-utils; .ci/run installs them) on 127.0.0.1:<free port>, for the DANE tests (docs/dane.md).

The zone is the root zone itself, signed with a fresh ECDSA P-256 KSK and ZSK (dnssec-keygen, dnssec-signzone,
NSEC): one zone holds every test name (remote.test, mx.remote.test, ...), no delegations, and the KSK alone is
the trust anchor tern gets (`dns.dnssec_trust_anchor`), as the real root's KSK is for a real resolver.

`with SignedDNS(tmp_path, records) as dns:` dns.nameserver ("127.0.0.1:PORT"), dns.trust_anchor (path).
Records are zone-file lines with absolute names: "remote.test. MX 10 mx.remote.test.". `tlsa_311(cert)` and
`tlsa_211(cert)` give the association data (SHA-256 of the certificate's SubjectPublicKeyInfo)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from dnslib import DNSRecord

from send_helpers.fakedns import free_port


def named_available() -> bool:
    return all(shutil.which(t) or Path("/usr/sbin", t).exists() for t in ("named", "dnssec-keygen", "dnssec-signzone"))


def require_named() -> None:
    """Skips on a developer machine without BIND; fails in CI, where .ci/run installs it."""
    if named_available():
        return
    why = "BIND 9 is not installed (apt-get install bind9 bind9-utils)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _run(*args: str, cwd: Path) -> str:
    r = subprocess.run(list(args), cwd=cwd, capture_output=True, timeout=60, text=True)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"
    return r.stdout


def spki_sha256(cert_pem: Path) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (TLSA selector 1, matching type 1), in hex."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert_pem), "-noout", "-pubkey"], capture_output=True,
                         timeout=30, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True,
                         timeout=30, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def tlsa_311(cert_pem: Path) -> str:
    return f"3 1 1 {spki_sha256(cert_pem)}"


def tlsa_211(ca_pem: Path) -> str:
    return f"2 1 1 {spki_sha256(ca_pem)}"


class SignedDNS:
    def __init__(self, workdir: Path, records: list[str], tamper=None):
        """tamper: a function applied to the signed zone's text before named loads it (to make an RRset
        bogus: change its data after signing, its RRSIG no longer matches)."""
        self.tamper = tamper
        self.dir = workdir / "dnssec"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records = records
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.trust_anchor = self.dir / "root.key"

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _sign(self) -> Path:
        d = self.dir
        ksk = _run(_tool("dnssec-keygen"), "-q", "-K", str(d), "-a", "ECDSAP256SHA256", "-f", "KSK", "-n", "ZONE",
                   ".", cwd=d).strip()
        zsk = _run(_tool("dnssec-keygen"), "-q", "-K", str(d), "-a", "ECDSAP256SHA256", "-n", "ZONE", ".",
                   cwd=d).strip()
        lines = [
            "$TTL 300",
            ". IN SOA ns.root. hostmaster.root. 1 3600 600 86400 300",
            ". IN NS ns.root.",
            "ns.root. IN A 127.0.0.1",
            f"$INCLUDE {d / (ksk + '.key')}",
            f"$INCLUDE {d / (zsk + '.key')}",
            *self.records,
        ]
        zone = d / "root.zone"
        zone.write_text("\n".join(lines) + "\n")
        _run(_tool("dnssec-signzone"), "-K", str(d), "-o", ".", "-f", str(d / "root.zone.signed"), str(zone), cwd=d)
        # The KSK's DNSKEY record, without the comments dnssec-keygen writes around it.
        key = [line for line in (d / (ksk + ".key")).read_text().splitlines()
               if line.strip() and not line.startswith(";")]
        self.trust_anchor.write_text("\n".join(key) + "\n")
        signed = d / "root.zone.signed"
        if self.tamper is not None:
            before = signed.read_text()
            after = self.tamper(before)
            assert after != before, "tamper changed nothing"
            signed.write_text(after)
        return signed

    def __enter__(self) -> "SignedDNS":
        require_named()
        signed = self._sign()
        conf = self.dir / "named.conf"
        conf.write_text(f"""
options {{
    directory "{self.dir}";
    pid-file "{self.dir}/named.pid";
    session-keyfile "{self.dir}/session.key";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
}};
controls {{ }};
zone "." {{ type primary; file "{signed}"; }};
""")
        self.log = open(self.dir / "named.log", "w")
        self.proc = subprocess.Popen([_tool("named"), "-g", "-4", "-c", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"named exited: {(self.dir / 'named.log').read_text()}"
            try:
                reply = DNSRecord.parse(DNSRecord.question(".", "SOA").send("127.0.0.1", self.port, timeout=0.5))
                if reply.rr:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"named did not answer: {(self.dir / 'named.log').read_text()}"
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
