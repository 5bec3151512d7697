"""Real third-party SMTP clients (swaks, curl, msmtp) deliver into tern's Maildir. CI installs them; a local
run without them skips with the reason."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ternlib import split_trace


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (CI installs it via .ci/run)")
    return path


def run(cmd, input_bytes=None, timeout=30):
    r = subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout,
                       stdin=None if input_bytes is not None else subprocess.DEVNULL)
    assert r.returncode == 0, f"{cmd[0]} failed rc={r.returncode}\n{r.stdout.decode(errors='replace')}\n{r.stderr.decode(errors='replace')}"
    return r


def test_swaks(srv):
    swaks = need("swaks")
    run([
        swaks, "--server", srv.host, "--port", str(srv.port), "--helo", "swaks.test",
        "--from", "swaks@example.test", "--to", "alice@tern.test",
        "--header", "Subject: via swaks", "--body", "Body from swaks.\n.leading dot line\n",
    ])
    [content] = srv.wait_messages("alice@tern.test")
    trace, rest = split_trace(content)
    assert b"Subject: via swaks" in rest
    assert b"Body from swaks." in rest
    assert b"\n.leading dot line" in rest and b"\n..leading" not in rest
    assert ("Return-Path", "<swaks@example.test>") in trace
    assert any(n == "Received" and v.startswith("from swaks.test ") for n, v in trace), trace


def test_swaks_pipelining(srv):
    swaks = need("swaks")
    run([
        swaks, "--pipeline", "--server", srv.host, "--port", str(srv.port),
        "--from", "swaks@example.test", "--to", "alice@tern.test,bob@tern.test",
        "--header", "Subject: swaks pipelined",
    ])
    for r in ("alice@tern.test", "bob@tern.test"):
        [content] = srv.wait_messages(r)
        assert b"Subject: swaks pipelined" in content


def test_curl(srv, tmp_path):
    curl = need("curl")
    msg = tmp_path / "msg.eml"
    msg.write_bytes(b"From: <curl@example.test>\r\nTo: <bob@tern.test>\r\nSubject: via curl\r\n\r\nBody from curl.\r\n")
    run([
        curl, "--silent", "--show-error", "--max-time", "20",
        f"smtp://{srv.host}:{srv.port}/client.test",
        "--mail-from", "curl@example.test", "--mail-rcpt", "bob@tern.test", "-T", str(msg),
    ])
    [content] = srv.wait_messages("bob@tern.test")
    trace, rest = split_trace(content)
    assert b"Subject: via curl" in rest and b"Body from curl." in rest
    assert ("Return-Path", "<curl@example.test>") in trace


def test_msmtp(srv):
    msmtp = need("msmtp")
    msg = b"From: <msmtp@example.test>\r\nTo: <carol@tern.test>\r\nSubject: via msmtp\r\n\r\nBody from msmtp.\r\n"
    run([
        msmtp, f"--host={srv.host}", f"--port={srv.port}", "--auth=off", "--tls=off",
        "--domain=msmtp.test", "--from=msmtp@example.test", "carol@tern.test",
    ], input_bytes=msg)
    [content] = srv.wait_messages("carol@tern.test")
    assert b"Subject: via msmtp" in content and b"Body from msmtp." in content


def test_swaks_reports_relay_denied(tern):
    swaks = need("swaks")
    srv = tern(relay={"trusted_networks": ["10.99.0.0/16"]})
    r = subprocess.run([
        swaks, "--server", srv.host, "--port", str(srv.port),
        "--from", "swaks@example.test", "--to", "someone@elsewhere.test",
    ], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert b"550 5.7.1" in r.stdout + r.stderr
    srv.assert_nothing_delivered(settle=0.3)
