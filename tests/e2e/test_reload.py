"""Reloading the config while `tern serve` runs: SIGHUP or `POST /api/reload` re-reads the file the server was
started with. A valid change applies to new sessions (a session opened before keeps its limits) and logs
`config reloaded`; an invalid file changes nothing, logs `config reload failed` with every problem, and the API
answers 422 with the errors; a changed `[smtp] listen` opens the new port and closes the old one, while a session
on the old port finishes normally. `tern check-config --diff [FILE]` compares FILE with the snapshot the server
keeps in `<data_dir>/run/config.toml`: one line per changed key, `no changes`, 78 for an invalid FILE, 66 when
no server ever wrote a snapshot."""

from __future__ import annotations

import copy
import signal

from admin_helpers import out, refused, run_tern, ternx, wait_log  # noqa: F401  (ternx is a fixture)
from relay_helpers import wait_for
from ternlib import RawSMTP, free_port, make_message, toml_dumps

ALICE = "alice@tern.test"


def rcpts(c: RawSMTP, n: int, domain: str = "tern.test") -> list[int]:
    """MAIL and n RCPTs on an open session; the RCPT reply codes."""
    c.expect("MAIL FROM:<friend@example.test>", 250)
    return [c.cmd(f"RCPT TO:<user{i}@{domain}>")[0] for i in range(n)]


def rewrite(srv, **changes) -> dict:
    """Writes srv.config with `changes` (section -> dict of keys; a value of None removes the key) to the
    server's config file; returns the new config."""
    cfg = copy.deepcopy(srv.config)
    for section, keys in changes.items():
        if isinstance(keys, dict):
            sec = cfg.setdefault(section, {})
            for k, v in keys.items():
                if v is None:
                    sec.pop(k, None)
                else:
                    sec[k] = v
        else:
            cfg[section] = keys
    srv.config_path.write_text(toml_dumps(cfg))
    srv.config = cfg
    return cfg


def reload_srv(ternx, **extra):
    return ternx(limits={"max_recipients": 100}, **extra)


def sighup(srv, needle: str) -> str:
    """SIGHUP, then the log line with `needle` that follows it."""
    mark = len(srv.log())
    srv.send_signal(signal.SIGHUP)
    return wait_log(srv, needle, after=mark)


# ---------------------------------------------------------------- valid changes


def test_sighup_new_limit_for_new_sessions_old_session_keeps_its_limits(ternx):
    srv = reload_srv(ternx)
    with srv.session() as old:
        rewrite(srv, limits={"max_recipients": 2})
        sighup(srv, "config reloaded")
        assert srv.running()
        # Opened before the reload: still 100 recipients.
        assert rcpts(old, 3) == [250, 250, 250]
        with srv.session() as new:
            assert rcpts(new, 3) == [250, 250, 452]
        old.expect("QUIT", 221)


def test_api_reload_reports_the_changes(ternx):
    srv = reload_srv(ternx)
    rewrite(srv, limits={"max_recipients": 2})
    mark = len(srv.log())
    body = srv.admin.ok_json("POST", "/api/reload")
    assert body["reloaded"] is True, body
    assert isinstance(body["changes"], list) and all(isinstance(c, str) for c in body["changes"]), body
    assert any("limits.max_recipients" in c and "100" in c and "2" in c for c in body["changes"]), body
    wait_log(srv, "config reloaded", after=mark)
    with srv.session() as c:
        assert rcpts(c, 3) == [250, 250, 452]
    # Nothing changed since: a second reload applies nothing.
    again = srv.admin.ok_json("POST", "/api/reload")
    assert again == {"reloaded": True, "changes": []}, again


def test_reload_adds_a_local_domain(ternx):
    srv = reload_srv(ternx)
    rewrite(srv, local={"domains": ["tern.test", "new.test"]})
    body = srv.admin.ok_json("POST", "/api/reload")
    assert body["reloaded"] is True and any("local.domains" in c for c in body["changes"]), body
    srv.deliver("friend@example.test", "zed@new.test", make_message("for the new domain", to="zed@new.test"))
    got = srv.wait_messages("zed@new.test", 1)
    assert b"Subject: for the new domain" in got[0]


# ---------------------------------------------------------------- invalid files


def test_sighup_with_a_syntax_error_keeps_the_old_config(ternx):
    srv = reload_srv(ternx)
    text = srv.config_path.read_text() + "\n[limits\nmax_recipients = 2\n"
    srv.config_path.write_text(text)
    bad_line = text.splitlines().index("[limits") + 1
    mark = len(srv.log())
    sighup(srv, "config reload failed")
    assert srv.running()
    # The problem names the file and the line (file:line:col), as check-config does.
    wait_log(srv, f"{srv.config_path}:{bad_line}:", after=mark)
    with srv.session() as c:
        assert rcpts(c, 3) == [250, 250, 250], "the old config (100 recipients) still applies"
    r = srv.admin.post("/api/reload")
    assert r.status == 422, r
    body = r.json()
    assert body["reloaded"] is False and body["errors"] and all(isinstance(e, str) for e in body["errors"]), body
    assert any(f"{srv.config_path}:{bad_line}:" in e for e in body["errors"]), body


def test_bad_values_every_problem_logged_and_returned(ternx):
    srv = reload_srv(ternx)
    rewrite(srv, limits={"max_recipients": 0, "max_connections": 0})
    mark = len(srv.log())
    r = srv.admin.post("/api/reload")
    assert r.status == 422, r
    errors = r.json()["errors"]
    joined = "\n".join(errors)
    assert "limits.max_recipients" in joined and "limits.max_connections" in joined, errors
    assert len(errors) >= 2, errors
    wait_log(srv, "config reload failed", after=mark)
    wait_log(srv, "limits.max_connections", after=mark)
    tail = srv.log()[mark:]
    assert "limits.max_recipients" in tail, tail
    # The same by SIGHUP.
    sighup(srv, "config reload failed")
    with srv.session() as c:
        assert rcpts(c, 3) == [250, 250, 250]
    # Fixed file: the reload goes through.
    rewrite(srv, limits={"max_recipients": 2, "max_connections": 1000})
    assert srv.admin.ok_json("POST", "/api/reload")["reloaded"] is True
    with srv.session() as c:
        assert rcpts(c, 3) == [250, 250, 452]


# ---------------------------------------------------------------- listeners


def test_listener_change_moves_the_port(ternx):
    srv = reload_srv(ternx)
    old_port = srv.port
    new_port = free_port()
    with srv.session() as established:
        rewrite(srv, smtp={"listen": [f"127.0.0.1:{new_port}"]})
        body = srv.admin.ok_json("POST", "/api/reload")
        assert body["reloaded"] is True, body
        assert any("smtp.listen" in c for c in body["changes"]), body
        with RawSMTP("127.0.0.1", new_port) as c:
            c.greet()
            c.ehlo()
            c.expect("QUIT", 221)
        wait_for(lambda: refused(old_port), 10, f"the old port {old_port} to refuse connections")
        # The session accepted on the old port before the reload goes on and ends normally.
        established.expect("MAIL FROM:<friend@example.test>", 250)
        established.expect(f"RCPT TO:<{ALICE}>", 250)
        established.expect("QUIT", 221)
    srv.port = new_port  # for the fixture's own checks and stop
    assert srv.running()


# ---------------------------------------------------------------- check-config --diff


def test_check_config_diff(ternx):
    srv = reload_srv(ternx)
    r = run_tern("check-config", "--diff", str(srv.config_path))
    assert r.returncode == 0, out(r)
    assert "no changes" in r.stdout.decode(), out(r)

    rewrite(srv, limits={"max_recipients": 2})
    r = run_tern("check-config", "--diff", str(srv.config_path))
    assert r.returncode == 0, out(r)
    lines = r.stdout.decode().splitlines()
    assert "limits.max_recipients: 100 -> 2" in lines, out(r)
    assert not any(ln.startswith("local.") or ln.startswith("smtp.") for ln in lines), out(r)

    # FILE defaults to the one serve would use: $TERN_CONFIG.
    r = run_tern("check-config", "--diff", env_config=srv.config_path)
    assert r.returncode == 0 and "limits.max_recipients: 100 -> 2" in r.stdout.decode(), out(r)

    # After the reload the snapshot is the new file: nothing left to apply.
    assert srv.admin.ok_json("POST", "/api/reload")["reloaded"] is True
    r = run_tern("check-config", "--diff", str(srv.config_path))
    assert r.returncode == 0 and "no changes" in r.stdout.decode(), out(r)
    snapshot = srv.data_dir / "run" / "config.toml"
    assert snapshot.is_file() and "max_recipients = 2" in snapshot.read_text()


def test_check_config_diff_with_dash_c(ternx):
    srv = reload_srv(ternx)
    rewrite(srv, limits={"max_recipients": 2})
    r = run_tern("check-config", "--diff", config=srv.config_path)
    assert r.returncode == 0, out(r)
    assert "limits.max_recipients: 100 -> 2" in r.stdout.decode().splitlines(), out(r)


def test_check_config_diff_invalid_file_78(ternx):
    srv = reload_srv(ternx)
    bad = srv.root / "bad.toml"
    cfg = copy.deepcopy(srv.config)
    cfg["limits"]["max_recipients"] = 0
    bad.write_text(toml_dumps(cfg))
    r = run_tern("check-config", "--diff", str(bad))
    assert r.returncode == 78, out(r)
    bad.write_text("this is = = not toml\n")
    r = run_tern("check-config", "--diff", str(bad))
    assert r.returncode == 78, out(r)


def test_check_config_diff_without_a_server_66(tmp_path):
    path = tmp_path / "tern.toml"
    path.write_text(toml_dumps({"hostname": "mx.tern.test", "data_dir": str(tmp_path / "data"),
                                "smtp": {"listen": [f"127.0.0.1:{free_port()}"]},
                                "local": {"domains": ["tern.test"]}}))
    r = run_tern("check-config", "--diff", str(path))
    assert r.returncode == 66, out(r)
    err = r.stderr.decode()
    assert "run/config.toml" in err or "running" in err, out(r)
    # Without --diff the same file is simply valid.
    assert run_tern("check-config", str(path)).returncode == 0
