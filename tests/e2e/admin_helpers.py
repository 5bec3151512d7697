"""Helpers for the tests of the admin listener (`[admin]`), its Prometheus metrics, config reload and the logs
(test_metrics.py, test_admin_api.py, test_reload.py, test_logging.py):

- `ArgsTern`: ternlib's `Tern` started with extra `tern serve` arguments (`--log-format json`), and the `ternx`
  fixture that makes them (imported by the test modules: `from admin_helpers import ternx`);
- `AdminClient`: an HTTP client on urllib for the admin listener that never raises on a status code: every call
  returns a `Resp` (status, headers, body, `.json()`);
- `parse_prometheus`: a parser of the Prometheus text format 0.0.4 written here (`# TYPE` lines and samples with
  labels), so the test checks what a scraper reads, not what a library forgives;
- bounded waits: for the admin listener to answer, for a metric to reach a value, for a log line.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay_helpers import wait_for
from ternlib import Tern, free_port, tern_bin

TOKEN = "e2e-admin-token-0123456789abcdef"
WAIT = 20.0


# ---------------------------------------------------------------- a tern with extra serve arguments


class ArgsTern(Tern):
    """A `Tern` whose `tern serve` gets `serve_args` after `--config FILE` (e.g. ["--log-format", "json"]).
    Its stderr and stdout go to the same log file as ternlib's (srv.log())."""

    def __init__(self, root: Path, overrides: dict, serve_args: tuple[str, ...] = ()):
        super().__init__(root, overrides)
        self.serve_args = tuple(serve_args)

    def start(self) -> "ArgsTern":
        binary = tern_bin()
        if not binary.exists():
            raise AssertionError(f"tern binary not found at {binary}: build it (cargo build -p tern) or set TERN_BIN")
        self._logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.pop("TERN_CONFIG", None)
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(self.config_path), *self.serve_args],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT, cwd=self.root, env=env)
        self.wait_ready()
        return self


@pytest.fixture
def ternx(tmp_path):
    """Factory like conftest's `tern`, plus `args=(...)` for `tern serve` and `listener=True` (an [admin] listener
    on a free loopback port, merged with any `admin={...}` given; `token=True` adds a token file). The server
    gets `srv.admin`, an AdminClient (with the token when there is one). Every process is killed at teardown."""
    started: list[Tern] = []
    counter = itertools.count()

    def factory(start: bool = True, args: tuple[str, ...] = (), listener: bool = True, token: bool = False,
                **config) -> ArgsTern:
        root = tmp_path / f"tern{next(counter)}"
        root.mkdir(parents=True, exist_ok=True)
        port = None
        if listener:
            port = free_port()
            section = {"listen": f"127.0.0.1:{port}", **config.get("admin", {})}
            if token:
                tf = root / "admin.token"
                tf.write_text(TOKEN + "\n")
                tf.chmod(0o600)
                section["token_file"] = str(tf)
            config["admin"] = section
        srv = ArgsTern(root, config, args)
        started.append(srv)
        if port is not None:
            srv.admin = AdminClient(f"http://127.0.0.1:{port}", TOKEN if token else None)
            srv.admin_port = port
        if start:
            srv.start()
            if port is not None:
                srv.admin.wait_up()
        return srv

    yield factory
    for srv in started:
        srv.cleanup()


def run_tern(*args: str, config: Path | None = None, env_config: Path | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess:
    """`tern ARGS` (with `-c CONFIG` first when given; TERN_CONFIG=env_config when given, else unset)."""
    env = dict(os.environ)
    env.pop("TERN_CONFIG", None)
    if env_config is not None:
        env["TERN_CONFIG"] = str(env_config)
    argv = [str(tern_bin()), *args]
    if config is not None:
        argv = [str(tern_bin()), args[0], "-c", str(config), *args[1:]]
    return subprocess.run(argv, env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def out(r: subprocess.CompletedProcess) -> str:
    return (f"exit {r.returncode}\nstdout: {r.stdout.decode(errors='replace')}\n"
            f"stderr: {r.stderr.decode(errors='replace')}")


# ---------------------------------------------------------------- HTTP client


@dataclass
class Resp:
    status: int
    headers: dict  # lower-case names
    body: bytes

    def json(self):
        try:
            return json.loads(self.body)
        except json.JSONDecodeError as e:
            raise AssertionError(f"HTTP {self.status}: body is not JSON ({e}): {self.body[:500]!r}") from None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.headers.get('content-type')}: {self.body[:800]!r}"


class AdminClient:
    """Requests to the admin listener at `base` ("http://127.0.0.1:PORT"); the bearer token is sent when set
    (or when `token=` is given to one call; token="" sends none)."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = None,
                headers: dict | None = None, timeout: float = 10) -> Resp:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        tok = self.token if token is None else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Resp(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
        except urllib.error.HTTPError as e:
            return Resp(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())

    def get(self, path: str, **kw) -> Resp:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> Resp:
        return self.request("POST", path, body=kw.pop("body", b""), **kw)

    def delete(self, path: str, **kw) -> Resp:
        return self.request("DELETE", path, **kw)

    def ok_json(self, method: str, path: str, status: int = 200, **kw):
        r = self.request(method, path, **kw)
        assert r.status == status, f"{method} {path}: expected {status}, got {r}"
        assert (r.headers.get("content-type") or "").startswith("application/json"), f"{method} {path}: {r}"
        return r.json()

    def wait_up(self, timeout: float = 10) -> None:
        """Waits until /api/health answers (any HTTP status: the listener is up)."""
        def up():
            try:
                self.get("/api/health", timeout=2)
                return True
            except OSError:
                return False
        wait_for(up, timeout, f"the admin listener at {self.base}")

    def scrape(self) -> "Scrape":
        r = self.get("/metrics")
        assert r.status == 200, f"GET /metrics: {r}"
        ctype = r.headers.get("content-type", "")
        assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, f"/metrics content type {ctype!r}"
        return parse_prometheus(r.text)


# ---------------------------------------------------------------- Prometheus text format 0.0.4

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}.get(m.group(1), "\\" + m.group(1)), v)


def _labels(text: str, line: str) -> dict:
    labels: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"malformed labels in {line!r}"
        assert m.group(1) not in labels, f"label {m.group(1)} twice in {line!r}"
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


def _value(v: str, line: str) -> float:
    if v in ("+Inf", "Inf"):
        return math.inf
    if v == "-Inf":
        return -math.inf
    if v == "NaN":
        return math.nan
    try:
        return float(v)
    except ValueError:
        raise AssertionError(f"bad sample value in {line!r}") from None


@dataclass
class Scrape:
    types: dict[str, str] = field(default_factory=dict)  # family name -> counter|gauge|histogram|...
    samples: list[tuple[str, dict, float]] = field(default_factory=list)
    text: str = ""

    def family_of(self, name: str) -> str | None:
        """The family a sample name belongs to (`x_bucket` -> `x` for a histogram)."""
        if name in self.types:
            return name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and self.types.get(name[: -len(suffix)]) in ("histogram", "summary"):
                return name[: -len(suffix)]
        return None

    def series(self, name: str, **labels) -> list[tuple[dict, float]]:
        """Samples named `name` whose labels include `labels`."""
        return [(lab, v) for n, lab, v in self.samples
                if n == name and all(lab.get(k) == str(x) for k, x in labels.items())]

    def value(self, name: str, **labels) -> float:
        """The sample with exactly these labels (0 when the series does not exist yet: a counter not yet
        incremented); for a histogram's `le`, pass le="+Inf" etc."""
        got = [v for n, lab, v in self.samples if n == name and lab == {k: str(x) for k, x in labels.items()}]
        assert len(got) <= 1, f"{name}{labels} appears {len(got)} times"
        return got[0] if got else 0.0

    def total(self, name: str, **labels) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        return sum(v for _, v in self.series(name, **labels))

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)


def parse_prometheus(text: str) -> Scrape:
    """Parses the text exposition format 0.0.4; fails on a malformed line, a `# TYPE` after the family's samples,
    or a sample whose family has no `# TYPE`."""
    s = Scrape(text=text)
    seen_sample_of: set[str] = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                name, kind = parts[2], (parts[3].strip() if len(parts) > 3 else "")
                assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), f"bad TYPE line {line!r}"
                assert name not in s.types, f"second TYPE line for {name}"
                assert name not in seen_sample_of, f"TYPE line for {name} after its samples"
                s.types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line {line!r}"
        name = m.group(1)
        labels = _labels(m.group(3) or "", line)
        s.samples.append((name, labels, _value(m.group(4), line)))
        fam = s.family_of(name)
        assert fam is not None, f"sample {name} has no # TYPE line"
        seen_sample_of.add(fam)
    return s


def histogram(s: Scrape, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """([(le, cumulative count)] sorted by le, sum, count) of an unlabelled histogram; checks its shape: buckets
    cumulative (non-decreasing), a +Inf bucket equal to _count."""
    assert s.types.get(name) == "histogram", f"{name} has type {s.types.get(name)!r}, expected histogram"
    buckets = sorted(((_value(lab["le"], name), v) for lab, v in s.series(name + "_bucket")), key=lambda b: b[0])
    assert buckets, f"{name} has no _bucket samples"
    assert buckets[-1][0] == math.inf, f"{name} has no le=\"+Inf\" bucket: {buckets}"
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {buckets}"
    count = s.value(name + "_count")
    assert s.has(name + "_count") and s.has(name + "_sum"), f"{name} lacks _sum or _count"
    assert buckets[-1][1] == count, f"{name}: +Inf bucket {buckets[-1][1]} != _count {count}"
    return buckets, s.value(name + "_sum"), count


def wait_metric(client: AdminClient, predicate, what: str, timeout: float = WAIT) -> Scrape:
    """Scrapes until predicate(scrape) is true; returns that scrape. The queue gauges are recomputed at most every
    few seconds, so this polls every 0.25 s up to `timeout`."""
    last: list = [None]

    def check():
        s = client.scrape()
        last[0] = s
        return s if predicate(s) else None

    try:
        return wait_for(check, timeout, what, 0.25)
    except AssertionError as e:
        body = "\n".join(ln for ln in (last[0].text if last[0] else "").splitlines() if ln and not ln.startswith("#"))
        raise AssertionError(f"{e}\nlast scrape:\n{body}") from None


# ---------------------------------------------------------------- logs


def json_lines(srv: Tern) -> list[dict]:
    """Every line of the server's log that is a JSON object (fails on a line that is not, but starts with `{`)."""
    lines = []
    for ln in srv.log().splitlines():
        if ln.startswith("{"):
            try:
                lines.append(json.loads(ln))
            except json.JSONDecodeError as e:
                raise AssertionError(f"log line is not one JSON object ({e}): {ln!r}") from None
    return lines


def wait_log(srv: Tern, needle: str, timeout: float = WAIT, after: int = 0) -> str:
    """Waits for a log line containing `needle` (from character `after` of the log on); returns that line."""
    def find():
        for ln in srv.log()[after:].splitlines():
            if needle in ln:
                return ln
        return None
    try:
        return wait_for(find, timeout, f"log line {needle!r}")
    except AssertionError as e:
        raise AssertionError(f"{e}; log tail:\n" + "\n".join(srv.log()[after:].splitlines()[-30:])) from None


def refused(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on host:port (the connection is refused)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False

