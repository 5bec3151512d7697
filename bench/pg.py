#!/usr/bin/env python3
"""Issue 14: tern's queue on PostgreSQL next to the filesystem spool (bench/pg.sh runs the cluster); see
docs/performance.md. Rows: relay (smtp-source -> tern -> smtp-sink) on the fs spool, on postgres with 1 node and
with 2 nodes on one database; local Maildir accept latency (loadgen) fs vs pg 1. Fresh nodes, and a fresh database,
per run; timed until the generators exit (accepted) and until smtp-sink counted all (delivered; any other count is
a FAILED run). Per message: CPU (wait4, /proc), transactions, writing ones (xids), WAL flushes and bytes
(pg_stat_database, pg_stat_wal). Also pgbench's commit rate and loadgen --probe. Medians over alternating reps.
"""

import argparse
import datetime as dt
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import bench  # bench/bench.py: the main benchmark's helpers (same BENCH_DIR)
from bench import count_files, empty_trash, fmt, log, loadavg, probe, to_trash, wait_port

WORK, CLUSTER = bench.BENCH_DIR / "pg/run", bench.BENCH_DIR / "pg/cluster"
TERN_BIN, LOADGEN, PGSH = bench.TERN_BIN, bench.LOADGEN, bench.ROOT / "bench/pg.sh"
BUDGET = 180.0  # seconds one run may take at most
CHILDREN: list[subprocess.Popen] = []  # every process started here; main's finally kills any still running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd: list, **kw) -> subprocess.Popen:
    CHILDREN.append(subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, **kw))
    return CHILDREN[-1]


def kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.returncode is None and p.poll() is None:
            p.kill()
            p.wait(10)


class Sink(bench.Sink):  # bench.py's smtp-sink with its -c counter, on a free port
    def __init__(self) -> None:
        super().__init__()
        self.port, self.out = free_port(), WORK / "smtp-sink.out"

    def start(self) -> None:
        self.outf = open(self.out, "wb")
        self.proc = spawn(["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "1024"],
                          stdout=self.outf, stderr=subprocess.STDOUT)
        if not wait_port(self.port, 10, self.proc):
            raise RuntimeError("smtp-sink did not start")


class PG:  # the cluster that bench/pg.sh runs
    dbs = 0

    def start(self) -> None:
        subprocess.run([PGSH, "start"], check=True, timeout=120)
        self.port = int((CLUSTER / "port").read_text())
        self.version = self.sql("SHOW server_version")

    def url(self, db: str) -> str:
        return f"postgres://tern@127.0.0.1:{self.port}/{db}"

    def sql(self, q: str, db: str = "postgres") -> str:
        r = subprocess.run(["psql", "-XqAt", "-v", "ON_ERROR_STOP=1", "-d", self.url(db), "-c", q],
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise RuntimeError(f"psql {q!r}: {r.stderr.strip()}")
        return r.stdout.strip()

    def new_db(self) -> str:
        self.dbs += 1
        name = f"bench_{os.getpid()}_{self.dbs}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def counters(self, db: str) -> list[float]:
        """[commits in db, xids assigned, WAL flushes, WAL bytes] once db has no sessions (they flush at exit)."""
        for _ in range(150):  # 15 s at most
            if self.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'") == "0":
                break
            time.sleep(0.1)
        time.sleep(0.5)
        return [float(x) for x in self.sql(
            f"SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'), "
            "pg_snapshot_xmax(pg_current_snapshot())::text, wal_sync, wal_bytes FROM pg_stat_wal").split("|")]

    def cpu(self) -> float:
        """CPU seconds of the postmaster and its children so far (exited backends are in its cutime/cstime)."""
        pm, ticks = (CLUSTER / "data/postmaster.pid").read_text().split()[0], 0
        for p in Path("/proc").glob("[0-9]*"):
            try:
                f = (p / "stat").read_text().rsplit(")", 1)[1].split()  # f[1] = ppid, f[11:15] = u/s/cu/cs time
            except OSError:
                continue
            ticks += sum(map(int, f[11:15])) if p.name == pm else int(f[11]) + int(f[12]) if f[1] == pm else 0
        return ticks / os.sysconf("SC_CLK_TCK")

    def pgbench(self, clients: int, secs: int = 5) -> float | None:
        """Commits/s of one INSERT of a 4 KiB row (out of line, uncompressed, like tern's bodies) each."""
        self.sql("CREATE TABLE IF NOT EXISTS probe (id bigserial PRIMARY KEY, body bytea);"
                 "ALTER TABLE probe ALTER body SET STORAGE EXTERNAL")
        (WORK / "insert.sql").write_text("INSERT INTO probe (body) SELECT convert_to(string_agg(md5(g::text), ''), "
                                         "'UTF8') FROM generate_series(1, 128) g;\n")
        r = subprocess.run(["pgbench", "-n", "-f", WORK / "insert.sql", "-c", str(clients), "-j", str(min(clients, 4)),
                            "-T", str(secs), "-h", "127.0.0.1", "-p", str(self.port), "-U", "tern", "postgres"],
                           capture_output=True, text=True, timeout=secs + 60)
        m = re.search(r"tps = ([\d.]+)", r.stdout)
        return float(m.group(1)) if m else None


class Node:
    """One `tern serve` with bench.py's config (hostname, data_dir, listen, [limits], [local], [routes]), plus
    [queue] on PostgreSQL when url is given; a fresh data_dir (the old one goes to bench.py's trash)."""

    def __init__(self, name: str, sink_port: int, url: str | None) -> None:
        self.name, self.port, self.proc = name, free_port(), None
        self.root, self.config = WORK / name, WORK / name / "tern.toml"
        to_trash(self.root)
        self.root.mkdir(parents=True)
        queue = ""
        if url:
            (self.root / "pg.url").write_text(url + "\n")
            (self.root / "pg.url").chmod(0o600)
            queue = f'[queue]\nbackend = "postgres"\npostgres_url_file = "{self.root}/pg.url"\nnode_id = "{name}"\n'
        self.config.write_text(f'''# Written by bench/pg.py for one run.
hostname = "{name}.bench.invalid"
data_dir = "{self.root}/data"
[smtp]
listen = ["127.0.0.1:{self.port}"]
[limits]
max_message_size = 52428800
max_connections = 20000
max_connections_per_ip = 0
[local]
domains = ["bench.test"]
catch_all = true
[routes]
"relay.test" = "127.0.0.1:{sink_port}"
{queue}''')

    def migrate(self) -> None:
        subprocess.run([TERN_BIN, "queue", "migrate", "--config", self.config], check=True, capture_output=True,
                       timeout=60)

    def start(self) -> None:
        self.proc = spawn([TERN_BIN, "serve", "--config", self.config], stdout=open(self.root / "tern.log", "ab"),
                          stderr=subprocess.STDOUT, cwd=self.root)
        if not wait_port(self.port, 20, self.proc):
            raise RuntimeError(f"{self.name} did not start; see {self.root / 'tern.log'}")

    def stop(self) -> float:
        """SIGTERM (SIGKILL after 15 s); returns the process's CPU seconds, user + sys, from wait4."""
        p, self.proc = self.proc, None
        if p is None or p.returncode is not None:
            return 0.0
        p.send_signal(signal.SIGTERM)
        for i in range(500):  # 25 s at most
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                return ru.ru_utime + ru.ru_stime
            if i == 300:
                p.kill()
            time.sleep(0.05)
        return 0.0

    def delivered_local(self) -> int:
        base = self.root / "data/mailboxes/bench.test"
        return count_files([d / "new" for d in base.iterdir()] if base.exists() else [])


@dataclass
class Run:
    ok: bool = False
    note: str = ""
    accepted: float = 0.0  # msgs/s
    delivered: float = 0.0  # msgs/s until all were at the sink (local rows: loadgen's accept rate)
    tern_ms: float = 0.0  # CPU per message
    pg_ms: float | None = None
    pg: list = field(default_factory=list)  # per message: transactions, writing ones, WAL flushes, WAL KiB
    lat: dict = field(default_factory=dict)  # loadgen's RESULT fields


def run_row(kind: str, pg: PG, sink: Sink, args) -> Run:
    """One run of one row: fs, pg1, pg2 (relay, smtp-source) or fs-local, pg1-local (Maildir, loadgen)."""
    n, local, run, gens, base = args.messages, kind.endswith("-local"), Run(), [], sink.count()
    db = pg.new_db() if kind.startswith("pg") else None
    nodes = [Node(f"{kind}-{c}", sink.port, pg.url(db) if db else None) for c in "ab"[:2 if kind == "pg2" else 1]]
    try:
        try:
            if db:
                nodes[0].migrate()
                c0, cpu0 = pg.counters(db), pg.cpu()
            for nd in nodes:
                nd.start()
        except (RuntimeError, subprocess.SubprocessError) as e:
            run.note = str(e)
            return run
        t0 = time.monotonic()
        if local:
            res = subprocess.run([LOADGEN, "--server", f"127.0.0.1:{nodes[0].port}", "--sessions", str(args.sessions),
                                  "--messages", str(n), "--size", str(args.size), "--domain", "bench.test",
                                  "--timeout", "30", "--deadline", "120"], capture_output=True, text=True,
                                 timeout=BUDGET)
            run.lat = {k: v for line in res.stdout.splitlines() if line.startswith("RESULT ")
                       for k, v in (kv.split("=", 1) for kv in line.split()[1:])}
            if res.returncode or run.lat.get("accepted") != str(n):
                run.note = f"loadgen exit {res.returncode}: {run.lat or res.stderr.strip()[-200:]}"
                return run
            run.accepted = run.delivered = float(run.lat["msgs_per_s"])
            counter = nodes[0].delivered_local
        else:
            share = [n // len(nodes) + (i < n % len(nodes)) for i in range(len(nodes))]
            gens = [spawn(["smtp-source", "-s", args.sessions // len(nodes), "-m", m, "-l", args.size,
                           "-f", bench.SENDER, "-t", "bench@relay.test", f"127.0.0.1:{nd.port}"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for nd, m in zip(nodes, share)]
            for g in gens:
                try:
                    out, _ = g.communicate(timeout=max(1.0, t0 + BUDGET - time.monotonic()))
                except subprocess.TimeoutExpired:
                    run.note = "generator timed out"
                    return run
                if g.returncode:
                    run.note = f"smtp-source exit {g.returncode}: {out.strip()[-200:]}"
                    return run
            run.accepted = n / (time.monotonic() - t0)
            counter = lambda: sink.count() - base  # noqa: E731
        # Bounded wait until everything has arrived; bench.STALL seconds without progress end it.
        got, last, last_t = counter(), -1, time.monotonic()
        while got < n and time.monotonic() < t0 + BUDGET:
            if got != last:
                last, last_t = got, time.monotonic()
            elif time.monotonic() - last_t > bench.STALL:
                break
            time.sleep(0.01)
            got = counter()
        run.delivered = run.delivered if local else n / (time.monotonic() - t0)
        run.ok, run.note = got >= n, "" if got >= n else f"only {got}/{n} arrived"
    finally:
        kill(gens)
        cpu = sum(nd.stop() for nd in nodes)
    if not local and run.ok and sink.count() - base != n:  # duplicates would show up by now
        run.ok, run.note = False, f"the sink counted {sink.count() - base} messages for {n}"
    run.tern_ms = cpu * 1000 / n
    if db:
        run.pg_ms = (pg.cpu() - cpu0) * 1000 / n
        run.pg = [(b - a) / n for a, b in zip(c0, pg.counters(db))]
        run.pg[3] /= 1024
    return run


# ---------------------------------------------------------------- report

LABELS = {"fs": "tern, fs spool", "pg1": "tern, postgres, 1 node", "pg2": "tern, postgres, 2 nodes, one database",
          "fs-local": "tern, fs spool", "pg1-local": "tern, postgres, 1 node"}


def render(meta: dict, runs: dict[str, list[Run]], args) -> str:
    def med(k: str, get) -> float | None:
        vals = [v for v in (get(r) for r in runs.get(k, []) if r.ok) if v is not None]
        return statistics.median(vals) if vals else None

    def cells(k: str, *gets, digits: int = 0, vs: str | None = None) -> str:
        out = []
        for get in gets:
            out.append(fmt(med(k, get), digits))
            if vs:  # the ratio to the fs row of the same run
                a, b = med(k, get), med(vs, get)
                out.append(f"{a / b:.2f}x" if a and b else "n/a")
        return " | ".join(out)

    def name(k: str) -> str:
        bad = sum(not r.ok for r in runs[k])
        return LABELS[k] + (f" ({bad} of {len(runs[k])} runs FAILED)" if bad else "")

    lim = meta["limits"]
    L = [f"# tern's shared queue on PostgreSQL vs the filesystem spool, {meta['started']:%Y-%m-%d %H:%M} UTC", "",
         f"Machine: {os.cpu_count()} cores, everything on 127.0.0.1. PostgreSQL {meta['pg_version']} (bench/pg.sh: "
         f"fsync = on, synchronous_commit = on, defaults otherwise). Workload: {args.messages} messages of "
         f"{args.size} bytes, {args.sessions} sessions, one connection per message; {args.reps} repetition(s), "
         f"medians. Load average at start / end: {meta['load_start']} / {meta['load_end']}.",
         "", "## Disk and database limits", "", "| measure | value |", "|---|---|",
         f"| append 4 KiB + fsync, 1 / 8 threads (loadgen --probe) | {lim.get('fsync_append_1t')} / "
         f"{lim.get('fsync_append_8t')} per s |", f"| create file + 4 KiB + fsync | {lim.get('create_fsync')} per s |"]
    L += [f"| pgbench, one 4 KiB INSERT per commit, {label} | {fmt(tps)} commits/s |" for label, tps in meta["pgbench"]]
    L += ["", "## Relay through the queue (smtp-source -> tern -> smtp-sink)", "",
          "| row | accepted msgs/s | vs fs | all delivered msgs/s | vs fs | tern CPU ms/msg | PostgreSQL CPU ms/msg |",
          "|---|---|---|---|---|---|---|"]
    L += [f"| {name(k)} | {cells(k, lambda r: r.accepted, lambda r: r.delivered, vs='fs')} | "
          f"{cells(k, lambda r: r.tern_ms, lambda r: r.pg_ms, digits=2)} |" for k in ("fs", "pg1", "pg2") if k in runs]
    if "fs-local" in runs:
        L += ["", f"## Accept latency, local Maildir delivery (loadgen, {args.sessions} sessions, '.' to its 250)", "",
              "| row | msgs/s | vs fs | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
        L += [f"| {name(k)} | {cells(k, lambda r: r.accepted, vs='fs-local')} | "
              + cells(k, *[lambda r, f=f: float(r.lat[f]) for f in ("p50_ms", "p99_ms", "max_ms")], digits=2) + " |"
              for k in ("fs-local", "pg1-local")]
    L += ["", "## What a message costs in PostgreSQL (start-up and shutdown of the nodes included)", "",
          "| row | transactions | writing (xids) | WAL flushes | WAL KiB |", "|---|---|---|---|---|"]
    L += [f"| {name(k)}{', local delivery' if 'local' in k else ', relay'} | "
          + cells(k, *[lambda r, i=i: r.pg[i] for i in range(4)], digits=2) + " |"
          for k in ("pg1", "pg2", "pg1-local") if k in runs]
    L += ["", "## Raw runs", ""] + [f"- {k}: " + "; ".join(
        (f"{r.accepted:,.0f} acc / {r.delivered:,.0f} del msgs/s" if r.ok else f"FAILED ({r.note})")
        + (f", {r.pg[0]:.2f} xacts, {r.pg[2]:.2f} WAL flushes per msg" if r.pg else "") for r in rs)
        for k, rs in runs.items()]
    return "\n".join(L + (["", "## Notes", ""] + [f"- {x}" for x in meta["notes"]] if meta["notes"] else [])) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("--messages", 2000), ("--size", 4096), ("--sessions", 20), ("--reps", 3)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--no-local", action="store_true", help="skip the local-delivery latency rows")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally blocks run
    if missing := [str(p) for p in (TERN_BIN, LOADGEN, "smtp-source", "smtp-sink", "pgbench") if not shutil.which(p)]:
        sys.exit(f"missing: {missing}; cargo build --release -p tern -p tern-loadgen; apt-get install postfix postgresql")
    empty_trash()  # what an interrupted run may have left (its numbering would collide with ours)
    WORK.mkdir(parents=True, exist_ok=True)
    meta = {"started": dt.datetime.now(dt.timezone.utc), "load_start": loadavg(), "notes": [], "pgbench": []}
    kinds = ["fs", "pg1", "pg2"] + ([] if args.no_local else ["fs-local", "pg1-local"])
    runs: dict[str, list[Run]] = {k: [] for k in kinds}
    pg, sink = PG(), Sink()
    try:
        pg.start()
        meta["pg_version"] = pg.version
        log("machine limits (loadgen --probe) and pgbench")
        meta["limits"] = dict(kv.split("=", 1) for kv in probe().split()[1:] if "=" in kv)
        meta["pgbench"] = [(f"{c} client(s)", pg.pgbench(c)) for c in (1, 4, 20)]
        log(f"limits {meta['limits']}, pgbench {meta['pgbench']}")
        sink.start()
        for rep in range(args.reps):
            for group in (kinds[:3], kinds[3:]):  # relay rows, then local rows, in alternating order
                for k in group if rep % 2 == 0 else group[::-1]:
                    sink.ensure(meta["notes"])
                    r = run_row(k, pg, sink, args)
                    runs[k].append(r)
                    log(f"rep {rep + 1}/{args.reps} {k:9} " + (
                        f"accepted {r.accepted:7.1f}, delivered {r.delivered:7.1f} msgs/s; per msg: tern CPU "
                        f"{r.tern_ms:.2f} ms, pg CPU {fmt(r.pg_ms, 2)} ms, xacts/writes/flushes/WAL KiB "
                        f"{' '.join(f'{x:.2f}' for x in r.pg)} {r.lat.get('p99_ms', '')}" if r.ok
                        else f"FAILED: {r.note}"))
        meta["pgbench"].append(("20 clients, after the rows", pg.pgbench(20)))
    finally:
        sink.stop()
        kill(CHILDREN)
        subprocess.run([PGSH, "stop"], timeout=120)
        empty_trash()
    meta["load_end"] = loadavg()
    text = render(meta, runs, args)
    out = bench.ROOT / "bench/results" / f"pg-{meta['started']:%Y%m%d-%H%M%S}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"\n{text}\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
