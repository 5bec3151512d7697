"""`tern send` shows a progress bar of the DATA transfer (indicatif: bytes sent / total, rate, time left) when
stderr is a terminal and the message is at least 1 MiB, and nothing of it anywhere else: stderr in a file,
--verbose (the transcript shares stderr), a small message. The terminal is a real pty (python `pty`), the peer
an aiosmtpd sink on 127.0.0.1."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time

import pytest

from send_helpers.sink import Sink
from ternlib import tern_bin

FROM = "sender@example.test"
TO = "bob@example.test"
BAR = b"sending ["


@pytest.fixture
def attachment(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    return path


@pytest.fixture
def body(tmp_path):
    path = tmp_path / "body.txt"
    path.write_text("the attachment\n")
    return path


def send_args(sink, body, *extra) -> list[str]:
    return [str(tern_bin()), "send", "--server", f"127.0.0.1:{sink.port}", "--tls", "none", "--from", FROM,
            "--to", TO, "--subject", "big", "--body-file", str(body), *extra]


def run_on_pty(cmd: list[str], timeout: float = 60) -> tuple[int, bytes]:
    """Runs cmd with stdout and stderr on a fresh pty (120 columns); returns its exit code and all it wrote."""
    master, slave = pty.openpty()
    # A pty starts at 0x0; give it a size, as a terminal window has.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the pty
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"tern send did not finish in {timeout}s: {bytes(out)!r}")
        return proc.wait(timeout=10), bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_a_large_message_shows_a_progress_bar_on_a_terminal(attachment, body):
    with Sink() as sink:
        code, out = run_on_pty(send_args(sink, body, "--attach", str(attachment)))
        assert code == 0, out
        assert len(sink.messages) == 1
        size = len(sink.messages[0].content)
    assert size > 3 * 1024 * 1024
    assert BAR in out, out
    # sent / total in binary units, and the rate and time left.
    text = out.decode("utf-8", "replace")
    assert "MiB" in text and "/s" in text and " left" in text, text
    # Cleared when done (indicatif's finish_and_clear erases the line).
    assert b"\x1b[" in out or b"\r" in out, out


def test_no_bar_when_stderr_is_not_a_terminal(attachment, body, tmp_path):
    errfile = tmp_path / "stderr.txt"
    with Sink() as sink, open(errfile, "wb") as err:
        r = subprocess.run(send_args(sink, body, "--attach", str(attachment)), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=err, timeout=60)
        assert r.returncode == 0
        assert len(sink.messages) == 1
    written = errfile.read_bytes() + r.stdout
    assert BAR not in written and b"\r" not in written and b"\x1b[" not in written, written


def test_no_bar_with_verbose_or_for_a_small_message(attachment, body):
    with Sink() as sink:
        # --verbose: the transcript is on stderr, and a bar would garble it.
        code, out = run_on_pty(send_args(sink, body, "--attach", str(attachment), "--verbose"))
        assert code == 0, out
        assert b"<message, " in out, out  # the transcript is there
        assert BAR not in out, out
        # Under 1 MiB: nothing to wait for, no bar.
        code, out = run_on_pty(send_args(sink, body))
        assert code == 0, out
        assert BAR not in out, out
        assert len(sink.messages) == 2
