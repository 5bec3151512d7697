"""`tern doctor`: the server's own setup checked against a fake DNS (send_helpers/fakedns.py, tern's only nameserver
through `[dns] nameservers`) and against a real `tern serve` on free loopback ports.

The all-good setup: hostname mx.doctor.test -> 127.0.0.1 and back (PTR 1.0.0.127.in-addr.arpa), MX, SPF for
127.0.0.1, DMARC p=reject, a DKIM key from `tern dkim keygen` with its record published, a self-signed certificate from
`tern cert self-signed`, smtp and submissions listeners, loopback 127.0.0.1 the only trusted network (the relay probe
comes from 127.0.0.2). Then one thing broken at a time, each asserting the check id, its status and the exit code (0 all
ok, 1 warnings only, 2 a failure, 78 config error); an open relay is played by a tiny fake SMTP server that answers 250
to everything; a nameserver that never answers gives warnings within the time limit, not a hang."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from send_helpers.fakedns import FakeDNS, free_port as free_dns_port
from ternlib import Tern, free_port, tern_bin, toml_dumps

HOST = "mx.doctor.test"
DOMAIN = "doctor.test"
SELECTOR = "s1"
REVERSE = "1.0.0.127.in-addr.arpa"
QUOTED = re.compile(r'"([^"]*)"')
CHECK_IDS = ["mx", "a", "ptr", "spf", "dkim", "dmarc", "tls", "ports", "open_relay"]


def run_tern(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # No TERN_CONFIG from the environment: only the config each test names is read.
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run([str(tern_bin()), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def keygen(tmp: Path, name: str) -> tuple[Path, str]:
    """A DKIM key for DOMAIN/SELECTOR and the TXT record text to publish for it."""
    out = tmp / f"{name}.key"
    r = run_tern("dkim", "keygen", "--domain", DOMAIN, "--selector", SELECTOR, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out, "".join(QUOTED.findall(r.stdout.strip()))


def self_signed(tmp: Path, host: str) -> dict:
    out = tmp / f"cert-{host}"
    r = run_tern("cert", "self-signed", "--host", host, "--out-dir", str(out))
    assert r.returncode == 0, r.stderr
    return {"cert": str(out / "cert.pem"), "key": str(out / "key.pem")}


def good_zone(dkim_record: str) -> dict:
    return {
        DOMAIN: {"MX": [(10, HOST)], "TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        HOST: {"A": ["127.0.0.1"]},
        REVERSE: {"PTR": [HOST]},
        f"_dmarc.{DOMAIN}": {"TXT": ["v=DMARC1; p=reject; rua=mailto:postmaster@doctor.test"]},
        f"{SELECTOR}._domainkey.{DOMAIN}": {"TXT": [dkim_record]},
    }


class Setup:
    """Keys, certificates and a config for one test; `zone` may be edited before `dns()` starts the fake DNS."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.key, self.record = keygen(tmp, "dkim")
        self.tls = self_signed(tmp, HOST)
        self.zone = good_zone(self.record)

    def config(self, dns_addr: str, **over) -> dict:
        cfg = {
            "hostname": HOST,
            "local": {"domains": [DOMAIN]},
            "dns": {"nameservers": [dns_addr]},
            "relay": {"trusted_networks": ["127.0.0.1/32"]},
            "tls": self.tls,
            "submissions": {"listen": [f"127.0.0.1:{free_port()}"]},
            "dkim": [{"domain": DOMAIN, "selector": SELECTOR, "key_file": str(self.key)}],
        }
        cfg.update(over)
        return {k: v for k, v in cfg.items() if v is not None}


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def doctor(config_path: Path, *extra: str, timeout: float = 90) -> tuple[int, dict]:
    started = time.monotonic()
    r = run_tern("doctor", "-c", str(config_path), "--json", *extra, timeout=timeout)
    assert r.stdout.strip(), f"no JSON on stdout (exit {r.returncode}); stderr: {r.stderr}"
    report = json.loads(r.stdout)
    report["_elapsed"] = time.monotonic() - started
    return r.returncode, report


def checks(report: dict) -> dict:
    return {c["id"]: c for c in report["checks"]}


def status(report: dict, check_id: str) -> str:
    return checks(report)[check_id]["status"]


def serve_and_check(tern, setup: Setup, *extra: str, **over) -> tuple[int, dict]:
    """Starts the fake DNS with setup.zone and tern serve with setup's config, runs doctor against both."""
    with FakeDNS(setup.zone) as dns:
        srv = tern(**setup.config(dns.addr, **over))
        return doctor(srv.config_path, *extra)


def test_a_good_setup_passes_every_check(tern, setup):
    code, report = serve_and_check(tern, setup)
    got = checks(report)
    assert [c["id"] for c in report["checks"]] == CHECK_IDS
    assert {i: c["status"] for i, c in got.items()} == {i: "ok" for i in CHECK_IDS}, json.dumps(report, indent=1)
    assert code == 0
    assert report["domain"] == DOMAIN and report["hostname"] == HOST
    assert report["summary"] == {"ok": 9, "warn": 0, "fail": 0, "skip": 0}
    assert "127.0.0.1 -> mx.doctor.test -> 127.0.0.1" in got["ptr"]["message"]
    # Host addresses came from the DNS (no --ip): the report says so.
    assert any("taken from the DNS" in n for n in report["notes"]), report["notes"]
    # The relay probe came from an untrusted loopback address and was refused.
    assert got["open_relay"]["details"]["source"] == "127.0.0.2"
    assert "not an open relay" in got["open_relay"]["message"]
    assert "submissions 127.0.0.1:" in got["ports"]["message"]


def test_the_table_names_each_check_and_the_fix_of_a_failure(tern, setup):
    setup.zone[DOMAIN]["TXT"] = ["v=spf1 ip4:192.0.2.1 -all"]
    with FakeDNS(setup.zone) as dns:
        srv = tern(**setup.config(dns.addr))
        r = run_tern("doctor", "-c", str(srv.config_path))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert re.search(r"^FAIL\s+spf\s+SPF of doctor\.test for 127\.0\.0\.1: fail", r.stdout, re.M), r.stdout
    assert re.search(r"^OK\s+mx\s+", r.stdout, re.M), r.stdout
    fix = next(i for i, line in enumerate(lines) if line.startswith("FAIL") and " spf " in line) + 1
    assert "fix:" in lines[fix] and "ip4:127.0.0.1" in lines[fix], lines[fix]


def test_mx_pointing_elsewhere_fails(tern, setup):
    setup.zone[DOMAIN]["MX"] = [(10, "mx.elsewhere.test")]
    setup.zone["mx.elsewhere.test"] = {"A": ["192.0.2.25"]}
    code, report = serve_and_check(tern, setup)
    assert status(report, "mx") == "fail", checks(report)["mx"]
    assert "mx.elsewhere.test" in checks(report)["mx"]["message"]
    assert f"IN MX 10 {HOST}." in checks(report)["mx"]["fix"]
    assert code == 2


def test_missing_ptr_fails(tern, setup):
    del setup.zone[REVERSE]
    code, report = serve_and_check(tern, setup)
    assert status(report, "ptr") == "fail", checks(report)["ptr"]
    assert "no PTR record" in checks(report)["ptr"]["message"]
    assert code == 2


def test_ptr_naming_another_host_fails(tern, setup):
    setup.zone[REVERSE] = {"PTR": ["dsl-127-0-0-1.isp.test"]}
    code, report = serve_and_check(tern, setup)
    ptr = checks(report)["ptr"]
    assert ptr["status"] == "fail" and "dsl-127-0-0-1.isp.test, not mx.doctor.test" in ptr["message"], ptr
    assert code == 2


def test_spf_without_this_address_fails(tern, setup):
    setup.zone[DOMAIN]["TXT"] = ["v=spf1 ip4:192.0.2.1 -all"]
    code, report = serve_and_check(tern, setup)
    assert status(report, "spf") == "fail", checks(report)["spf"]
    assert code == 2


def test_spf_softfail_only_warns(tern, setup):
    setup.zone[DOMAIN]["TXT"] = ["v=spf1 ip4:192.0.2.1 ~all"]
    code, report = serve_and_check(tern, setup)
    assert status(report, "spf") == "warn", checks(report)["spf"]
    assert code == 1, report


def test_dkim_record_of_another_key_fails(tern, setup):
    _other, other_record = keygen(setup.tmp, "other")
    setup.zone[f"{SELECTOR}._domainkey.{DOMAIN}"] = {"TXT": [other_record]}
    code, report = serve_and_check(tern, setup)
    dkim = checks(report)["dkim"]
    assert dkim["status"] == "fail", dkim
    assert "is not the key of" in dkim["message"]
    # The fix is the record to publish, the one keygen printed for the configured key.
    assert setup.record[:60] in dkim["fix"].replace('" "', "")
    assert code == 2


def test_no_dkim_key_is_a_skip(tern, setup):
    code, report = serve_and_check(tern, setup, dkim=None)
    assert status(report, "dkim") == "skip"
    assert code == 0, report


def test_no_dmarc_fails_and_p_none_warns(tern, setup):
    del setup.zone[f"_dmarc.{DOMAIN}"]
    code, report = serve_and_check(tern, setup)
    assert status(report, "dmarc") == "fail", checks(report)["dmarc"]
    assert code == 2
    setup.zone[f"_dmarc.{DOMAIN}"] = {"TXT": ["v=DMARC1; p=none"]}
    code, report = serve_and_check(tern, setup)
    assert status(report, "dmarc") == "warn", checks(report)["dmarc"]
    assert code == 1


def test_certificate_for_another_name_fails(tern, setup):
    setup.tls = self_signed(setup.tmp, "other.example.test")
    code, report = serve_and_check(tern, setup)
    tls = checks(report)["tls"]
    assert tls["status"] == "fail" and "other.example.test, not mx.doctor.test" in tls["message"], tls
    assert code == 2


def test_no_tls_warns_about_unencrypted_mail(tern, setup):
    code, report = serve_and_check(tern, setup, tls=None, submissions=None)
    tls = checks(report)["tls"]
    assert tls["status"] == "warn" and "not encrypted" in tls["message"], tls
    assert code == 1


def test_server_not_running_fails_ports(tern, setup):
    with FakeDNS(setup.zone) as dns:
        srv = tern(start=False, **setup.config(dns.addr))
        code, report = doctor(srv.config_path)
    ports = checks(report)["ports"]
    assert ports["status"] == "fail", ports
    assert "is tern serve running?" in ports["fix"]
    assert status(report, "open_relay") == "warn"
    assert code == 2


class YesSMTP:
    """A fake SMTP server on 127.0.0.1 that answers 250 to everything: an open relay. Records the commands."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.commands: list[str] = []
        self.peers: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.peers.append(peer[0])
            with conn:
                conn.settimeout(5)
                f = conn.makefile("rb")
                conn.sendall(b"220 yes.test ESMTP\r\n")
                try:
                    for raw in f:
                        line = raw.decode().strip()
                        self.commands.append(line)
                        if line.upper() == "QUIT":
                            conn.sendall(b"221 bye\r\n")
                            break
                        conn.sendall(b"250 ok\r\n")
                except OSError:
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_an_open_relay_is_reported(setup, tmp_path):
    with FakeDNS(setup.zone) as dns, YesSMTP() as yes:
        cfg = setup.config(dns.addr, submissions=None, smtp={"listen": [f"127.0.0.1:{yes.port}"]},
                           data_dir=str(tmp_path / "data"))
        path = tmp_path / "yes.toml"
        path.write_text(toml_dumps(cfg))
        code, report = doctor(path)
    relay = checks(report)["open_relay"]
    assert relay["status"] == "fail" and relay["message"].startswith("OPEN RELAY"), relay
    assert code == 2
    # The probe came from an untrusted address and never sent DATA.
    assert "127.0.0.2" in yes.peers, yes.peers
    assert "MAIL FROM:<doctor@example.invalid>" in yes.commands and "RCPT TO:<relay-test@example.net>" in yes.commands
    assert not any(c.upper() == "DATA" for c in yes.commands), yes.commands
    assert yes.commands[-1].upper() == "QUIT"


def test_trusting_the_internet_is_an_open_relay_by_config(tern, setup):
    code, report = serve_and_check(tern, setup, relay={"trusted_networks": ["0.0.0.0/0"]})
    relay = checks(report)["open_relay"]
    assert relay["status"] == "fail" and "OPEN RELAY by config" in relay["message"], relay
    assert code == 2


def test_relay_probe_skips_when_all_loopback_is_trusted(tern, setup):
    code, report = serve_and_check(tern, setup, relay={"trusted_networks": ["127.0.0.0/8"]})
    relay = checks(report)["open_relay"]
    assert relay["status"] == "skip" and "trusted_networks" in relay["message"], relay
    assert code == 0


def test_a_nameserver_that_never_answers_gives_warnings_not_a_hang(setup, tmp_path):
    """A black hole: a UDP socket that reads and never replies, and a TCP listener that never accepts."""
    port = free_dns_port()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", port))
    tcp.listen(64)
    try:
        cfg = setup.config(f"127.0.0.1:{port}", data_dir=str(tmp_path / "data"), submissions=None,
                           smtp={"listen": [f"127.0.0.1:{free_port()}"]})
        path = tmp_path / "blackhole.toml"
        path.write_text(toml_dumps(cfg))
        code, report = doctor(path, "--ip", "127.0.0.1", timeout=60)
    finally:
        udp.close()
        tcp.close()
    got = checks(report)
    for check_id in ("mx", "a", "ptr", "spf", "dkim", "dmarc"):
        assert got[check_id]["status"] == "warn", got[check_id]
    assert "cannot tell" in got["mx"]["message"]
    assert report["_elapsed"] < 40, report["_elapsed"]
    assert code == 2  # the listener is down: ports fails


def test_a_broken_config_exits_78(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('hostname = "mx.doctor.test"\n[smtp]\nlisten = ["not an address"]\n')
    r = run_tern("doctor", "-c", str(path), "--json")
    assert r.returncode == 78, r.stdout + r.stderr
    assert "listen" in r.stderr


def test_given_addresses_are_checked_instead_of_the_dns_ones(tern, setup):
    with FakeDNS(setup.zone) as dns:
        srv = tern(**setup.config(dns.addr))
        code, report = doctor(srv.config_path, "--ip", "192.0.2.7")
    got = checks(report)
    assert got["a"]["status"] == "fail" and "not to this host's 192.0.2.7" in got["a"]["message"], got["a"]
    assert got["ptr"]["status"] == "fail" and "192.0.2.7 has no PTR" in got["ptr"]["message"], got["ptr"]
    assert got["spf"]["status"] == "fail", got["spf"]
    assert not any("taken from the DNS" in n for n in report["notes"])
    assert code == 2


def test_servfail_is_a_warning_that_quotes_the_error(tern, setup):
    setup.zone[f"_dmarc.{DOMAIN}"] = "SERVFAIL"
    code, report = serve_and_check(tern, setup)
    dmarc = checks(report)["dmarc"]
    assert dmarc["status"] == "warn" and dmarc["message"].startswith("cannot tell: TXT of _dmarc.doctor.test"), dmarc
    assert code == 1
