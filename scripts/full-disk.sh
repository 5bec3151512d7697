#!/usr/bin/env bash
# The full-disk run (issue 10), by hand: mounts a tmpfs with size=32m as tern's data_dir, starts tern
# (catch-all local delivery plus a route to a local aiosmtpd sink for queued relay), runs a load
# generator (Python smtplib clients in a loop), fills the filesystem with a filler file during the load,
# checks that replies turn to 452 4.3.1, that every message that got a 250 is complete (bytes compared) in
# its Maildir or at the sink, that no partial file is left in a Maildir, then removes the filler and checks
# that the 250s come back. Prints one JSON line with the numbers (record them in docs/reliability.md) and
# exits 0 only if everything held. The tmpfs is unmounted and every process stopped at the end.
#
#   sudo scripts/full-disk.sh [--size 32m] [--clients 4] [--warmup 50] [--full-refusals 50] [--resume 50]
#
# Needs root (mount), python3 with requirements-test.txt (aiosmtpd), and a built tern: $TERN_BIN, or
# target/debug/tern (built here with `cargo build -p tern` when missing).
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "full-disk.sh: needs root to mount the tmpfs (run it with sudo)" >&2
    exit 77
fi

export TERN_BIN="${TERN_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/tern}"
if [ ! -x "$TERN_BIN" ]; then
    cargo build -p tern
fi

exec python3 tests/e2e/fulldisk.py "$@"
