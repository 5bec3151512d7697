#!/usr/bin/env python3
"""Benchmark driver behind bench/run.sh: runs the issue-6/15 workloads against Postfix, Exim, OpenSMTPD and tern.

Throughput workloads use one generator for every server: bench/loadgen by default (one TCP connection per
message, one command at a time, no pipelining, as smtp-source; it half-closes after QUIT, see generate()),
or Postfix's smtp-source with --generator smtp-source; accept latency and idle connections use loadgen. A local workload is timed from the start of the
generator until the last expected file is in a Maildir new/ folder; a relay workload until smtp-sink has
counted every message. Servers alternate per workload inside each repetition; the table shows medians.
Each server runs in its own cgroup (v2), so the CPU time of all its processes, the delivery agents it forks
included, is read from cpu.stat before and after each run (CPU seconds per 1,000 messages). A separate pass
counts fsync-type system calls per message with strace (never in the timed runs).
Every process started here is stopped in a finally block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(os.environ.get("BENCH_DIR", "/tmp/tern-bench"))
PF_PORT = int(os.environ.get("PF_PORT", "10025"))
TERN_PORT = int(os.environ.get("TERN_PORT", "10026"))
SINK_PORT = int(os.environ.get("SINK_PORT", "10027"))
EXIM_PORT = int(os.environ.get("EXIM_PORT", "10028"))
OSMTPD_PORT = int(os.environ.get("OSMTPD_PORT", "10029"))
LOADGEN = Path(os.environ.get("LOADGEN_BIN", ROOT / "target/release/loadgen"))
TERN_BIN = Path(os.environ.get("TERN_BIN", ROOT / "target/release/tern"))
SENDER = "bench@client.test"
KIB, MIB = 1024, 1024 * 1024
STALL = 15.0  # seconds without progress after which a run counts as failed
BUDGET = 180.0  # seconds per run at most
SETTLE = 0.5  # seconds after the last message arrived before the CPU counters are read (queue-file cleanup)


# ---------------------------------------------------------------- cgroups (CPU of a server and its children)


def _cgroup_root() -> Path | None:
    """A cgroup v2 hierarchy we can create groups in: /sys/fs/cgroup (pure v2) or /sys/fs/cgroup/unified
    (hybrid, as on this machine). cpu.stat (usage_usec) exists in every v2 group without any controller."""
    for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (base / "cgroup.procs").exists() and (base / "cgroup.stat").exists():
            return base / "tern-bench"
    return None


class CGroup:
    """One cgroup v2 group per server: a process started with preexec_fn=cg.enter (or a script that starts
    the server) puts itself in it, and everything it forks inherits it, daemons and delivery agents too."""

    def __init__(self, name: str) -> None:
        root = _cgroup_root()
        self.path = root / name if root else None
        if self.path is not None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError:
                self.path = None

    def enter(self) -> None:  # runs in the child between fork and exec
        if self.path is not None:
            with open(self.path / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def cpu(self) -> tuple[float, float, float] | None:
        """(usage, user, system) in seconds, or None without a cgroup."""
        if self.path is None:
            return None
        vals = {}
        try:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                k, v = line.split()
                vals[k] = int(v)
        except OSError:
            return None
        return vals.get("usage_usec", 0) / 1e6, vals.get("user_usec", 0) / 1e6, vals.get("system_usec", 0) / 1e6

    def pids(self) -> list[int]:
        if self.path is None:
            return []
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def remove(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:
                pass


def cpu_delta(before, after) -> float | None:
    return None if before is None or after is None else after[0] - before[0]


@dataclass
class Workload:
    name: str
    kind: str  # "local" (Maildir), "relay" (to smtp-sink), "sink" (generator straight at smtp-sink)
    sessions: int
    size: int
    rcpts: int
    full: int  # messages per run in the full matrix
    quick: int  # ... and with --quick

    def messages(self, quick: bool) -> int:
        return self.quick if quick else self.full


# The issue-6 matrix. Message counts keep each run at a few seconds on Postfix (~500-1000 msgs/s locally).
# A server with scale < 1 (Exim, OpenSMTPD: far slower here, see their classes) gets that share of the messages
# (at least 2 per session); msgs/s and CPU per 1,000 messages are rates, so they stay comparable.
WORKLOADS = [
    Workload("local 1 KiB, 1 session", "local", 1, KIB, 1, 500, 200),
    Workload("local 1 KiB, 20 sessions", "local", 20, KIB, 1, 4000, 1000),
    Workload("local 1 KiB, 100 sessions", "local", 100, KIB, 1, 4000, 1000),
    Workload("local 5 KiB, 20 sessions", "local", 20, 5 * KIB, 1, 3000, 1000),
    Workload("local 5 KiB, 100 sessions", "local", 100, 5 * KIB, 1, 3000, 1000),
    Workload("local 1 KiB x 10 rcpts, 20 sessions", "local", 20, KIB, 10, 1000, 300),
    Workload("local 1 KiB x 10 rcpts, 100 sessions", "local", 100, KIB, 10, 1000, 300),
    Workload("local 100 KiB, 20 sessions", "local", 20, 100 * KIB, 1, 1000, 300),
    Workload("local 100 KiB, 100 sessions", "local", 100, 100 * KIB, 1, 1000, 300),
    Workload("local 10 MiB, 1 session", "local", 1, 10 * MIB, 1, 10, 3),
    Workload("local 10 MiB, 20 sessions", "local", 20, 10 * MIB, 1, 40, 20),
    Workload("relay 1 KiB, 20 sessions", "relay", 20, KIB, 1, 4000, 1000),
    Workload("relay 1 KiB, 100 sessions", "relay", 100, KIB, 1, 4000, 1000),
    Workload("relay 100 KiB, 20 sessions", "relay", 20, 100 * KIB, 1, 1000, 300),
]
# The same generator straight at smtp-sink: the ceiling of generator + loopback on this machine.
SINK_WORKLOADS = [
    Workload("smtp-sink 1 KiB, 20 sessions", "sink", 20, KIB, 1, 8000, 2000),
    Workload("smtp-sink 1 KiB, 100 sessions", "sink", 100, KIB, 1, 8000, 2000),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def count_files(dirs: list[Path]) -> int:
    n = 0
    for d in dirs:
        try:
            with os.scandir(d) as it:
                n += sum(1 for _ in it)
        except FileNotFoundError:
            pass
    return n


TRASH = BENCH_DIR / "trash"
_trash_n = 0


def to_trash(path: Path) -> None:
    """Moves a file or folder out of the way instead of deleting it; the trash is emptied after the run.

    On ext4 without a journal (this machine) the inode allocator skips every inode freed in the last
    1-6 minutes and checks them one by one, under the directory lock: deleting the previous run's
    thousands of Maildir files slowed the next run of whichever server followed (tern more, since it
    creates files faster) and made figures swing 2x. Renames free nothing."""
    global _trash_n
    _trash_n += 1
    TRASH.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(path, TRASH / f"{_trash_n}-{path.name}")
    except FileNotFoundError:
        pass


def empty_trash() -> None:
    shutil.rmtree(TRASH, ignore_errors=True)


def empty_dirs(dirs: list[Path]) -> None:
    """Empties each folder but keeps the folders (the servers may cache that they exist): the files go
    to the trash (see to_trash)."""
    for d in dirs:
        try:
            with os.scandir(d) as it:
                names = [e.path for e in it if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        if names:
            bucket = TRASH / f"{_next_bucket()}-files"
            bucket.mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(names):
                try:
                    os.rename(path, bucket / str(i))
                except FileNotFoundError:
                    pass


def _next_bucket() -> int:
    global _trash_n
    _trash_n += 1
    return _trash_n


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """True once 127.0.0.1:port answers with a 220 greeting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    try:
                        s.recv(512)
                    except OSError:
                        pass
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def stop_proc(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from /proc/<pid>/status."""
    vals = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in vals:
                vals[key] = int(line.split()[1])
    except OSError:
        pass
    return vals["VmRSS"], vals["VmHWM"]


# ---------------------------------------------------------------- peers


class Sink:
    """smtp-sink on SINK_PORT with a running counter (-c) written to a file; count() reads its tail."""

    def __init__(self) -> None:
        self.out = BENCH_DIR / "smtp-sink.out"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.outf = open(self.out, "wb")
        # -u: smtp-sink refuses to run as root without a user to drop to. Backlog 1024 for 100 sessions.
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{SINK_PORT}", "1024"],
            stdout=self.outf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        if not wait_port(SINK_PORT, 10, self.proc):
            raise RuntimeError("smtp-sink did not start")

    def ensure(self, notes: list) -> None:
        """Restarts smtp-sink if it has exited (it once vanished mid-run here with no message)."""
        if self.proc is not None and self.proc.poll() is not None:
            notes.append(f"smtp-sink exited with {self.proc.returncode} during the run; restarted")
            log(notes[-1])
            self.start()

    def count(self) -> int:
        # The counter line looks like "sess=N quit=N mesg=N\r"; only the last one matters.
        try:
            with open(self.out, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 200))
                tail = f.read().decode("ascii", "replace")
        except OSError:
            return 0
        for rec in reversed(tail.replace("\r", "\n").split("\n")):
            for part in rec.split():
                if part.startswith("mesg="):
                    try:
                        return int(part[5:])
                    except ValueError:
                        break
        return 0

    def stop(self) -> None:
        stop_proc(self.proc)
        self.proc = None


class Postfix:
    name = "postfix"
    port = PF_PORT
    scale = 1.0

    def __init__(self) -> None:
        self.maildir = BENCH_DIR / "postfix/vmail/mail"
        self.cg = CGroup(self.name)

    def env(self) -> dict:
        return dict(os.environ, BENCH_DIR=str(BENCH_DIR), PF_PORT=str(PF_PORT), SINK_PORT=str(SINK_PORT))

    def start(self) -> None:
        # Mail deferred by an earlier run would reach smtp-sink during this one and inflate its counter:
        # delete it while Postfix is stopped, so the queue manager cannot pick any of it up first.
        subprocess.run([str(ROOT / "bench/postfix.sh"), "stop"], check=False, env=self.env())
        subprocess.run([str(ROOT / "bench/postfix.sh"), "setup"], check=True, env=self.env())
        subprocess.run(["postsuper", "-c", str(BENCH_DIR / "postfix/etc"), "-d", "ALL"],
                       check=False, capture_output=True)
        # In the server's cgroup: `postfix start` forks master, which forks every other Postfix process.
        subprocess.run([str(ROOT / "bench/postfix.sh"), "start"], check=True, env=self.env(),
                       preexec_fn=self.cg.enter)

    def stop(self) -> None:
        subprocess.run([str(ROOT / "bench/postfix.sh"), "stop"], check=False, env=self.env())

    def new_dirs(self) -> list[Path]:
        return [self.maildir / "new"]

    def reset(self) -> None:
        for sub in ("new", "cur", "tmp"):
            empty_dirs([self.maildir / sub])

    def pid(self) -> int | None:
        return None


class ScriptPeer:
    """A peer run by a bench/<name>.sh start|stop script (the way bench/postfix.sh runs Postfix), with a
    catch-all Maildir under $BENCH_DIR/<name>/vmail/mail and a spool that starts empty on every start."""

    name = ""
    port = 0
    scale = 1.0
    script = ""
    port_env = ""

    def __init__(self) -> None:
        self.base = BENCH_DIR / self.name
        self.maildir = self.base / "vmail/mail"
        self.cg = CGroup(self.name)

    def env(self) -> dict:
        return dict(os.environ, BENCH_DIR=str(BENCH_DIR), SINK_PORT=str(SINK_PORT), **{self.port_env: str(self.port)})

    def start(self) -> None:
        subprocess.run([str(ROOT / self.script), "stop"], check=False, env=self.env())
        # Mail deferred by an earlier run would reach smtp-sink during this one: a fresh spool (see to_trash).
        to_trash(self.base / "spool")
        subprocess.run([str(ROOT / self.script), "start"], check=True, env=self.env(), preexec_fn=self.cg.enter)

    def stop(self) -> None:
        subprocess.run([str(ROOT / self.script), "stop"], check=False, env=self.env())

    def new_dirs(self) -> list[Path]:
        return [self.maildir / "new"]

    def reset(self) -> None:
        for sub in ("new", "cur", "tmp"):
            empty_dirs([self.maildir / sub])

    def pid(self) -> int | None:
        return None


class Exim(ScriptPeer):
    """Exim 4.96 (Debian exim4-daemon-light, unpacked): bench/exim.sh. A process per connection and one per
    delivery. Exim 4.96 holds its 221 reply to QUIT for up to 200 ms, hoping the client closes first: with
    smtp-source (which waits for the 221) a session carries at most ~5 msgs/s whatever the CPU; loadgen
    half-closes after QUIT, so Exim answers at once. Half the messages keep its runs short."""

    name = "exim"
    port = EXIM_PORT
    scale = 0.5
    script = "bench/exim.sh"
    port_env = "EXIM_PORT"


class OpenSMTPD(ScriptPeer):
    """OpenSMTPD 6.8 (Debian opensmtpd, unpacked where .ci/run puts it): bench/opensmtpd.sh. Its listen
    backlog is compiled in as 5: with 20 or 100 sessions reconnecting for every message, connections would
    overflow it and wait for the client's SYN retransmission (1 s, then 3 s); bench/shim/listen_backlog.c,
    preloaded, raises it to 1024. Half the messages keep its runs short."""

    name = "opensmtpd"
    port = OSMTPD_PORT
    scale = 0.5
    script = "bench/opensmtpd.sh"
    port_env = "OSMTPD_PORT"


class Tern:
    name = "tern"
    port = TERN_PORT
    scale = 1.0

    def __init__(self) -> None:
        self.root = BENCH_DIR / "tern"
        self.data = self.root / "data"
        self.config = self.root / "tern.toml"
        self.proc: subprocess.Popen | None = None
        self.cg = CGroup(self.name)

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # The equivalent of bench/postfix.sh: catch-all Maildir delivery for bench.test, relay.test routed to
        # smtp-sink, 50 MiB messages, and connection limits raised for the 10,000-idle-connection test.
        self.config.write_text(
            f'''# Written by bench/bench.py; rewritten on every run.
hostname = "tern.bench.invalid"
data_dir = "{self.data}"

[smtp]
listen = ["127.0.0.1:{TERN_PORT}"]

[limits]
max_message_size = 52428800
max_connections = 20000
max_connections_per_ip = 0

[local]
domains = ["bench.test"]
catch_all = true

[routes]
"relay.test" = "127.0.0.1:{SINK_PORT}"
'''
        )

    def start(self) -> None:
        # A fresh spool: queued relay mail from an earlier run would inflate smtp-sink's counter.
        to_trash(self.data)
        self.write_config()
        self.logf = open(self.root / "tern.log", "ab")
        self.proc = subprocess.Popen(
            [str(TERN_BIN), "serve", "--config", str(self.config)],
            stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
            preexec_fn=self.cg.enter,
        )
        if not wait_port(TERN_PORT, 20, self.proc):
            stop_proc(self.proc)
            raise RuntimeError(f"tern did not start; see {self.root / 'tern.log'}")

    def stop(self) -> None:
        stop_proc(self.proc)
        self.proc = None

    def new_dirs(self) -> list[Path]:
        base = self.data / "mailboxes" / "bench.test"
        try:
            return [p / "new" for p in base.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []

    def reset(self) -> None:
        base = self.data / "mailboxes" / "bench.test"
        try:
            for p in base.iterdir():
                for sub in ("new", "cur", "tmp"):
                    empty_dirs([p / sub])
        except FileNotFoundError:
            pass

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


# ---------------------------------------------------------------- measurements


@dataclass
class Run:
    rate: float | None  # messages per second, end to end (None: failed)
    secs: float = 0.0
    note: str = ""
    n: int = 0  # messages sent
    cpu: float | None = None  # CPU seconds (user + system) of all the server's processes during the run
    gen_cpu: float | None = None  # ... of the generator

    def cpu_per_k(self) -> float | None:
        return None if self.rate is None or self.cpu is None or not self.n else self.cpu / self.n * 1000

    def gen_per_k(self) -> float | None:
        return None if self.rate is None or self.gen_cpu is None or not self.n else self.gen_cpu / self.n * 1000


GEN_CG: CGroup | None = None


GENERATOR = "loadgen"  # or "smtp-source" (--generator)


def generate(port: int, wl: Workload, n: int, domain: str, timeout: float) -> subprocess.CompletedProcess:
    """The throughput generator: one TCP connection per message, one command at a time (no pipelining),
    wl.sessions at once. loadgen (the default) half-closes after QUIT before reading the 221, as a client
    that is done may; smtp-source waits for the 221 first, which Exim 4.96 holds for up to 200 ms hoping
    the client closes first (a cap of ~5 msgs/s per session that measures that pause, not Exim)."""
    if GENERATOR == "smtp-source":
        cmd = ["smtp-source", "-s", str(wl.sessions), "-m", str(n), "-l", str(wl.size), "-r", str(wl.rcpts),
               "-f", SENDER, "-t", f"bench@{domain}", f"127.0.0.1:{port}"]
    else:
        cmd = [str(LOADGEN), "--server", f"127.0.0.1:{port}", "--sessions", str(wl.sessions), "--messages",
               str(n), "--size", str(wl.size), "--rcpts", str(wl.rcpts), "--domain", domain, "--from", SENDER,
               "--timeout", "30", "--deadline", str(int(timeout))]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30,
                          preexec_fn=GEN_CG.enter if GEN_CG is not None else None)


def messages_for(server, wl: Workload, quick: bool) -> int:
    n = wl.messages(quick)
    scale = getattr(server, "scale", 1.0) if server is not None else 1.0
    return n if scale >= 1 else max(2 * wl.sessions, int(n * scale))


def measure(server, sink: Sink, wl: Workload, n: int) -> Run:
    """One run of one workload against one server (server=None: straight at smtp-sink)."""
    cg = server.cg if server is not None else None
    cpu0 = cg.cpu() if cg else None
    gen0 = GEN_CG.cpu() if GEN_CG else None
    run = _measure(server, sink, wl, n)
    run.n = n
    if run.rate is not None:
        time.sleep(SETTLE)
        run.cpu = cpu_delta(cpu0, cg.cpu() if cg else None)
        run.gen_cpu = cpu_delta(gen0, GEN_CG.cpu() if GEN_CG else None)
    return run


def _measure(server, sink: Sink, wl: Workload, n: int) -> Run:
    if wl.kind == "local":
        server.reset()
        expected = n * wl.rcpts
        counter = lambda: count_files(server.new_dirs())  # noqa: E731
        port, domain = server.port, "bench.test"
    elif wl.kind == "relay":
        expected = sink.count() + n
        counter = sink.count
        port, domain = server.port, "relay.test"
    else:
        expected = sink.count() + n
        counter = sink.count
        port, domain = SINK_PORT, "relay.test"
    budget = BUDGET
    t0 = time.monotonic()
    try:
        res = generate(port, wl, n, domain, budget)
    except subprocess.TimeoutExpired:
        return Run(None, budget, "generator timed out")
    if res.returncode != 0:
        lines = (res.stderr or res.stdout or f"exit {res.returncode}").strip().splitlines()
        return Run(None, time.monotonic() - t0, lines[-1] if lines else f"exit {res.returncode}")
    # Delivery may lag acceptance: poll (bounded) until everything has arrived, or until nothing has
    # arrived for STALL seconds (e.g. a server that queues relay mail but does not deliver it yet).
    deadline = t0 + budget
    got = counter()
    last_change, last_got = time.monotonic(), got
    while got < expected and time.monotonic() < deadline:
        time.sleep(0.01)
        got = counter()
        now = time.monotonic()
        if got != last_got:
            last_change, last_got = now, got
        elif now - last_change > STALL:
            break
    secs = time.monotonic() - t0
    if got < expected:
        return Run(None, secs, f"only {got}/{expected} arrived")
    return Run(n / secs, secs)


def loadgen_latency(server, n: int) -> dict:
    """Accept latency (final '.' -> 250) at 20 sessions, 1 KiB, local delivery, via loadgen.
    server=None: the same load straight at smtp-sink (the generator's ceiling)."""
    if server is not None:
        server.reset()
    port = server.port if server is not None else SINK_PORT
    cmd = [str(LOADGEN), "--server", f"127.0.0.1:{port}", "--sessions", "20", "--messages", str(n),
           "--size", "1024", "--rcpts", "1", "--domain", "bench.test", "--timeout", "30", "--deadline", "120"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    out = {}
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            out = dict(kv.split("=", 1) for kv in line.split()[1:])
    # Let deliveries finish before the next workload.
    deadline = time.monotonic() + 60
    while server is not None and count_files(server.new_dirs()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    out["rc"] = str(res.returncode)
    return out


def idle_test(server, n: int, hold: float) -> dict:
    """n idle connections via loadgen; samples the server's RSS (if it is one process) while all are held."""
    cmd = [str(LOADGEN), "--server", f"127.0.0.1:{server.port}", "--idle", str(n), "--hold", str(hold),
           "--greet-timeout", "10", "--parallel", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out: dict = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when loadgen exits (bounded by --hold and its timeouts)
            if line.startswith("HOLDING") and server.pid():
                time.sleep(0.5)
                rss, hwm = rss_kib(server.pid())
                out["rss_kib"], out["hwm_kib"] = rss, hwm
            elif line.startswith("HOLDING") and server.cg.pids():
                # Several processes: the sum of their VmRSS (counts shared pages once per process: an upper bound).
                time.sleep(0.5)
                pids = server.cg.pids()
                out["rss_kib"] = sum(rss_kib(p)[0] for p in pids)
                out["procs"] = len(pids)
            if line.startswith("IDLE "):
                out.update(dict(kv.split("=", 1) for kv in line.split()[1:]))
        proc.wait(hold + 60)
    finally:
        stop_proc(proc)
    return out


SYNC_CALLS = "fsync,fdatasync,sync_file_range,syncfs,msync"


def fsync_pass(server, sink: Sink, wl: Workload, n: int) -> dict:
    """Counts fsync-type system calls of all the server's processes (and every process they fork while traced)
    during one run of wl, with strace -f -c attached to every thread in the server's cgroup. strace slows the
    server down: this run is not timed, only counted."""
    pids = []
    for pid in server.cg.pids():
        try:
            pids += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            pass
    if not pids:
        return {"error": "no processes in the server's cgroup"}
    out_file = BENCH_DIR / f"strace-{server.name}-{wl.kind}.txt"
    cmd = ["strace", "-f", "-c", "-qq", "-e", f"trace={SYNC_CALLS}", "-o", str(out_file)]
    for p in pids:
        cmd += ["-p", str(p)]
    tracer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0 + len(pids) / 500)  # let strace attach to every thread first
        run = _measure(server, sink, wl, n)
        time.sleep(SETTLE)
    finally:
        if tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)  # strace detaches and writes its -c summary
            try:
                tracer.wait(30)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait(5)
    calls: dict[str, int] = {}
    try:
        for line in out_file.read_text().splitlines():
            parts = line.split()
            if parts and parts[-1] in SYNC_CALLS.split(",") and len(parts) >= 5:
                calls[parts[-1]] = int(parts[3])
    except (OSError, ValueError):
        pass
    total = sum(calls.values())
    res = {"n": n, "calls": calls, "total": total, "ok": run.rate is not None, "note": run.note}
    if run.rate is not None and n:
        res["per_msg"] = total / n
    return res


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def probe() -> str:
    res = subprocess.run([str(LOADGEN), "--probe", str(BENCH_DIR / "probe"), "--probe-secs", "2"],
                         capture_output=True, text=True, timeout=120)
    for line in res.stdout.splitlines():
        if line.startswith("LIMITS "):
            return line
    return "LIMITS unavailable: " + res.stderr.strip()


# ---------------------------------------------------------------- report


@dataclass
class Report:
    started: dt.datetime
    quick: bool
    reps: int
    servers: list = field(default_factory=list)  # names, in the order given
    limits: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)  # (workload, {server: [Run]})
    sink_rows: list = field(default_factory=list)
    latency: dict = field(default_factory=dict)  # server -> [dict]
    idle: dict = field(default_factory=dict)  # server -> dict
    fsyncs: dict = field(default_factory=dict)  # server -> {kind: dict}
    notes: list = field(default_factory=list)
    load_start: str = ""
    load_end: str = ""
    cgroups: bool = False


def median_rate(runs: list[Run]) -> float | None:
    ok = [r.rate for r in runs if r.rate is not None]
    return statistics.median(ok) if ok else None


def median_cpu(runs: list[Run]) -> float | None:
    ok = [r.cpu_per_k() for r in runs if r.cpu_per_k() is not None]
    return statistics.median(ok) if ok else None


def median_gen(runs: list[Run]) -> float | None:
    ok = [r.gen_per_k() for r in runs if r.gen_per_k() is not None]
    return statistics.median(ok) if ok else None


def fmt(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


PEERS = ("postfix", "exim", "opensmtpd")


def best_peer(runs: dict, key) -> tuple[str | None, float | None]:
    """(name, value) of the peer with the highest msgs/s (key=median_rate) or the lowest CPU (median_cpu)."""
    vals = [(p, key(runs[p])) for p in PEERS if p in runs and key(runs[p]) is not None]
    if not vals:
        return None, None
    return (max if key is median_rate else min)(vals, key=lambda pv: pv[1])


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def render(rep: Report) -> str:
    S = rep.servers
    peers = [p for p in S if p != "tern"]
    L = []
    L.append(f"# tern vs {', '.join(peers) or 'nothing'} benchmark, {rep.started:%Y-%m-%d %H:%M} UTC")
    L.append("")
    L.append(f"Mode: {'quick' if rep.quick else 'full'}; {rep.reps} repetition(s), medians. "
             f"Generator: {GENERATOR} (one connection per message) for throughput, bench/loadgen for latency "
             f"and idle connections. Machine: {os.cpu_count()} cores. CPU: user + system of all of a server's "
             f"processes (its own cgroup v2, cpu.stat usage_usec) from the generator's start until "
             f"{SETTLE} s after the last message arrived"
             + ("" if rep.cgroups else " (NOT AVAILABLE in this run: no writable cgroup v2)") + ".")
    L.append("")
    L.append(f"Load average at start / end: {rep.load_start} / {rep.load_end} (other work on the machine skews "
             "every throughput figure; compare ratios from the same run; CPU per message is steadier).")
    L.append("")
    L.append("## Machine limits")
    L.append("")
    lim = rep.limits
    L.append("| measure | value |")
    L.append("|---|---|")
    for key, label in [("fsync_append_1t", "append 4 KiB + fsync, 1 thread (fsync/s)"),
                       ("fsync_append_8t", "append 4 KiB + fsync, 8 threads (fsync/s)"),
                       ("create_fsync", "create file + 4 KiB + fsync (files/s)"),
                       ("seq_fsync_mb_s", "sequential write of 10 MiB files + fsync (MB/s)"),
                       ("loopback_gbit_s", "loopback TCP, one stream (Gbit/s)")]:
        L.append(f"| {label} | {lim.get(key, 'n/a')} |")
    L.append("")
    L.append("## Throughput (msgs/s, end to end: until the last file is in new/ or smtp-sink has everything)")
    L.append("")
    L.append("| workload | messages/run | " + " | ".join(f"{s} msgs/s" for s in S)
             + " | best peer | tern / best peer |")
    L.append("|---|---|" + "---|" * len(S) + "---|---|")
    for wl, n, runs in rep.rows:
        ns = sorted({r.n for rs in runs.values() for r in rs if r.n})
        cells = [fmt(median_rate(runs.get(s, []))) for s in S]
        bp, bv = best_peer(runs, median_rate)
        tn = median_rate(runs.get("tern", []))
        L.append(f"| {wl.name} | {' / '.join(map(str, ns)) or n} | " + " | ".join(cells)
                 + f" | {bp or 'n/a'} | {ratio(tn, bv)} |")
    for wl, n, runs in rep.sink_rows:
        L.append(f"| {wl.name} (generator ceiling) | {n} | {fmt(median_rate(runs.get('sink', [])))} (smtp-sink)"
                 + " |" * (len(S) + 1) + " |")
    L.append("")
    L.append("## CPU seconds per 1,000 messages (all of the server's processes, delivery agents included)")
    L.append("")
    L.append("| workload | " + " | ".join(f"{s} s/1k" for s in S) + " | "
             + " | ".join(f"tern / {p}" for p in peers) + f" | {GENERATOR} s/1k (median over servers) |")
    L.append("|---|" + "---|" * len(S) + "---|" * len(peers) + "---|")
    for wl, n, runs in rep.rows:
        cells = [fmt(median_cpu(runs.get(s, [])), 2) for s in S]
        tn = median_cpu(runs.get("tern", []))
        rats = [ratio(tn, median_cpu(runs.get(p, []))) for p in peers]
        gens = [g for g in (median_gen(runs.get(s, [])) for s in S) if g is not None]
        L.append(f"| {wl.name} | " + " | ".join(cells) + " | " + " | ".join(rats)
                 + f" | {fmt(statistics.median(gens), 2) if gens else 'n/a'} |")
    L.append("")
    L.append("## Accept latency at 20 sessions (1 KiB, local; loadgen; final '.' to its 250)")
    L.append("")
    L.append("| server | messages | msgs/s accepted | p50 ms | p99 ms | max ms |")
    L.append("|---|---|---|---|---|---|")
    for srv, results in rep.latency.items():
        def med(key: str) -> str:
            vals = [float(r[key]) for r in results if key in r and r[key] != "-"]
            return f"{statistics.median(vals):.2f}" if vals else "n/a"
        msgs = sorted({r.get("n", "") for r in results})
        L.append(f"| {srv} | {'/'.join(map(str, msgs))} | {med('msgs_per_s')} | {med('p50_ms')} | {med('p99_ms')} "
                 f"| {med('max_ms')} |")
    L.append("")
    L.append("## 10,000 idle connections (loadgen --idle, 220 required within 10 s)")
    L.append("")
    L.append("tern is restarted before this test, so its RSS shows what the connections cost, not heap that glibc "
             "kept after the 10 MiB workloads (up to ~130 MB more in a process that ran them). For the peers, "
             "which run several processes, RSS is the sum of VmRSS over the processes in their cgroup (shared "
             "pages counted once per process: an upper bound).")
    L.append("")
    L.append("| server | greeted | refused | timed out | last 220 after (s) | server RSS while held |")
    L.append("|---|---|---|---|---|---|")
    for srv, r in rep.idle.items():
        if r.get("rss_kib") and r.get("hwm_kib"):
            rss = f"{int(r['rss_kib']) / 1024:.1f} MiB (peak {int(r['hwm_kib']) / 1024:.1f})"
        elif r.get("rss_kib"):
            rss = f"{int(r['rss_kib']) / 1024:.1f} MiB (sum over {r.get('procs')} processes)"
        else:
            rss = "n/a"
        L.append(f"| {srv} | {r.get('greeted', 'n/a')} | {r.get('refused', 'n/a')} | {r.get('timed_out', 'n/a')} "
                 f"| {r.get('last_220_s', 'n/a')} | {rss} |")
    L.append("")
    L.extend(fsync_section(rep))
    L.append("")
    L.extend(targets(rep))
    L.append("")
    L.append("## Raw runs (msgs/s and CPU s/1k per repetition)")
    L.append("")
    for wl, n, runs in rep.rows + rep.sink_rows:
        parts = []
        for srv, rs in runs.items():
            parts.append(f"{srv} ({rs[0].n if rs and rs[0].n else n} msgs): " + ", ".join(
                (f"{fmt(r.rate)} ({fmt(r.cpu_per_k(), 2)} s/1k)" if r.rate else
                 (r.note if r.note.startswith("skipped") else f"FAILED ({r.note})"))
                for r in rs))
        L.append(f"- {wl.name}: " + "; ".join(parts))
    if rep.notes:
        L.append("")
        L.append("## Notes")
        L.append("")
        L.extend(f"- {n}" for n in rep.notes)
    return "\n".join(L) + "\n"


def fsync_rate(rep: Report, key: str) -> float | None:
    try:
        return float(rep.limits[key])
    except (KeyError, ValueError):
        return None


def fsync_section(rep: Report) -> list[str]:
    """fsync-type calls per accepted message (strace pass), and the ceiling they imply on this disk."""
    if not rep.fsyncs:
        return ["## fsyncs per message", "", "not measured (strace pass skipped or unavailable)"]
    f1, f8 = fsync_rate(rep, "fsync_append_1t"), fsync_rate(rep, "fsync_append_8t")
    out = ["## fsyncs per message (separate strace pass, 20 sessions, 1 KiB, not timed)", "",
           f"strace -f -c -e trace={SYNC_CALLS}, attached to every thread of every process in the server's cgroup "
           "(and following what they fork). Ceiling = the probe's fsync rate / fsyncs per message: the most "
           "messages/s the disk allows if every fsync cost what the probe's did (1 thread = one after the other; "
           "8 threads = in parallel, the best case). \"Measured / ceiling\" uses the median msgs/s of the "
           "same workload at 20 sessions in the timed runs.", "",
           "| server | workload | messages | fsync-type calls (by call) | per message | ceiling at 1-thread rate "
           "| ceiling at 8-thread rate | measured msgs/s | measured / 8-thread ceiling |",
           "|---|---|---|---|---|---|---|---|---|"]
    measured = {}
    for wl, _, runs in rep.rows:
        if wl.sessions == 20 and wl.size == KIB and wl.rcpts == 1:
            for srv, rs in runs.items():
                measured[(srv, wl.kind)] = median_rate(rs)
    for srv, kinds in rep.fsyncs.items():
        for kind, r in kinds.items():
            if "error" in r:
                out.append(f"| {srv} | {kind} | | {r['error']} | | | | | |")
                continue
            per = r.get("per_msg")
            by = ", ".join(f"{k} {v}" for k, v in sorted(r["calls"].items())) or "none"
            c1 = f1 / per if f1 and per else None
            c8 = f8 / per if f8 and per else None
            m = measured.get((srv, kind))
            ok = "" if r.get("ok") else f" (run incomplete: {r.get('note')})"
            out.append(f"| {srv} | {kind} 1 KiB | {r['n']} | {by}{ok} | {fmt(per, 2)} | {fmt(c1)} | {fmt(c8)} "
                       f"| {fmt(m)} | {'n/a' if not (m and c8) else f'{m / c8:.1%}'} |")
    return out


def targets(rep: Report) -> list[str]:
    """Issue 15's targets (same run), each with the measured value and met / NOT met (n/a when not measured)."""
    out = ["## Issue-15 targets", "",
           "Peers: the best peer is the one with the highest msgs/s in that row (throughput) and the one with "
           "the lowest CPU per message in that row (CPU), so both halves compare tern with the strongest peer.", "",
           "| target | measured | verdict |", "|---|---|---|"]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    for wl, _, runs in rep.rows:
        if wl.sessions < 20:
            continue
        if wl.size == 10 * MIB:
            tn = median_rate(runs.get("tern", []))
            try:
                limit = min(float(rep.limits["loopback_gbit_s"]) * 1000 / 8, float(rep.limits["seq_fsync_mb_s"]))
            except (KeyError, ValueError):
                continue
            got = tn * wl.size / 1e6 if tn else None
            out.append(f"| {wl.name}: >= 50% of min(loopback, fsync'd sequential write) = {limit / 2:.0f} MB/s "
                       f"| {fmt(got)} MB/s | {verdict(None if got is None else got >= limit / 2)} |")
            continue
        tn = median_rate(runs.get("tern", []))
        bp, bv = best_peer(runs, median_rate)
        r = tn / bv if tn and bv else None
        out.append(f"| {wl.name}: >= 5x the best peer's msgs/s | {'n/a' if r is None else f'{r:.2f}x'} "
                   f"({fmt(tn)} vs {bp or 'n/a'} {fmt(bv)}) | {verdict(None if r is None else r >= 5)} |")
        tc = median_cpu(runs.get("tern", []))
        cp, cv = best_peer(runs, median_cpu)
        c = tc / cv if tc and cv else None
        out.append(f"| {wl.name}: <= 1/5 of the best peer's CPU per message | "
                   f"{'n/a' if c is None else f'1/{cv / tc:.1f}'} ({fmt(tc, 2)} vs {cp or 'n/a'} {fmt(cv, 2)} s/1k) "
                   f"| {verdict(None if c is None else c <= 0.2)} |")

    def lat(srv: str, key: str) -> float | None:
        vals = [float(r[key]) for r in rep.latency.get(srv, []) if r.get(key, "-") != "-"]
        return statistics.median(vals) if vals else None

    p99 = lat("tern", "p99_ms")
    out.append(f"| p99 accept latency at 20 sessions < 5 ms | {fmt(p99, 2)} ms | "
               f"{verdict(None if p99 is None else p99 < 5)} |")
    idle = rep.idle.get("tern", {})
    if idle.get("rss_kib"):
        rss_mb = int(idle["rss_kib"]) * 1024 / 1e6
        ok = idle.get("greeted") == idle.get("wanted") and rss_mb < 60
        out.append(f"| {idle.get('wanted')} idle connections each get a 220; RSS < 60 MB "
                   f"| {idle.get('greeted')} greeted, {rss_mb:.1f} MB | {verdict(ok)} |")
    else:
        out.append("| 10,000 idle connections each get a 220; RSS < 60 MB | n/a | n/a |")
    return out


# ---------------------------------------------------------------- main

SERVER_CLASSES = {"postfix": Postfix, "exim": Exim, "opensmtpd": OpenSMTPD, "tern": Tern}


def main() -> int:
    global GEN_CG, GENERATOR
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 repetition, fewer messages (smoke test)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    ap.add_argument("--servers", default="postfix,exim,opensmtpd,tern",
                    help="comma list of postfix,exim,opensmtpd,tern")
    ap.add_argument("--only", default="", help="only workloads whose name contains this text")
    ap.add_argument("--no-idle", action="store_true", help="skip the 10,000-idle-connection test")
    ap.add_argument("--no-fsync", action="store_true", help="skip the strace pass that counts fsyncs per message")
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--generator", choices=["loadgen", "smtp-source"], default="loadgen",
                    help="throughput generator (default loadgen; see generate())")
    args = ap.parse_args()
    GENERATOR = args.generator
    # run.sh's trap sends SIGTERM: turn it into SystemExit so the finally block stops every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reps = args.reps or (1 if args.quick else 3)
    wanted = [s for s in args.servers.split(",") if s]
    unknown = [s for s in wanted if s not in SERVER_CLASSES]
    if unknown:
        ap.error(f"unknown server(s): {', '.join(unknown)}")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)

    rep = Report(dt.datetime.now(dt.timezone.utc), args.quick, reps)
    rep.load_start = loadavg()
    servers = []
    for name in wanted:
        if name == "tern" and not TERN_BIN.exists():
            rep.notes.append(f"tern not measured: {TERN_BIN} does not exist yet")
            continue
        servers.append(SERVER_CLASSES[name]())
    GEN_CG = CGroup("generator")
    rep.cgroups = GEN_CG.path is not None
    if not rep.cgroups:
        rep.notes.append("no writable cgroup v2 hierarchy: CPU per message not measured")
    sink = Sink()
    started = []
    try:
        log("machine limits (fsync, loopback)")
        line = probe()
        rep.limits = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        log(line)
        sink.start()
        for s in list(servers):
            try:
                s.start()
                started.append(s)
            except Exception as e:  # a server that does not start is reported, the others still measured
                rep.notes.append(f"{s.name} did not start: {e}")
                log(f"{s.name} did not start: {e}")
                servers.remove(s)
        rep.servers = [s.name for s in servers]

        workloads = [w for w in WORKLOADS if args.only in w.name]
        sinkloads = [w for w in SINK_WORKLOADS if args.only in w.name]
        table = {w.name: {s.name: [] for s in servers} for w in workloads}
        sink_table = {w.name: {"sink": []} for w in sinkloads}
        latency = {s.name: [] for s in servers}
        relay_broken: set[str] = set()
        do_latency = args.only in "latency at 20 sessions"
        for r in range(reps):
            # Alternate the order per repetition so no server always runs on a warmer machine.
            order = servers if r % 2 == 0 else list(reversed(servers))
            for w in workloads:
                for s in order:
                    n = messages_for(s, w, args.quick)
                    if w.kind == "relay" and s.name in relay_broken:
                        # Its undelivered mail may still reach the sink later and corrupt the counts.
                        table[w.name][s.name].append(Run(None, 0, "skipped after an earlier relay failure"))
                        continue
                    if w.kind == "relay":
                        sink.ensure(rep.notes)
                    run = measure(s, sink, w, n)
                    if w.kind == "relay" and run.rate is None:
                        relay_broken.add(s.name)
                    table[w.name][s.name].append(run)
                    log(f"rep {r + 1}/{reps} {s.name:9} {w.name:40} "
                        + (f"{run.rate:9.1f} msgs/s ({run.secs:.2f} s, {n} msgs, "
                           f"{fmt(run.cpu_per_k(), 2)} s CPU/1k)" if run.rate else f"FAILED: {run.note}"))
            for w in sinkloads:
                n = w.messages(args.quick)
                sink.ensure(rep.notes)
                run = measure(None, sink, w, n)
                sink_table[w.name]["sink"].append(run)
                log(f"rep {r + 1}/{reps} {'sink':9} {w.name:40} "
                    + (f"{run.rate:9.1f} msgs/s" if run.rate else f"FAILED: {run.note}"))
            for s in (order + [None]) if do_latency else []:
                sink.ensure(rep.notes)
                base = 1000 if args.quick else 4000
                n = base if s is None or s.scale >= 1 else max(40, int(base * s.scale))
                res = loadgen_latency(s, n)
                res["n"] = n
                name = s.name if s is not None else "smtp-sink"
                latency.setdefault(name, []).append(res)
                log(f"rep {r + 1}/{reps} {name:9} latency s20: {res}")
        rep.rows = [(w, w.messages(args.quick), table[w.name]) for w in workloads]
        rep.sink_rows = [(w, w.messages(args.quick), sink_table[w.name]) for w in sinkloads]
        rep.latency = latency
        if not args.no_fsync and shutil.which("strace") and rep.cgroups:
            for s in servers:
                rep.fsyncs[s.name] = {}
                for w in WORKLOADS:
                    if w.sessions == 20 and w.size == KIB and w.rcpts == 1 and (
                            w.kind == "local" or s.name not in relay_broken):
                        n = messages_for(s, w, True)
                        sink.ensure(rep.notes)
                        res = fsync_pass(s, sink, w, n)
                        rep.fsyncs[s.name][w.kind] = res
                        log(f"{s.name:9} fsyncs {w.kind}: {res}")
        elif not args.no_fsync:
            rep.notes.append("fsyncs per message not measured: strace or cgroup v2 missing")
        if not args.no_idle and args.only in "10,000 idle connections":
            for s in servers:
                if s.name == "tern":
                    # A fresh process: the 10 MiB workloads leave ~100 MB of freed heap that glibc keeps
                    # (RSS, not in use); the idle test measures what connections cost. The report says so.
                    s.stop()
                    s.start()
                log(f"{s.name}: {args.idle_conns} idle connections")
                rep.idle[s.name] = idle_test(s, args.idle_conns, 15.0)
                log(f"{s.name}: {rep.idle[s.name]}")
                # Postfix's and Exim's per-connection processes notice the closed connections at their next
                # read; give them a moment.
                time.sleep(2)
    finally:
        for s in started:
            s.stop()
        sink.stop()
        empty_trash()
        for s in started:
            s.cg.remove()
        if GEN_CG is not None:
            GEN_CG.remove()

    rep.load_end = loadavg()
    text = render(rep)
    print()
    print(text)
    out_dir = ROOT / "bench/results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{rep.started:%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}.md"
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
