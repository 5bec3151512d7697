"""An in-process aiosmtpd receiver on 127.0.0.1:<free port> that records every transaction and
can answer chosen recipients, MAIL or DATA with a scripted reply; optional STARTTLS and AUTH."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class Handler:
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str | None = None
    messages: list[Received] = field(default_factory=list)
    auth_seen: list[tuple[str, str]] = field(default_factory=list)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content), list(envelope.mail_options))
        )
        return "250 2.0.0 queued as SINK1"


class Sink:
    """`with Sink(...) as s:` -> s.port, s.handler.messages."""

    def __init__(self, tls_context: ssl.SSLContext | None = None, require_starttls: bool = False,
                 auth: dict[str, str] | None = None, auth_require_tls: bool = True, **handler_kw):
        self.handler = Handler(**handler_kw)
        self.port = free_port()
        kw: dict = dict(hostname="127.0.0.1", port=self.port, decode_data=False, data_size_limit=64 << 20,
                        server_hostname="sink.test", ready_timeout=10)
        if tls_context is not None:
            kw["tls_context"] = tls_context
            kw["require_starttls"] = require_starttls
        if auth is not None:
            users = auth

            def authenticator(server, session, envelope, mechanism, auth_data):
                if isinstance(auth_data, LoginPassword):
                    user, pw = auth_data.login.decode(), auth_data.password.decode()
                    self.handler.auth_seen.append((mechanism, user))
                    ok = users.get(user) == pw
                    return AuthResult(success=ok, handled=ok)
                return AuthResult(success=False, handled=False)

            kw["authenticator"] = authenticator
            kw["auth_required"] = True
            kw["auth_require_tls"] = auth_require_tls
        self.controller = Controller(self.handler, **kw)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def __enter__(self) -> "Sink":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


class SilentServer:
    """Accepts connections and never says a word (a hung server)."""

    def __init__(self, greet: bytes = b""):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.greet = greet
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            if self.greet:
                c.sendall(self.greet)
            self.conns.append(c)

    def __enter__(self) -> "SilentServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()


def self_signed(tmp: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A test CA and a server certificate it signed for 127.0.0.1 and localhost (openssl CLI).

    Returns (CA certificate to trust, server key, server SSL context). webpki refuses a CA
    certificate used as the end entity, so a bare self-signed certificate would not do."""
    ca_key, ca, key, csr, cert, ext = (tmp / n for n in ("ca.key", "ca.pem", "key.pem", "srv.csr", "cert.pem", "ext.cnf"))
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "2", "-subj", "/CN=tern test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ca, key, ctx
