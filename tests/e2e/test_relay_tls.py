"""Outbound TLS policy and smarthost AUTH when relaying (docs/configuration.md [routes]: tls = none |
opportunistic | required, ca_file, user + password_file).

The remote is an aiosmtpd server with STARTTLS and optional AUTH that records, per message and per AUTH
attempt, whether the session was encrypted, and logs every STARTTLS/AUTH command it saw. Certificates come
from the openssl CLI: a test CA, a server certificate it signed (SAN IP:127.0.0.1, DNS:localhost), one it
signed for another name only, a certificate from a second CA nobody trusts, and a bare self-signed one.

Covered: opportunistic to a self-signed server (delivered over TLS); opportunistic after a failed handshake
(delivered in plaintext on a new connection, never AUTH there); none (plaintext although STARTTLS is
offered); required with ca_file (delivered over TLS); required with an unverifiable certificate, a wrong
name, or no STARTTLS (deferred 451 4.7.5, nothing reaches the remote); smarthost "*" with AUTH over
required TLS (login and password seen by the remote, over TLS); user/password_file with tls none, opportunistic
or unset (a config error: check-config and serve exit 78 naming routes.X.tls); wrong password (535: not delivered, the
recipient fails and the sender gets a 5.7.8 bounce); two routes naming the same host and port keep their own
TLS policy and login, both within one message and across a pooled connection."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from relay_helpers import (ALICE, WAIT, envelope, log_tail, queue_ids, queue_show, recipient, relay_config, tern_queue,
                           wait_for, wait_gone)
from ternlib import Tern, free_port, make_message, tern_bin

BOB = "bob@remote.test"
USER = "u"
PASSWORD = "s3cret pass-\u00e9"  # a blank and a non-ASCII letter: must arrive exactly


# ---------------------------------------------------------------- certificates


@dataclass
class Certs:
    ca: Path  # the test CA (what a route's ca_file names)
    good: tuple[Path, Path]  # (cert, key) signed by the CA for IP:127.0.0.1, DNS:localhost
    wrong_name: tuple[Path, Path]  # signed by the CA for DNS:wrong-name.test only
    other_ca: tuple[Path, Path]  # signed by a second CA that nobody trusts, for IP:127.0.0.1
    self_signed: tuple[Path, Path]  # self-signed, IP:127.0.0.1


def _openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], capture_output=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr.decode(errors='replace')}"


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _new_key(key)
    _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(d: Path, name: str, san: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
    _new_key(key)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    d = tmp_path_factory.mktemp("relay-tls-certs")
    ca = _ca(d, "test-ca")
    other = _ca(d, "untrusted-ca")
    self_key, self_cert = d / "self.key", d / "self.pem"
    _new_key(self_key)
    _openssl("req", "-x509", "-new", "-key", str(self_key), "-out", str(self_cert), "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    return Certs(
        ca=ca[0],
        good=_leaf(d, "good", "IP:127.0.0.1,DNS:localhost", ca),
        wrong_name=_leaf(d, "wrong", "DNS:wrong-name.test", ca),
        other_ca=_leaf(d, "other", "IP:127.0.0.1,DNS:localhost", other),
        self_signed=(self_cert, self_key),
    )


def server_context(pair: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair[0]), str(pair[1]))
    return ctx


def unusable_context(pair: tuple[Path, Path]) -> ssl.SSLContext:
    """A server context whose handshake with tern always fails: TLS 1.2 with only a CBC suite, which rustls
    does not implement (it offers AEAD suites only)."""
    ctx = server_context(pair)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    return ctx


# ---------------------------------------------------------------- the TLS/AUTH remote


@dataclass
class Msg:
    conn: int
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool  # the transaction ran inside STARTTLS
    login: str | None  # the AUTH login of the session, if any


@dataclass
class AuthTry:
    conn: int
    mechanism: str
    login: str
    password: str
    tls: bool
    ok: bool


class _Handler:
    def __init__(self, remote: "TlsRemote"):
        self.remote = remote

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content if envelope.original_content is not None else envelope.content
        auth = session.auth_data
        login = auth.login.decode("utf-8", "replace") if isinstance(auth, LoginPassword) else None
        self.remote.messages.append(Msg(session.conn_no, envelope.mail_from, list(envelope.rcpt_tos),
                                        bytes(content), session.ssl is not None, login))
        if self.remote.data_reply is not None:
            return self.remote.data_reply
        return f"250 2.0.0 queued as TLSREMOTE{len(self.remote.messages)}"


class _RecordingSMTP(SMTP):
    """Numbers connections and logs (conn, verb, encrypted) for STARTTLS, AUTH and MAIL before acting on them,
    so a test can prove what tern never sent."""

    def __init__(self, handler, remote: "TlsRemote", **kw):
        super().__init__(handler, **kw)
        self._remote = remote

    def connection_made(self, transport):
        super().connection_made(transport)
        with self._remote.lock:
            self._remote.total += 1
            self.session.conn_no = self._remote.total

    def _note(self, verb: str) -> None:
        self._remote.commands.append((self.session.conn_no, verb, self._tls_protocol is not None))

    async def smtp_STARTTLS(self, arg):
        self._note("STARTTLS")
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg):
        self._note("AUTH")
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg):
        self._note("MAIL")
        await super().smtp_MAIL(arg)


class _Controller(Controller):
    def __init__(self, remote: "TlsRemote", **kw):
        self._remote = remote
        super().__init__(_Handler(remote), **kw)

    def factory(self):
        return _RecordingSMTP(self.handler, self._remote, **self.SMTP_kwargs)


class TlsRemote:
    """`with TlsRemote(tls=ctx, users={"u": "pw"}) as r:` an aiosmtpd peer on 127.0.0.1:r.port.

    tls: offer STARTTLS with this context (None = no STARTTLS); users: offer AUTH PLAIN/LOGIN and require it
    before MAIL; auth_require_tls: offer AUTH only inside TLS (aiosmtpd's default) or also in plaintext;
    data_reply: answer the final dot with this instead of 250 (the message is still recorded).
    r.messages (Msg), r.auths (AuthTry) and r.commands ((conn, verb, tls)) record what happened."""

    def __init__(self, tls: ssl.SSLContext | None = None, users: dict[str, str] | None = None,
                 auth_require_tls: bool = True, require_starttls: bool = False, data_reply: str | None = None):
        self.port = free_port()
        self.data_reply = data_reply
        self.messages: list[Msg] = []
        self.auths: list[AuthTry] = []
        self.commands: list[tuple[int, str, bool]] = []
        self.total = 0
        self.lock = threading.Lock()
        kw: dict = dict(hostname="127.0.0.1", port=self.port, decode_data=False, server_hostname="remote.test",
                        ready_timeout=10)
        if tls is not None:
            kw["tls_context"] = tls
            kw["require_starttls"] = require_starttls
        if users is not None:
            def authenticator(server, session, envelope, mechanism, auth_data):
                if not isinstance(auth_data, LoginPassword):
                    return AuthResult(success=False, handled=False)
                login = auth_data.login.decode("utf-8", "replace")
                password = auth_data.password.decode("utf-8", "replace")
                ok = users.get(login) == password
                self.auths.append(AuthTry(session.conn_no, mechanism, login, password, session.ssl is not None, ok))
                # Not handled on failure: aiosmtpd then answers 535 5.7.8.
                return AuthResult(success=ok, handled=ok, auth_data=auth_data if ok else None)

            kw["authenticator"] = authenticator
            kw["auth_required"] = True
            kw["auth_require_tls"] = auth_require_tls
        self.controller = _Controller(self, **kw)

    def verbs(self, verb: str) -> list[tuple[int, str, bool]]:
        return [c for c in self.commands if c[1] == verb]

    def wait_messages(self, count: int = 1, srv=None, timeout: float = WAIT) -> list[Msg]:
        try:
            wait_for(lambda: len(self.messages) >= count, timeout, f"{count} message(s) at the TLS remote")
        except AssertionError as e:
            extra = ""
            if srv is not None:
                extra = f"; queue: {[envelope(srv, q) for q in queue_ids(srv)]}; log tail:\n{log_tail(srv)}"
            raise AssertionError(f"{e}; commands: {self.commands}; auths: {self.auths}{extra}") from None
        return list(self.messages)

    def __enter__(self) -> "TlsRemote":
        # Controller.start() connects once to check the server is up; that probe sends no command we log.
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


# ---------------------------------------------------------------- helpers


def route(port: int, tls: str, **kw) -> dict:
    return {"host": "127.0.0.1", "port": port, "tls": tls, **{k: str(v) for k, v in kw.items()}}


def tls_srv(tern, routes: dict):
    # outbound.tls stays "none" (relay_config): only the route's own policy may bring TLS in.
    return tern(**relay_config(routes=routes))


def password_file(tmp_path: Path, password: str = PASSWORD) -> Path:
    p = tmp_path / "relay-password"
    p.write_text(password + "\n", encoding="utf-8")
    p.chmod(0o600)
    return p


def send(srv, subject: str) -> str:
    return srv.deliver(ALICE, BOB, make_message(subject, sender=ALICE, to=BOB))


def assert_nothing_arrives(remote: TlsRemote, settle: float = 1.0) -> None:
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        assert not remote.messages, f"the remote received {remote.messages}"
        time.sleep(0.1)


def deferred(srv, qid: str, code: str) -> dict:
    """Waits for BOB to be deferred, checks the stored reason starts with `code`, and that `tern queue show`
    agrees; returns the spool status."""
    def settled():
        env = envelope(srv, qid)
        if env is None:
            return "gone"
        if not env:
            return None
        status = recipient(env, BOB)["status"]
        return status if status.get("state") != "pending" else None

    # Stop at the first outcome, so that a recipient failed (or an entry removed) at once fails fast.
    status = wait_for(settled, what=f"{BOB} in {qid} to leave pending")
    if status == "gone" or status.get("state") != "deferred":
        time.sleep(0.5)  # a bounce is stored before the entry is removed; let it land
        dsn_fields = [line for raw in srv.messages(ALICE) for line in raw.decode("utf-8", "replace").splitlines()
                      if line.startswith(("Action:", "Status:", "Diagnostic-Code:"))]
        raise AssertionError(
            f"{BOB} should be deferred ({code}); the entry is {'removed' if status == 'gone' else status}; "
            f"bounces to {ALICE}: {len(srv.messages(ALICE))} {dsn_fields}; log:\n{log_tail(srv)}")
    reply = status.get("last_reply") or ""
    assert reply.startswith(code), f"expected a {code} reason, got {reply!r}; log:\n{log_tail(srv)}"
    shown = queue_show(srv, qid)
    rcpt = [r for r in shown["recipients"] if r["address"] == BOB]
    assert rcpt and rcpt[0]["state"] == "deferred", shown
    assert (rcpt[0]["last_reply"] or "").startswith(code), shown
    return status


# ---------------------------------------------------------------- tls = opportunistic / none


def test_opportunistic_uses_starttls_with_a_self_signed_certificate(tern, certs):
    with TlsRemote(tls=server_context(certs.self_signed)) as remote:
        srv = tls_srv(tern, {"remote.test": route(remote.port, "opportunistic")})
        qid = send(srv, "opportunistic")
        got = remote.wait_messages(1, srv=srv)[0]
        assert got.tls, f"opportunistic TLS must encrypt (certificate unverified, RFC 7435): {remote.commands}"
        assert got.rcpt_tos == [BOB] and b"Subject: opportunistic" in got.content
        assert len(remote.verbs("STARTTLS")) == 1, remote.commands
        wait_gone(srv, qid)


def test_opportunistic_default_of_a_route_table(tern, certs):
    """A route table without `tls` is opportunistic (docs/configuration.md), even with outbound.tls = none."""
    with TlsRemote(tls=server_context(certs.self_signed)) as remote:
        srv = tls_srv(tern, {"remote.test": {"host": "127.0.0.1", "port": remote.port}})
        send(srv, "default policy")
        assert remote.wait_messages(1, srv=srv)[0].tls, remote.commands


def test_opportunistic_falls_back_to_plaintext_after_a_failed_handshake(tern, certs):
    with TlsRemote(tls=unusable_context(certs.good)) as remote:
        srv = tls_srv(tern, {"remote.test": route(remote.port, "opportunistic")})
        qid = send(srv, "fallback")
        got = remote.wait_messages(1, srv=srv)[0]
        assert not got.tls
        starttls = remote.verbs("STARTTLS")
        assert starttls and starttls[0][0] < got.conn, (
            f"STARTTLS should have been tried on an earlier connection than the plaintext delivery: {remote.commands}")
        assert not any(c == starttls[0][0] for c, v, _ in remote.verbs("MAIL")), (
            f"nothing may continue on the connection whose handshake failed: {remote.commands}")
        wait_gone(srv, qid)


def test_fallback_logs_a_warning_with_the_handshake_error(tern, certs):
    """Issue 17 item 4: a failed opportunistic handshake followed by a cleartext retry is a warning naming the
    handshake error; the attempt's log line says it went in cleartext."""
    with TlsRemote(tls=unusable_context(certs.good)) as remote:
        srv = tls_srv(tern, {"remote.test": route(remote.port, "opportunistic")})
        qid = send(srv, "fallback warning")
        remote.wait_messages(1, srv=srv)
        wait_gone(srv, qid)
        lines = srv.log().splitlines()
        warn = [l for l in lines if "TLS handshake failed" in l]
        assert len(warn) == 1, f"one warning for the one fallback:\n{log_tail(srv)}"
        assert "WARN" in warn[0] and "error=" in warn[0] and "127.0.0.1" in warn[0], warn[0]
        # The error itself, not just the fact: rustls names what went wrong with the handshake.
        error = warn[0].split("error=", 1)[1]
        assert "tls" in error.lower() or "handshake" in error.lower() or "alert" in error.lower(), warn[0]
        attempt = [l for l in lines if "delivery attempt" in l and qid in l]
        assert attempt and "tls=cleartext" in attempt[-1], f"{attempt}\n{log_tail(srv)}"


def test_the_tls_outcome_of_an_attempt_is_logged_and_shown(tern, certs):
    """Every attempt records what protected it: opportunistic TLS is encrypted but unverified (RFC 7435)."""
    reply = "451 4.3.0 come back later (scripted)"
    with TlsRemote(tls=server_context(certs.self_signed), data_reply=reply) as remote:
        srv = tls_srv(tern, {"remote.test": route(remote.port, "opportunistic")})
        qid = send(srv, "tls outcome")
        deferred(srv, qid, "451 4.3.0")
        shown = queue_show(srv, qid)
        att = shown["attempts"][-1]
        tls = att["tls"]
        assert tls["mode"] == "tls" and tls["verified"] is False, att
        assert tls["version"] in ("TLSv1_3", "TLSv1_2") and tls["cipher"].startswith("TLS"), att
        # The remote's reply, exactly, with where it came from.
        assert att["reply"] == reply, att
        detail = att["reply_detail"]
        assert detail["remote_host"] == "127.0.0.1" and detail["stage"] == "data-end", detail
        token = f"tls={tls['version']}/{tls['cipher']}/unverified"
        text = tern_queue(srv, "show", qid).stdout.decode()
        assert token in text, text
        assert any("delivery attempt" in l and token in l for l in srv.log().splitlines()), log_tail(srv)


def test_required_tls_records_a_verified_certificate(tern, certs):
    reply = "451 4.3.0 come back later (scripted)"
    with TlsRemote(tls=server_context(certs.good), require_starttls=True, data_reply=reply) as remote:
        srv = tls_srv(tern, {"remote.test": route(remote.port, "required", ca_file=certs.ca)})
        qid = send(srv, "verified outcome")
        deferred(srv, qid, "451 4.3.0")
        tls = queue_show(srv, qid)["attempts"][-1]["tls"]
        assert tls["mode"] == "tls" and tls["verified"] is True, tls


def test_none_never_starttls_although_offered(tern, certs):
    with TlsRemote(tls=server_context(certs.good)) as remote:
        srv = tls_srv(tern, {"remote.test": route(remote.port, "none")})
        qid = send(srv, "plaintext")
        got = remote.wait_messages(1, srv=srv)[0]
        assert not got.tls
        assert remote.verbs("STARTTLS") == [], remote.commands
        wait_gone(srv, qid)


# ---------------------------------------------------------------- tls = required


def test_required_with_ca_file_verifies_and_delivers_over_tls(tern, certs):
    with TlsRemote(tls=server_context(certs.good), require_starttls=True) as remote:
        srv = tls_srv(tern, {"remote.test": route(remote.port, "required", ca_file=certs.ca)})
        qid = send(srv, "required ok")
        got = remote.wait_messages(1, srv=srv)[0]
        assert got.tls
        assert all(tls for _c, _v, tls in remote.verbs("MAIL")), remote.commands
        wait_gone(srv, qid)
        assert srv.messages(ALICE) == []


@pytest.mark.parametrize("which,ca_file", [
    pytest.param("self_signed", False, id="self-signed-no-ca-file"),
    pytest.param("other_ca", False, id="unknown-ca-no-ca-file"),
    pytest.param("other_ca", True, id="ca-file-of-another-ca"),
    pytest.param("wrong_name", True, id="trusted-ca-wrong-name"),
])
def test_required_with_an_unverifiable_certificate_defers(tern, certs, which, ca_file):
    with TlsRemote(tls=server_context(getattr(certs, which))) as remote:
        extra = {"ca_file": certs.ca} if ca_file else {}
        srv = tls_srv(tern, {"remote.test": route(remote.port, "required", **extra)})
        qid = send(srv, "required bad cert")
        status = deferred(srv, qid, "451 4.7.5")
        reason = status["last_reply"].lower()
        assert "tls" in reason or "certificate" in reason, f"the reason should say TLS/certificate: {reason!r}"
        assert "127.0.0.1" in reason, f"the reason should name the host: {reason!r}"
        assert_nothing_arrives(remote)
        assert remote.verbs("MAIL") == [], f"no transaction may start, in plaintext or not: {remote.commands}"
        assert srv.messages(ALICE) == [], "a TLS failure is temporary: no bounce"


def test_required_without_starttls_offered_defers(tern):
    with TlsRemote(tls=None) as remote:
        srv = tls_srv(tern, {"remote.test": route(remote.port, "required")})
        qid = send(srv, "required no starttls")
        status = deferred(srv, qid, "451 4.7.5")
        assert "127.0.0.1" in status["last_reply"], status
        assert_nothing_arrives(remote)
        assert remote.verbs("MAIL") == [], remote.commands


# ---------------------------------------------------------------- smarthost AUTH


def test_smarthost_auth_over_required_tls(tern, certs, tmp_path):
    pw = password_file(tmp_path)
    with TlsRemote(tls=server_context(certs.good), users={USER: PASSWORD}) as remote:
        srv = tls_srv(tern, {"*": route(remote.port, "required", ca_file=certs.ca, user=USER, password_file=pw)})
        qid = send(srv, "via smarthost")
        got = remote.wait_messages(1, srv=srv)[0]
        assert got.tls and got.login == USER, got
        assert [(a.login, a.password, a.tls, a.ok) for a in remote.auths] == [(USER, PASSWORD, True, True)], (
            remote.auths)
        assert all(tls for _c, _v, tls in remote.verbs("AUTH")), remote.commands
        wait_gone(srv, qid)
        assert PASSWORD not in srv.log(), "the password must not be logged"


@pytest.mark.parametrize("tls", ["none", "opportunistic", None], ids=["tls-none", "opportunistic", "tls-unset"])
def test_credentials_without_required_tls_are_a_config_error(tmp_path, tls):
    """Issue 10: a route with user/password_file must have tls = "required" (only that verifies the
    server before AUTH), else `tern check-config` and `tern serve` refuse the file with exit 78, naming
    the key and the fix; no password can reach an unverified server because tern never starts.
    (Before, such a route silently defaulted to opportunistic, unverified TLS.)"""
    pw = password_file(tmp_path)
    r = route(free_port(), tls or "", user=USER, password_file=pw)
    if tls is None:
        del r["tls"]
    t = Tern(tmp_path / "tern", relay_config(routes={"*": r}))
    for args in (["check-config", str(t.config_path)], ["serve", "--config", str(t.config_path)]):
        p = subprocess.run([str(tern_bin()), *args], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        out = p.stdout + p.stderr
        assert p.returncode == 78, f"{args[0]}: rc={p.returncode}\n{out}"
        assert 'routes."*".tls: the route has user and password_file but tls is' in out, out
        assert 'fix: set tls = "required" in this route' in out, out
        assert PASSWORD not in out, "the error must not show the password"


def test_smarthost_wrong_password_is_deferred_not_bounced(tern, certs, tmp_path):
    pw = password_file(tmp_path, "not the password")
    with TlsRemote(tls=server_context(certs.good), users={USER: PASSWORD}) as remote:
        srv = tls_srv(tern, {"*": route(remote.port, "required", ca_file=certs.ca, user=USER, password_file=pw)})
        qid = send(srv, "wrong password")
        # A rejected login is the route's configuration to fix, not the recipient's fault: deferred (as Postfix
        # does by default), with a reason that says what to check; no bounce while the operator fixes it.
        status = deferred(srv, qid, "451 4.7.8")
        assert "535" in status["last_reply"] and "password_file" in status["last_reply"], status
        assert srv.messages(ALICE) == [], "a wrong smarthost password must not bounce the sender's mail"
        assert [(a.login, a.password, a.tls, a.ok) for a in remote.auths] == [(USER, "not the password", True, False)], (
            remote.auths)
        assert remote.messages == [] and remote.verbs("MAIL") == [], remote.commands


# ---------------------------------------------------------------- routes that share a host


CAROL = "carol@plain.test"


def test_two_routes_to_one_host_keep_their_own_policy_in_one_message(tern, certs):
    """plain.test (tls none) and remote.test (tls required, certificate unverifiable) name the same host and port;
    one message to both must still apply each route's policy: abe in plaintext, bob deferred. (abe comes first
    both in RCPT order and alphabetically, so whichever order tern keeps, a shared group takes abe's route.)"""
    abe = "abe@plain.test"
    with TlsRemote(tls=server_context(certs.self_signed)) as remote:
        srv = tls_srv(tern, {"plain.test": route(remote.port, "none"), "remote.test": route(remote.port, "required")})
        qid = srv.deliver(ALICE, [abe, BOB], make_message("two policies", sender=ALICE, to=BOB))

        def outcomes():
            env = envelope(srv, qid)
            if env is None:
                return {abe: {"state": "gone"}, BOB: {"state": "gone"}}  # every recipient final: removed
            if not env:
                return None
            states = {a: recipient(env, a)["status"] for a in (abe, BOB)}
            return states if all(st.get("state") != "pending" for st in states.values()) else None

        states = wait_for(outcomes, what=f"both recipients of {qid} to be tried")
        time.sleep(0.5)
        bob_copies = [m for m in remote.messages if BOB in m.rcpt_tos]
        assert not bob_copies, (f"{BOB} (route tls = required, unverifiable certificate) was delivered anyway, "
                                f"tls={[m.tls for m in bob_copies]}: the route of {abe} was applied to it; "
                                f"commands: {remote.commands}")
        assert states[abe].get("state") == "delivered", (
            f"{abe} (route tls = none) should be delivered in plaintext, got {states[abe]}: the route of {BOB} "
            f"was applied to it; commands: {remote.commands}")
        assert [(m.rcpt_tos, m.tls) for m in remote.messages] == [([abe], False)], remote.messages
        assert states[BOB].get("state") == "deferred" and states[BOB]["last_reply"].startswith("451 4.7.5"), states


@pytest.mark.parametrize("variant", ["tls-policy", "auth-login"])
def test_a_pooled_connection_is_not_reused_for_another_route_to_the_same_host(tern, certs, tmp_path, variant):
    """A connection left open after delivering for one route must not carry mail for another route with a
    different policy or login, although host and port are the same."""
    if variant == "tls-policy":
        remote = TlsRemote(tls=server_context(certs.self_signed))
        routes = {"plain.test": route(remote.port, "none"), "remote.test": route(remote.port, "required")}
    else:
        other = tmp_path / "other-password"
        other.write_text("other secret\n")
        remote = TlsRemote(tls=server_context(certs.good), users={USER: PASSWORD, "other": "other secret"})
        routes = {"plain.test": route(remote.port, "required", ca_file=certs.ca, user="other", password_file=other),
                  "remote.test": route(remote.port, "required", ca_file=certs.ca, user=USER,
                                       password_file=password_file(tmp_path))}
    with remote:
        srv = tls_srv(tern, routes)
        first = srv.deliver(ALICE, CAROL, make_message("first route", sender=ALICE, to=CAROL))
        remote.wait_messages(1, srv=srv)
        wait_gone(srv, first)
        # Within the pool's idle time (5 s, docs/flow.md), so a pooled connection would be taken.
        qid = send(srv, "second route")
        if variant == "tls-policy":
            time.sleep(1.0)
            bob_copies = [m for m in remote.messages if BOB in m.rcpt_tos]
            assert not bob_copies, (f"{BOB} (tls = required, unverifiable certificate) went over the plaintext "
                                    f"connection of the plain.test route: {bob_copies}; commands: {remote.commands}")
            deferred(srv, qid, "451 4.7.5")
        else:
            got = remote.wait_messages(2, srv=srv)[1]
            assert got.rcpt_tos == [BOB]
            assert got.login == USER, (f"mail for remote.test went out on a session authenticated as {got.login!r} "
                                       f"(the plain.test route's login), not {USER!r}; auths: {remote.auths}")
            wait_gone(srv, qid)
