"""The full-disk run (issue 10): tern's data_dir on a small tmpfs, clients sending local and relayed mail,
and a filler file that takes every free byte while they send. Replies must turn to 452 (4.3.1: at MAIL once
the disk monitor sees free space below `limits.min_free_space`, or at the end of data when a write hits
ENOSPC), nothing that got a 250 may be lost or partial (every local copy compared byte for byte in its
Maildir, every relayed one at the sink), nothing partial may sit in a Maildir, and once the filler is
removed the 250s must come back.

Needs root (mount). Run by hand with `scripts/full-disk.sh` (results go in docs/reliability.md);
`tests/e2e/test_full_disk.py` runs it in CI. Only loopback addresses are used; every process started here
is stopped and the tmpfs unmounted; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay_helpers import Remote, relay_config, route_to  # noqa: E402
from ternlib import LOCAL_DOMAIN, Tern, as_stored, split_trace  # noqa: E402

MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)
SIZES = (1024, 16 * 1024, 120 * 1024)
LOCAL_RCPTS = [f"user{i}@{LOCAL_DOMAIN}" for i in range(4)]
RELAY_RCPT = "someone@relay.test"
LOW_LOG = "disk space low"
RECOVERED_LOG = "disk space recovered"


def is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Result:
    sent: int = 0
    # Message-ID -> (recipient, the message as sent) for every 250 after the final dot.
    acked: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    # (phase, where, code) for every refusal: phase is before / full / after the filler.
    refused: list[tuple[str, str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # connection errors (should be none)
    acked_by_phase: dict[str, int] = field(default_factory=lambda: {"before": 0, "full": 0, "after": 0})
    filler_bytes: int = 0
    local_missing: list[str] = field(default_factory=list)
    relay_missing: list[str] = field(default_factory=list)
    partial_files: list[str] = field(default_factory=list)
    left_in_queue: int = 0
    elapsed: float = 0.0

    def refusals(self, phase: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for p, where, code in self.refused:
            if phase is None or p == phase:
                key = f"{code} at {where}"
                out[key] = out.get(key, 0) + 1
        return out

    def unexpected_codes(self) -> list[tuple[str, str, int]]:
        """Refusals other than 452: a full disk must never turn into a 451 or a 5xx."""
        return [r for r in self.refused if r[2] != 452]

    def ok(self) -> bool:
        return (not self.local_missing and not self.relay_missing and not self.partial_files
                and not self.unexpected_codes() and not self.errors
                and self.refusals("full") != {} and self.acked_by_phase["after"] > 0)

    def summary(self) -> dict:
        return {
            "sent": self.sent,
            "acknowledged": len(self.acked),
            "acknowledged_by_phase": self.acked_by_phase,
            "refused_while_full": self.refusals("full"),
            "refused_other_phases": {p: self.refusals(p) for p in ("before", "after") if self.refusals(p)},
            "connection_errors": len(self.errors),
            "filler_bytes": self.filler_bytes,
            "local_missing_or_damaged": len(self.local_missing),
            "relay_missing_or_damaged": len(self.relay_missing),
            "partial_files": len(self.partial_files),
            "left_in_queue": self.left_in_queue,
            "seconds": round(self.elapsed, 1),
            "ok": self.ok(),
        }


class Phase:
    """Which stage of the run a reply belongs to (set by the driver, read by the clients)."""

    def __init__(self):
        self.name = "before"
        self.lock = threading.Lock()


def message(mid: str, to: str, size: int) -> bytes:
    line = b"y" * 76 + b"\r\n"
    body = b".a line that starts with a dot\r\n" + line * max(1, size // len(line))
    head = (f"From: <load@example.test>\r\nTo: <{to}>\r\nSubject: full disk\r\n"
            f"Message-ID: <{mid}>\r\n\r\n").encode()
    return head + body


def client(srv: Tern, res: Result, phase: Phase, lock: threading.Lock, stop: threading.Event, seed: int,
           n: int) -> None:
    rng = random.Random(seed)
    seq = 0
    while not stop.is_set():
        seq += 1
        mid = f"f{n}.{seq}@full.test"
        to = RELAY_RCPT if rng.random() < 0.3 else rng.choice(LOCAL_RCPTS)
        data = message(mid, to, rng.choice(SIZES))
        with lock:
            res.sent += 1
        where, code = "", 0
        with phase.lock:
            # The phase a transaction started in: a refusal at DATA of a message that began before the
            # filler still counts as "full", since the disk filled under it.
            started_in = phase.name
        try:
            with smtplib.SMTP(srv.host, srv.port, local_hostname="load.test", timeout=20) as s:
                s.ehlo()
                code, _ = s.mail("load@example.test")
                where = "MAIL"
                if code == 250:
                    code, _ = s.rcpt(to)
                    where = "RCPT"
                if code == 250:
                    # smtplib returns the reply to the final dot (it raises only if DATA gets no 354).
                    code, _ = s.data(data)
                    where = "end of data"
        except (OSError, smtplib.SMTPException) as e:
            with lock:
                res.errors.append(f"{type(e).__name__}: {e}")
            stop.wait(0.05)
            continue
        with phase.lock:
            now = phase.name
        label = "full" if "full" in (started_in, now) else now
        with lock:
            if code == 250 and where == "end of data":
                res.acked[mid] = (to, data)
                res.acked_by_phase[label] += 1
            else:
                res.refused.append((label, where, code))
        if code != 250:
            # Refused: back off a little, as a real client would (and do not spin on a full disk).
            stop.wait(0.05)


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def fill(path: Path) -> int:
    """Writes zeros to `path` until the filesystem says ENOSPC; returns the bytes written."""
    chunk = b"\0" * (256 * 1024)
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n = f.write(chunk)
            except OSError as e:
                if e.errno == 28:  # ENOSPC
                    return written
                raise
            written += n or 0


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)


def umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        # Something still holds a file there (it cannot be tern: it is stopped first): detach lazily.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def damaged_maildir_files(data_dir: Path) -> list[str]:
    """Files in a Maildir tmp/ (tern writes there only with no staging area) or in the staging area, and
    files in new/ or cur/ that are not a whole message (no end of header): none may be left."""
    bad = []
    root = data_dir / "mailboxes"
    for dirpath, _dirs, files in os.walk(root):
        d = Path(dirpath)
        for f in files:
            p = d / f
            if d.name == "tmp" or d.parent.name == ".staging":
                bad.append(str(p))
            elif d.name in ("new", "cur") and b"\n\n" not in p.read_bytes():
                bad.append(str(p))
    return bad


def run(size: str = "32m", clients: int = 4, warmup: int = 20, full_refusals: int = 10, resume: int = 20,
        root: Path | None = None, max_seconds: float = 300) -> Result:
    if not is_root():
        raise PermissionError("the full-disk run mounts a tmpfs: run it as root")
    res = Result()
    lock = threading.Lock()
    phase = Phase()
    started = time.monotonic()
    deadline = started + max_seconds
    with tempfile.TemporaryDirectory(prefix="tern-fulldisk-") as tmp, Remote() as remote:
        base = Path(root) if root else Path(tmp)
        cfg = relay_config(routes={"relay.test": route_to(remote.port)},
                           queue={"retry_schedule": ["1s"]},
                           local={"domains": [LOCAL_DOMAIN], "catch_all": True},
                           log={"level": "info"})
        srv = Tern(base / "tern", cfg)
        mount_tmpfs(srv.data_dir, size)
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            srv.start()
            threads = [threading.Thread(target=client, args=(srv, res, phase, lock, stop, 1000 + i, i), daemon=True)
                       for i in range(clients)]
            for t in threads:
                t.start()
            left = lambda: deadline - time.monotonic()  # noqa: E731
            wait_until(lambda: len(res.acked) >= warmup, left(), f"{warmup} messages accepted before the filler")

            filler = srv.data_dir / "filler"
            with phase.lock:
                phase.name = "full"
            res.filler_bytes = fill(filler)
            wait_until(lambda: LOW_LOG in srv.log(), left(), f"the log line {LOW_LOG!r}")
            wait_until(lambda: sum(res.refusals("full").values()) >= full_refusals, left(),
                       f"{full_refusals} refusals while the disk is full")

            filler.unlink()
            wait_until(lambda: RECOVERED_LOG in srv.log(), left(), f"the log line {RECOVERED_LOG!r}")
            with phase.lock:
                phase.name = "after"
            wait_until(lambda: res.acked_by_phase["after"] >= resume, left(),
                       f"{resume} messages accepted after the filler was removed")
            stop.set()
            for t in threads:
                t.join(timeout=30)
            # Let the relay deliver everything queued.
            env_dir = srv.data_dir / "queue" / "env"

            def queue_empty():
                return not [p for p in env_dir.iterdir() if not p.name.startswith(".")]

            try:
                wait_until(queue_empty, max(left(), 30), "the queue to drain", interval=0.2)
            except AssertionError:
                pass
            res.left_in_queue = len([p for p in env_dir.iterdir() if not p.name.startswith(".")])
            srv.stop()

            # Every acknowledged message is complete where it belongs.
            local_files: dict[str, list[bytes]] = {}
            for p in (srv.data_dir / "mailboxes" / LOCAL_DOMAIN).glob("*/new/*"):
                content = p.read_bytes()
                m = MESSAGE_ID.search(content)
                if m:
                    local_files.setdefault(m.group(1).decode(), []).append(content)
            relayed: dict[str, list[bytes]] = {}
            for got in remote.messages:
                m = MESSAGE_ID.search(got.content)
                if m:
                    relayed.setdefault(m.group(1).decode(), []).append(got.content)
            for mid, (to, data) in sorted(res.acked.items()):
                if to == RELAY_RCPT:
                    # At least once (RFC 5321 6.1), each copy the message as sent after tern's Received.
                    copies = relayed.get(mid, [])
                    if not copies or not all(c.endswith(data) for c in copies):
                        res.relay_missing.append(mid)
                else:
                    copies = local_files.get(mid, [])
                    if len(copies) != 1 or split_trace(copies[0])[1] != as_stored(data, copies[0]):
                        res.local_missing.append(mid)
            res.partial_files = damaged_maildir_files(srv.data_dir)
        finally:
            stop.set()
            srv.cleanup()
            umount(srv.data_dir)
    res.elapsed = time.monotonic() - started
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="32m", help="tmpfs size (mount -o size=)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=50, help="messages accepted before the filler")
    ap.add_argument("--full-refusals", type=int, default=50, help="refusals to see while full")
    ap.add_argument("--resume", type=int, default=50, help="messages accepted after the filler is removed")
    ap.add_argument("--max-seconds", type=float, default=600)
    args = ap.parse_args()
    res = run(args.size, args.clients, args.warmup, args.full_refusals, args.resume, max_seconds=args.max_seconds)
    print(json.dumps(res.summary()))
    if not res.ok():
        print("missing/damaged local:", res.local_missing[:20], file=sys.stderr)
        print("missing/damaged relayed:", res.relay_missing[:20], file=sys.stderr)
        print("partial files:", res.partial_files[:20], file=sys.stderr)
        print("unexpected codes:", res.unexpected_codes()[:20], file=sys.stderr)
        print("connection errors:", res.errors[:20], file=sys.stderr)
    return 0 if res.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
