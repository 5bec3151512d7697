"""The kill loop (issue 10, crash proof): while clients send mail (local and relayed, several sizes),
`kill -9` tern at random moments and restart it. At the end every message that got a 250 must be in its
mailbox exactly once, or at the relay's next hop at least once (duplicates are counted and reported: SMTP
is at-least-once when a crash falls between the remote's 250 and the spool update, RFC 5321 6.1).

Run by hand for long runs (results go in docs/reliability.md):

    cargo build -p tern && python3 tests/e2e/killloop.py --kills 1000 --seed 1

`tests/e2e/test_killloop.py` runs it in CI with 20 kills. Only loopback addresses are used; every process
started here is stopped, and every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import smtplib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay_helpers import Remote, relay_config, route_to  # noqa: E402
from ternlib import LOCAL_DOMAIN, Tern  # noqa: E402

MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)
SIZES = (512, 8 * 1024, 200 * 1024)
LOCAL_RCPTS = [f"user{i}@{LOCAL_DOMAIN}" for i in range(4)]
RELAY_RCPT = "someone@relay.test"


@dataclass
class Result:
    kills: int = 0
    sent: int = 0
    acked_local: set[str] = field(default_factory=set)
    acked_relay: set[str] = field(default_factory=set)
    refused: int = 0  # connection refused / reset / 4xx while tern was down or restarting
    local_missing: list[str] = field(default_factory=list)
    local_duplicated: list[str] = field(default_factory=list)
    relay_missing: list[str] = field(default_factory=list)
    relay_duplicated: int = 0
    elapsed: float = 0.0

    def ok(self) -> bool:
        return not self.local_missing and not self.local_duplicated and not self.relay_missing

    def summary(self) -> dict:
        return {
            "kills": self.kills,
            "sent": self.sent,
            "acknowledged_local": len(self.acked_local),
            "acknowledged_relay": len(self.acked_relay),
            "not_acknowledged": self.refused,
            "local_missing": len(self.local_missing),
            "local_duplicated": len(self.local_duplicated),
            "relay_missing": len(self.relay_missing),
            "relay_duplicates": self.relay_duplicated,
            "seconds": round(self.elapsed, 1),
            "ok": self.ok(),
        }


def message(mid: str, to: str, size: int, rng: random.Random) -> bytes:
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, size // len(line))
    # A line starting with a dot now and then exercises dot-stuffing across the kill.
    if rng.random() < 0.3:
        body = b".dot line\r\n" + body
    head = (f"From: <load@example.test>\r\nTo: <{to}>\r\nSubject: kill loop\r\n"
            f"Message-ID: <{mid}>\r\n\r\n").encode()
    return head + body


def client(srv: Tern, res: Result, lock: threading.Lock, stop: threading.Event, seed: int, n: int) -> None:
    rng = random.Random(seed)
    seq = 0
    while not stop.is_set():
        seq += 1
        mid = f"k{n}.{seq}@kill.test"
        relay = rng.random() < 0.3
        to = RELAY_RCPT if relay else rng.choice(LOCAL_RCPTS)
        data = message(mid, to, rng.choice(SIZES), rng)
        with lock:
            res.sent += 1
        try:
            with smtplib.SMTP(srv.host, srv.port, local_hostname="load.test", timeout=10) as s:
                s.sendmail("load@example.test", [to], data)
            # sendmail returned: the final dot got a 250.
            with lock:
                (res.acked_relay if relay else res.acked_local).add(mid)
        except (OSError, smtplib.SMTPException):
            with lock:
                res.refused += 1
            # tern is down or restarting: do not spin.
            stop.wait(0.05)


def ids_in(paths) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in paths:
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            continue
        m = MESSAGE_ID.search(data)
        if m:
            key = m.group(1).decode()
            counts[key] = counts.get(key, 0) + 1
    return counts


def run(kills: int, seed: int, clients: int = 4, root: Path | None = None, max_seconds: float = 3600) -> Result:
    rng = random.Random(seed)
    res = Result()
    lock = threading.Lock()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tern-killloop-") as tmp, Remote() as remote:
        base = Path(root) if root else Path(tmp)
        cfg = relay_config(routes={"relay.test": route_to(remote.port)},
                           queue={"retry_schedule": ["1s"]},
                           local={"domains": [LOCAL_DOMAIN], "catch_all": True},
                           log={"level": "info"})
        srv = Tern(base / "tern", cfg)
        try:
            srv.start()
            stop = threading.Event()
            threads = [threading.Thread(target=client, args=(srv, res, lock, stop, seed * 100 + i, i), daemon=True)
                       for i in range(clients)]
            for t in threads:
                t.start()
            deadline = started + max_seconds
            while res.kills < kills and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.05, 0.6))
                srv.kill9()
                res.kills += 1
                srv.start()
            stop.set()
            for t in threads:
                t.join(timeout=20)
            # Let the relay finish: every queue entry delivered or failed (the remote accepts everything).
            drain = time.monotonic() + 120
            env_dir = srv.data_dir / "queue" / "env"
            while time.monotonic() < drain:
                left = [p for p in env_dir.iterdir() if not p.name.startswith(".")] if env_dir.exists() else []
                if not left:
                    break
                time.sleep(0.2)
            srv.stop()
        finally:
            srv.cleanup()
        mailboxes = srv.data_dir / "mailboxes"
        local = ids_in(p for p in mailboxes.glob(f"{LOCAL_DOMAIN}/*/new/*"))
        for mid in sorted(res.acked_local):
            n = local.get(mid, 0)
            if n == 0:
                res.local_missing.append(mid)
            elif n > 1:
                res.local_duplicated.append(mid)
        relayed: dict[str, int] = {}
        for got in remote.messages:
            m = MESSAGE_ID.search(got.content)
            if m:
                key = m.group(1).decode()
                relayed[key] = relayed.get(key, 0) + 1
        res.relay_missing = [mid for mid in sorted(res.acked_relay) if relayed.get(mid, 0) == 0]
        res.relay_duplicated = sum(n - 1 for mid, n in relayed.items() if n > 1 and mid in res.acked_relay)
    res.elapsed = time.monotonic() - started
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=3600)
    args = ap.parse_args()
    res = run(args.kills, args.seed, args.clients, max_seconds=args.max_seconds)
    print(json.dumps(res.summary()))
    if not res.ok():
        print("missing local:", res.local_missing[:20], file=sys.stderr)
        print("duplicated local:", res.local_duplicated[:20], file=sys.stderr)
        print("missing relayed:", res.relay_missing[:20], file=sys.stderr)
    return 0 if res.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
