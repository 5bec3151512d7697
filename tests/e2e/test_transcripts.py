"""Runs every SMTP transcript in testdata/transcripts (the format is in its README.md) against a real
`tern serve` over TCP. crates/server/tests/transcripts.rs runs the same files in-process."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ternlib import READ_TIMEOUT, REPO, SMTPClosed

TRANSCRIPTS = REPO / "testdata" / "transcripts"
QUIT_REPLY = b"221 2.0.0 mx.tern.test closing connection\r\n"
_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.)")


def unescape(text: str) -> bytes:
    """`\\r`, `\\n`, `\\t`, `\\\\` and `\\xHH`; every other character stands for itself."""
    simple = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"\\": b"\\"}

    def one(m: re.Match) -> bytes:
        esc = m.group(1)
        if esc.startswith(b"x") and len(esc) == 3:
            return bytes([int(esc[1:], 16)])
        if esc in simple:
            return simple[esc]
        raise ValueError(f"unknown escape \\{esc.decode()}")

    return _ESCAPE.sub(one, text.encode())


def glob(pattern: str, text: str) -> bool:
    """`*` matches any run of characters (also none); everything else matches itself."""
    return re.fullmatch(".*".join(re.escape(p) for p in pattern.split("*")), text, re.DOTALL) is not None


@dataclass
class Transcript:
    name: str
    config: dict
    # (line number, kind, argument): kind is send / exact / glob / closed.
    steps: list[tuple[int, str, object]] = field(default_factory=list)


def parse(name: str, text: str) -> Transcript:
    toml_lines: list[str] = []
    steps: list[tuple[int, str, object]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("config:"):
            assert not steps, f"{name}:{n}: config lines must come before the exchange"
            toml_lines.append(line[len("config:"):].strip())
        elif line == "C:":
            steps.append((n, "send", b"\r\n"))
        elif line.startswith("C: "):
            steps.append((n, "send", line[3:].encode() + b"\r\n"))
        elif line.startswith("C~ "):
            steps.append((n, "send", unescape(line[3:])))
        elif line.startswith("S: "):
            steps.append((n, "exact", line[3:]))
        elif line.startswith("S~ "):
            steps.append((n, "glob", line[3:]))
        elif line.rstrip() == "closed":
            steps.append((n, "closed", None))
        else:
            raise AssertionError(f"{name}:{n}: not a transcript line: {line!r}")
    return Transcript(name, tomllib.loads("\n".join(toml_lines)), steps)


def show_send(data: bytes) -> list[str]:
    out = []
    for chunk in data.decode("utf-8", "replace").splitlines(keepends=True):
        if chunk.endswith("\r\n") and "\r" not in chunk[:-2] and "\n" not in chunk[:-2]:
            out.append(f"C: {chunk[:-2]}")
        else:
            out.append(f"C~ {chunk!r}")
    return out


def mismatch(t: Transcript, line: int, expected: str, got: str, log: list[str]) -> AssertionError:
    exchange = "\n    ".join(log)
    return AssertionError(
        f"{t.name}:{line}: transcript mismatch\n  expected  {expected}\n  got       {got}\n"
        f"exchange up to here:\n    {exchange}"
    )


def run(srv, t: Transcript, timeout: float = READ_TIMEOUT) -> None:
    """Plays the transcript over one TCP connection; consecutive sends go out as one write."""
    log: list[str] = []
    unsent = b""
    with srv.raw(timeout) as c:
        for line, kind, arg in t.steps:
            if kind == "send":
                log.extend(show_send(arg))
                unsent += arg
                continue
            if unsent:
                c.send(unsent)
                unsent = b""
            if kind == "closed":
                rest = c.wait_closed()
                if rest:
                    raise mismatch(t, line, "closed", f"S: {rest.decode('utf-8', 'replace')!r}", log)
                return
            try:
                got = c.read_line().decode("utf-8", "replace")
            except SMTPClosed:
                got = "(connection closed)"
            except TimeoutError:
                got = "(nothing: the server waits for input)"
            ok = got == arg if kind == "exact" else glob(arg, got)
            if not ok:
                raise mismatch(t, line, f"S{':' if kind == 'exact' else '~'} {arg}", f"S: {got}", log)
            log.append(f"S: {got}")
        # The transcript ends in command mode: QUIT must get its 221 and nothing else, which shows
        # no reply was left unmatched.
        end = t.steps[-1][0] if t.steps else 0
        c.send(unsent + b"QUIT\r\n")
        log.append("C: QUIT   (added by the runner)")
        rest = c.wait_closed()
        if rest != QUIT_REPLY:
            raise mismatch(t, end, f"S: {QUIT_REPLY.decode().strip()}, then closed", repr(rest), log)


FILES = sorted(TRANSCRIPTS.glob("*.tr"))


def test_enough_transcripts():
    assert len(FILES) >= 30, FILES


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript(tern, path: Path):
    t = parse(path.name, path.read_text())
    run(tern(**t.config), t)


@pytest.mark.parametrize(
    "text, want",
    [
        ("S: 220 mx.tern.test ESMTP tern\nC: NOOP\nS: 250 2.0.0 NOT OK\n", "S: 250 2.0.0 OK"),
        ("S: 220 mx.tern.test ESMTP tern\nS: 250 2.0.0 OK\n", "waits for input"),
        ("S: 220 mx.tern.test ESMTP tern\nC: NOOP\nC: NOOP\nS: 250 2.0.0 OK\n", "250 2.0.0 OK\\r\\n221"),
        ("S~ 220 *SMTP\n", "ESMTP tern"),
    ],
    ids=["wrong-reply", "missing-reply", "extra-reply", "glob"],
)
def test_runner_reports_mismatches(tern, text, want):
    """The runner is able to fail, and says where and what arrived."""
    t = parse("self-test.tr", text)
    with pytest.raises(AssertionError) as err:
        # A short read timeout: the missing-reply case waits for a reply that never comes.
        run(tern(), t, timeout=1.0)
    assert want in str(err.value), err.value


def test_glob_and_unescape():
    assert glob("250 2.0.0 OK: queued as *", "250 2.0.0 OK: queued as 0123")
    assert glob("a*b*c", "abc") and not glob("a*b*c", "acb") and not glob("ab*ba", "aba")
    assert unescape(r"a\r\n\x2e\\") == b"a\r\n.\\"
