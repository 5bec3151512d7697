"""Helpers for the security end-to-end tests (issue 5): certificates and password hashes made by the
tern binary itself, a TLS-capable raw SMTP client that can bind to any 127/8 source address (Linux
routes all of 127.0.0.0/8 to lo, so 127.0.0.2 is an "untrusted" client), smtplib with a source
address, and readers for the queue."""

from __future__ import annotations

import base64
import functools
import json
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

from ternlib import READ_TIMEOUT, RawSMTP, free_port, tern_bin

TRUSTED_IP = "127.0.0.1"
UNTRUSTED_IP = "127.0.0.2"
OTHER_IP = "127.0.0.3"

ALICE = "alice@tern.test"
ALICE_PW = "alice-correct-horse"
BOB = "bob@tern.test"
BOB_PW = "bob-battery-staple"


# ---------------------------------------------------------------- material made by `tern`


def make_cert(out_dir: Path, host: str = "mx.tern.test") -> tuple[Path, Path]:
    """`tern cert self-signed --host HOST --out-dir DIR` -> (cert.pem, key.pem)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(tern_bin()), "cert", "self-signed", "--host", host, "--out-dir", str(out_dir)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, f"tern cert self-signed failed: {r.stderr!r}"
    cert, key = out_dir / "cert.pem", out_dir / "key.pem"
    assert cert.is_file() and key.is_file(), f"tern cert did not write {cert} and {key}"
    return cert, key


@functools.lru_cache(maxsize=None)
def hash_password(password: str) -> str:
    """`printf '%s' PW | tern passwd` -> the argon2id PHC string (cached: argon2 is slow on purpose)."""
    r = subprocess.run([str(tern_bin()), "passwd"], input=password.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, f"tern passwd failed: {r.stderr!r}"
    lines = [ln for ln in r.stdout.decode().splitlines() if ln.startswith("$argon2")]
    assert lines, f"tern passwd printed no $argon2 hash: {r.stdout!r}"
    return lines[0].strip()


def users() -> list[dict]:
    return [
        {"name": ALICE, "password": hash_password(ALICE_PW)},
        {"name": BOB, "password": hash_password(BOB_PW)},
    ]


class Ports:
    """Free loopback ports for the submission listeners, chosen before the config is written."""

    def __init__(self) -> None:
        self.submission = free_port()
        self.submissions = free_port()


def tls_config(tmp: Path, ports: Ports | None = None, host: str = "mx.tern.test", **extra) -> dict:
    """Config overrides for a server with [tls], users alice and bob, and (if ports) submission
    on ports.submission and implicit TLS on ports.submissions. `extra` is merged on top."""
    cert, key = make_cert(tmp / "cert", host)
    cfg: dict = {"tls": {"cert": str(cert), "key": str(key)}, "users": users()}
    if ports is not None:
        cfg["submission"] = {"listen": [f"127.0.0.1:{ports.submission}"]}
        cfg["submissions"] = {"listen": [f"127.0.0.1:{ports.submissions}"]}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


# ---------------------------------------------------------------- clients


def client_context() -> ssl.SSLContext:
    """TLS client context without verification: the test certificates are self-signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client(RawSMTP):
    """RawSMTP that can bind its source address, upgrade with STARTTLS, or start in TLS (RFC 8314)."""

    def __init__(self, port: int, source: str = TRUSTED_IP, host: str = "127.0.0.1",
                 timeout: float = READ_TIMEOUT, implicit_tls: bool = False):
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        self.sock.settimeout(timeout)
        self.buf = b""
        if implicit_tls:
            self.sock = client_context().wrap_socket(self.sock, server_hostname="mx.tern.test")

    def tls_handshake(self) -> None:
        """Wraps the socket in TLS. Fails if the server sent anything we have not read yet."""
        assert self.buf == b"", f"bytes pending before the TLS handshake: {self.buf!r}"
        self.sock = client_context().wrap_socket(self.sock, server_hostname="mx.tern.test")

    def starttls(self) -> None:
        self.expect("STARTTLS", 220)
        self.tls_handshake()

    def auth_plain(self, user: str, password: str) -> tuple[int, str]:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {token}")

    def auth_login(self, user: str, password: str) -> tuple[int, str]:
        code, text = self.cmd("AUTH LOGIN")
        if code != 334:
            return code, text
        code, text = self.cmd(base64.b64encode(user.encode()).decode())
        if code != 334:
            return code, text
        return self.cmd(base64.b64encode(password.encode()).decode())

    def pending(self, wait: float = 0.5) -> bytes:
        """Whatever the server sends within `wait` seconds beyond what was read (b"" if nothing)."""
        got = self.buf
        self.buf = b""
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, socket.timeout, ssl.SSLError, ConnectionResetError):
            pass
        finally:
            self.sock.settimeout(READ_TIMEOUT)
        return got

    def peer_cert_der(self) -> bytes:
        assert isinstance(self.sock, ssl.SSLSocket), "not a TLS connection"
        der = self.sock.getpeercert(binary_form=True)
        assert der, "no peer certificate"
        return der


def smtplib_client(port: int, source: str = TRUSTED_IP, implicit_tls: bool = False) -> smtplib.SMTP:
    if implicit_tls:
        return smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", timeout=15,
                                source_address=(source, 0), context=client_context())
    return smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15, source_address=(source, 0))


def cert_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


# ---------------------------------------------------------------- the queue


def queued_envelopes(data_dir: Path) -> list[dict]:
    """Every committed envelope under <data_dir>/queue/env (see docs/spool-format.md)."""
    env = data_dir / "queue" / "env"
    if not env.is_dir():
        return []
    out = []
    for p in sorted(env.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            out.append(json.loads(p.read_text()))
    return out


def queued_recipients(data_dir: Path) -> list[str]:
    return [r["address"] for e in queued_envelopes(data_dir) for r in e.get("recipients", [])]


def wait_until(pred, timeout: float, step: float = 0.1):
    """Polls pred() until it returns a truthy value or the time is up; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)
