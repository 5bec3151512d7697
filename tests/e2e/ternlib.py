"""Helpers for the end-to-end tests: a running `tern serve`, a raw SMTP socket client, TOML writing,
and readers for what lands in a Maildir. Imported by conftest.py and by the test files."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOSTNAME = "mx.tern.test"
LOCAL_DOMAIN = "tern.test"
READ_TIMEOUT = 5.0
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# RFC 3463 enhanced status code at the start of a reply text.
ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?: |$)")
QUEUED = re.compile(r"queued as (\S+)")


def tern_bin() -> Path:
    env = os.environ.get("TERN_BIN")
    if env:
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else REPO / "target") / "debug" / "tern"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_busy(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# ---------------------------------------------------------------- TOML

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes (\", \\, \n, \uXXXX) are valid TOML basic-string escapes.
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _is_table_array(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def toml_dumps(doc: dict) -> str:
    """A tiny TOML writer: scalars, arrays, tables, arrays of tables. None values are dropped."""
    out: list[str] = []

    def emit(table: dict, prefix: str) -> None:
        for k, v in table.items():
            if v is None or isinstance(v, dict) or _is_table_array(v):
                continue
            out.append(f"{_key(k)} = {_scalar(v)}")
        for k, v in table.items():
            if isinstance(v, dict):
                name = prefix + _key(k)
                out.append("")
                out.append(f"[{name}]")
                emit(v, name + ".")
        for k, v in table.items():
            if _is_table_array(v):
                name = prefix + _key(k)
                for item in v:
                    out.append("")
                    out.append(f"[[{name}]]")
                    emit(item, name + ".")

    emit(doc, "")
    return "\n".join(out) + "\n"


def deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


# ---------------------------------------------------------------- raw SMTP client


class SMTPClosed(Exception):
    """The server closed the connection while a reply was expected."""


class RawSMTP:
    """A byte-exact SMTP client: nothing is added or rewritten; every read times out."""

    def __init__(self, host: str, port: int, timeout: float = READ_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SMTPClosed(f"connection closed; pending bytes {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def read_reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply as (code, [text of each line])."""
        lines: list[str] = []
        code = None
        while True:
            raw = self.read_line().decode("utf-8", "replace")
            m = re.match(r"^(\d{3})([ -]?)(.*)$", raw)
            assert m, f"malformed reply line {raw!r}"
            c = int(m.group(1))
            if code is None:
                code = c
            assert c == code, f"code changed inside a multi-line reply: {lines} then {raw!r}"
            lines.append(m.group(3))
            if m.group(2) != "-":
                return code, lines

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        code, lines = self.read_reply()
        return code, "\n".join(lines)

    def expect(self, line: str | bytes, code: int, enhanced: str | None = None) -> str:
        got, text = self.cmd(line)
        assert got == code, f"{line!r}: expected {code}, got {got} {text!r}"
        if enhanced is not None:
            assert text.startswith(enhanced + " ") or text == enhanced, (
                f"{line!r}: expected enhanced code {enhanced}, got {got} {text!r}"
            )
        return text

    def greet(self) -> str:
        code, lines = self.read_reply()
        assert code == 220, f"greeting: {code} {lines}"
        return "\n".join(lines)

    def ehlo(self, name: str = "client.test") -> list[str]:
        self.send(f"EHLO {name}\r\n".encode())
        code, lines = self.read_reply()
        assert code == 250, f"EHLO: {code} {lines}"
        return lines

    def start(self, name: str = "client.test") -> "RawSMTP":
        self.greet()
        self.ehlo(name)
        return self

    def wait_closed(self, timeout: float = READ_TIMEOUT) -> bytes:
        """Read until EOF; returns what arrived meanwhile. Fails if the peer keeps the connection open."""
        self.sock.settimeout(timeout)
        got = self.buf
        self.buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk
        raise AssertionError(f"connection still open after {timeout}s; got {got!r}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- Maildir content


def split_trace(content: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Splits the trace headers tern prepends (Return-Path, Delivered-To, Received) from the message.

    Returns ([(name, unfolded value)], rest) where rest starts at the first other header line."""
    trace: list[tuple[str, str]] = []
    pos = 0
    names = {b"return-path", b"delivered-to", b"received"}
    while pos < len(content):
        end = content.find(b"\n", pos)
        if end < 0:
            break
        line = content[pos:end]
        name, sep, _ = line.partition(b":")
        if not sep or name.strip().lower() not in names or name != name.strip():
            break
        # Gather folded continuation lines (RFC 5322 2.2.3).
        nxt = end + 1
        while nxt < len(content) and content[nxt : nxt + 1] in (b" ", b"\t"):
            e2 = content.find(b"\n", nxt)
            if e2 < 0:
                e2 = len(content) - 1
            nxt = e2 + 1
        raw = content[pos:nxt]
        value = raw.partition(b":")[2]
        value = re.sub(rb"\r?\n[ \t]+", b" ", value).strip()
        trace.append((name.decode(), value.decode("utf-8", "replace")))
        pos = nxt
    return trace, content[pos:]


def eol_of(content: bytes) -> bytes:
    """The line ending a stored file uses: CRLF or LF, and it must use one of them consistently."""
    crlf = content.count(b"\r\n")
    lf = content.count(b"\n")
    if crlf:
        assert crlf == lf, f"stored file mixes CRLF and bare LF: {content[:400]!r}"
        return b"\r\n"
    return b"\n"


def as_stored(original_crlf: bytes, content: bytes) -> bytes:
    """The original (CRLF) message written with the line ending the stored file uses."""
    if eol_of(content) == b"\n":
        return original_crlf.replace(b"\r\n", b"\n")
    return original_crlf


def header(trace: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in trace if n.lower() == name.lower()]


# ---------------------------------------------------------------- the server under test


class Tern:
    """One `tern serve` process with its own config, data dir and log file."""

    def __init__(self, root: Path, overrides: dict):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.data_dir = root / "data"
        self.config_path = root / "tern.toml"
        self.log_path = root / "tern.log"
        base = {
            "hostname": HOSTNAME,
            "data_dir": str(self.data_dir),
            "smtp": {"listen": [f"{self.host}:{self.port}"]},
            "local": {"domains": [LOCAL_DOMAIN]},
        }
        self.config = deep_merge(base, overrides)
        self.config_path.write_text(toml_dumps(self.config))
        self.proc: subprocess.Popen | None = None
        self._logf = None

    # -- process control

    def start(self) -> "Tern":
        binary = tern_bin()
        if not binary.exists():
            raise AssertionError(f"tern binary not found at {binary}: build it (cargo build -p tern) or set TERN_BIN")
        self._logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"tern serve exited with {self.proc.returncode}; log:\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(2)
                    f = s.makefile("rb")
                    line = f.readline()
                    if line.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        # Wait for the server to close so this probe does not count against max_connections.
                        try:
                            while f.readline():
                                pass
                        except OSError:
                            pass
                        return
                    last = line
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"tern did not greet on {self.host}:{self.port} within {timeout}s ({last!r}); log:\n{self.log()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"tern did not exit within {timeout}s; log:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Graceful stop: SIGTERM and exit status 0 within 10 s (issue 2)."""
        if not self.running():
            return
        self.send_signal(sig)
        rc = self.wait_exit()
        assert rc == 0, f"tern exited with {rc} after signal {sig}; log:\n{self.log()}"
        self._close_log()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_log()

    def restart(self) -> "Tern":
        if self.running():
            self.stop()
        return self.start()

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()

    def _close_log(self) -> None:
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- clients

    def raw(self, timeout: float = READ_TIMEOUT) -> RawSMTP:
        return RawSMTP(self.host, self.port, timeout)

    def session(self, name: str = "client.test") -> RawSMTP:
        """A raw client that has read the greeting and sent EHLO."""
        return self.raw().start(name)

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, local_hostname="client.test", timeout=10)

    def deliver(self, sender: str, rcpts: list[str] | str, msg: bytes, mail_options=(), rcpt_options=()) -> str:
        """One transaction through smtplib; asserts every step and returns the queue id of the 250."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        with self.smtp() as s:
            s.ehlo()
            code, text = s.mail(sender, list(mail_options))
            assert code == 250, f"MAIL: {code} {text!r}"
            for r in rcpts:
                code, text = s.rcpt(r, list(rcpt_options))
                assert code == 250, f"RCPT {r}: {code} {text!r}"
            code, text = s.data(msg)
            assert code == 250, f"DATA: {code} {text!r}"
            return queue_id(text.decode())

    # -- Maildir

    def maildir(self, addr: str) -> Path:
        local, _, domain = addr.rpartition("@")
        return self.data_dir / "mailboxes" / domain.lower() / local.lower()

    def messages(self, addr: str) -> list[bytes]:
        new = self.maildir(addr) / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir()) if p.is_file()]

    def wait_messages(self, addr: str, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        """Messages in new/ once at least `count` are there (delivery may follow the 250 by a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages(addr)
            if len(got) >= count or time.monotonic() > deadline:
                assert len(got) >= count, f"{addr}: expected {count} message(s) in {self.maildir(addr)}/new, found {len(got)}"
                return got
            time.sleep(0.05)

    def delivered_files(self) -> list[Path]:
        """Every file in any Maildir new/ or cur/ under the data dir."""
        root = self.data_dir / "mailboxes"
        found = []
        if root.is_dir():
            for dirpath, _dirs, files in os.walk(root):
                if Path(dirpath).name in ("new", "cur"):
                    found.extend(Path(dirpath) / f for f in files)
        return sorted(found)

    def assert_nothing_delivered(self, settle: float = 1.0) -> None:
        """No message in any Maildir, now and after `settle` seconds (a queue could deliver late)."""
        deadline = time.monotonic() + settle
        while True:
            files = self.delivered_files()
            assert not files, f"expected no delivery, found {[str(f) for f in files]}"
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)


def queue_id(text: str) -> str:
    m = QUEUED.search(text)
    assert m, f"no 'queued as <id>' in {text!r}"
    return m.group(1)


def make_message(subject: str = "test", body: bytes = b"Hello.\r\n", sender: str = "sender@example.test",
                 to: str = "alice@tern.test", extra: bytes = b"") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@example.test>\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )
