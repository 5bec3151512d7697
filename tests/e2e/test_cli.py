"""The command line: `tern check-config` on good and bad files, `tern serve` with a bad file, and `tern serve`
with no config at all (issue 2: 127.0.0.1:2525, ./tern-data, catch-all for localhost and the hostname)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ternlib import Tern, tern_bin

GOOD_EXTRA = {
    "limits": {"max_message_size": 1000000, "max_recipients": 10, "command_timeout": "2s"},
    "local": {"catch_all": False, "vrfy": True},
    "users": [{"name": "alice@tern.test"}],
    "aliases": {"staff@tern.test": ["alice@tern.test"]},
    "relay": {"trusted_networks": ["127.0.0.0/8", "10.99.0.0/16"]},
}


def run(args, cwd=None, timeout=20, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tern_bin()), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=env,
        text=True,
    )


def clean_env() -> dict:
    env = dict(os.environ)
    env.pop("TERN_CONFIG", None)
    return env


@pytest.mark.parametrize("extra", [{}, GOOD_EXTRA], ids=["minimal", "full"])
def test_check_config_good(tmp_path, extra):
    t = Tern(tmp_path, extra)
    r = run(["check-config", str(t.config_path)])
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:{r.stdout}\nstderr:{r.stderr}\nconfig:\n{t.config_path.read_text()}"


BAD = {
    "wrong-type": ('[limits]\nmax_recipients = "lots"\n', "max_recipients"),
    "unknown-key": ('[smtp]\nlisen = ["127.0.0.1:2525"]\n', "lisen"),
    "unknown-top-level": ('hostnme = "mx.tern.test"\n', "hostnme"),
    "bad-duration": ('[limits]\ncommand_timeout = "five minutes"\n', "command_timeout"),
    "bad-hostname": ('hostname = "not a host"\n', "hostname"),
    "bad-network": ('[relay]\ntrusted_networks = ["not-a-network"]\n', "trusted_networks"),
    "bad-listen": ('[smtp]\nlisten = ["nowhere"]\n', "listen"),
    "negative-size": ("[limits]\nmax_message_size = -5\n", "max_message_size"),
    "bad-domain": ('[local]\ndomains = ["bad domain"]\n', "domains"),
    "catch-all-type": ('[local]\ncatch_all = "yes"\n', "catch_all"),
    # Issue 10: a hash with the right prefix but cut short is found at load, naming the user and `tern passwd`.
    "damaged-hash": ('[[users]]\nname = "alice@localhost"\npassword = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ"\n',
                     'users[0].password: the password hash of user "alice@localhost"'),
}


@pytest.mark.parametrize("text, key", list(BAD.values()), ids=list(BAD))
def test_check_config_bad(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n' + text)
    r = run(["check-config", str(path)])
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"check-config accepted a bad file:\n{text}\n{out}"
    # docs/configuration.md: exit status 78 (EX_CONFIG) for a configuration problem.
    assert r.returncode == 78, f"rc={r.returncode}\n{out}"
    assert key in out, f"error does not name {key!r}:\n{out}"
    assert "panicked" not in out, out


def test_check_config_toml_syntax_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("hostname = \n[smtp\n")
    r = run(["check-config", str(path)])
    assert r.returncode != 0
    assert "panicked" not in r.stdout + r.stderr


def test_check_config_missing_file(tmp_path):
    r = run(["check-config", str(tmp_path / "nope.toml")])
    assert r.returncode != 0
    assert "nope.toml" in r.stdout + r.stderr


def test_serve_with_bad_config_fails_fast(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[limits]\nmax_recipients = "lots"\n')
    r = run(["serve", "--config", str(path)], timeout=15)
    assert r.returncode != 0
    assert "max_recipients" in r.stdout + r.stderr


def test_serve_listen_port_in_use_fails(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        t = Tern(tmp_path, {"smtp": {"listen": [f"127.0.0.1:{port}"]}})
        r = run(["serve", "--config", str(t.config_path)], timeout=15)
        assert r.returncode != 0
        assert str(port) in r.stdout + r.stderr
    finally:
        blocker.close()


def test_serve_without_config(tmp_path):
    if Path("/etc/tern/tern.toml").exists():
        pytest.skip("/etc/tern/tern.toml exists: `tern serve` would use it")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 2525))
        except OSError:
            pytest.skip("port 2525 is busy on this machine")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [str(tern_bin()), "serve"], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 10
        banner = None
        while time.monotonic() < deadline and banner is None:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", 2525), timeout=1) as s:
                    s.settimeout(2)
                    banner = s.makefile("rb").readline()
                    s.sendall(b"QUIT\r\n")
            except OSError:
                time.sleep(0.05)
        assert banner and banner.startswith(b"220 "), banner
        assert banner.rstrip().endswith(b" ESMTP tern"), banner
        # Issue 2: the hostname comes from the system (or "localhost" when that is not a valid domain name).
        host = banner.split()[1].decode()
        system = socket.gethostname().strip().lower().rstrip(".")
        valid = all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in system.split("."))
        assert host == (system if system and valid else "localhost"), (host, system)
        # Catch-all for localhost: any local part is accepted and stored under ./tern-data.
        with smtplib.SMTP("127.0.0.1", 2525, local_hostname="client.test", timeout=10) as s:
            refused = s.sendmail("a@example.test", ["Someone@LocalHost"], b"Subject: default\r\n\r\nhi\r\n")
            assert refused == {}
        new = tmp_path / "tern-data" / "mailboxes" / "localhost" / "someone" / "new"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (new.is_dir() and any(new.iterdir())):
            time.sleep(0.05)
        assert new.is_dir() and len(list(new.iterdir())) == 1, list((tmp_path / "tern-data").rglob("*"))
        # The hostname is a local domain too.
        with smtplib.SMTP("127.0.0.1", 2525, local_hostname="client.test", timeout=10) as s:
            assert s.sendmail("a@example.test", [f"user@{host}"], b"Subject: host\r\n\r\nhi\r\n") == {}
        mine = tmp_path / "tern-data" / "mailboxes" / host / "user" / "new"
        assert mine.is_dir() and len(list(mine.iterdir())) == 1, list((tmp_path / "tern-data").rglob("*"))
        # Not listening anywhere but loopback:2525 (no open relay on a fresh install).
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_version_and_help():
    r = run(["--version"])
    assert r.returncode == 0 and "tern" in r.stdout
    r = run(["--help"])
    assert r.returncode == 0
    for sub in ("serve", "check-config"):
        assert sub in r.stdout
