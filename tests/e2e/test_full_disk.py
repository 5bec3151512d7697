"""A full disk under load (issue 10): tern's data_dir on a 32 MiB tmpfs, clients sending local and relayed
mail, a filler file taking every free byte meanwhile. Replies turn to 452 4.3.1 (at MAIL below
`limits.min_free_space`, at the end of data on ENOSPC), every message that got a 250 is complete in its
Maildir or at the relay's sink, no partial file is left in any Maildir, and the 250s come back once the
filler is removed (fulldisk.py; `scripts/full-disk.sh` runs it by hand, results in docs/reliability.md)."""

from __future__ import annotations

import pytest

from fulldisk import is_root, run


@pytest.mark.skipif(not is_root(), reason="mounts a tmpfs of 32 MiB as data_dir: needs root (CI runs as root)")
@pytest.mark.timeout(240)
def test_full_disk_refuses_with_452_loses_nothing_and_recovers():
    res = run(size="32m", clients=3, warmup=20, full_refusals=10, resume=20, max_seconds=180)
    summary = res.summary()
    assert res.acked_by_phase["before"] >= 20, summary
    # The disk filled under load and tern said so, with 452 only (never 451, never 5xx).
    assert sum(res.refusals("full").values()) >= 10, summary
    assert not res.unexpected_codes(), f"{res.unexpected_codes()[:10]} {summary}"
    assert not res.errors, f"{res.errors[:5]} {summary}"
    # Nothing acknowledged is lost or damaged, nothing partial is left behind.
    assert not res.local_missing, f"acknowledged but not complete in the Maildir: {res.local_missing[:10]} {summary}"
    assert not res.relay_missing, f"acknowledged but not complete at the sink: {res.relay_missing[:10]} {summary}"
    assert not res.partial_files, f"partial files: {res.partial_files[:10]} {summary}"
    assert res.left_in_queue == 0, summary
    # And service resumed once the space was back.
    assert res.acked_by_phase["after"] >= 20, summary
    assert res.ok(), summary
