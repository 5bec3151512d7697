#!/usr/bin/env bash
# Benchmark tern against Postfix, Exim and OpenSMTPD (issues 6 and 15). Needs root (the peers, the vmail user,
# cgroups, strace) and ~20 minutes for the full matrix with all four servers (2026-12-04, 2 cores).
#
#   bench/run.sh            full matrix: 3 repetitions, medians, fsyncs per message, 10,000 idle connections
#   bench/run.sh --quick    reduced matrix: 1 repetition, fewer messages (smoke test, ~7 minutes)
#   bench/run.sh --servers postfix,exim,opensmtpd,tern   (the default) any subset; --only TEXT filters workloads
#   bench/run.sh --reps 2 --no-idle --no-fsync           fewer repetitions, skip the idle or the strace pass
#   bench/run.sh --generator smtp-source                 Postfix's smtp-source instead of loadgen (see bench.py generate())
#
# Installs what is missing (postfix from Debian; Exim and OpenSMTPD unpacked by bench/exim.sh and
# bench/opensmtpd.sh, since their packages conflict with postfix), builds tern and bench/loadgen in release mode,
# then runs bench/bench.py, which prints one report and writes it to bench/results/<timestamp>.md.
# Ports: Postfix 10025, tern 10026, smtp-sink 10027, Exim 10028, OpenSMTPD 10029 (override with PF_PORT,
# TERN_PORT, SINK_PORT, EXIM_PORT, OSMTPD_PORT).
# Scratch space: $BENCH_DIR (default /tmp/tern-bench): configs, queues, Maildirs, logs.
set -euo pipefail
cd "$(dirname "$0")/.."

export BENCH_DIR=${BENCH_DIR:-/tmp/tern-bench}
export PF_PORT=${PF_PORT:-10025} TERN_PORT=${TERN_PORT:-10026} SINK_PORT=${SINK_PORT:-10027}
export EXIM_PORT=${EXIM_PORT:-10028} OSMTPD_PORT=${OSMTPD_PORT:-10029}
mkdir -p "$BENCH_DIR"

# 10,000 idle connections need as many descriptors in tern and in the generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

driver_pid=""
cleanup() {
    # Stop only what this script started: the driver (which stops its own children), then the peers.
    if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -TERM "$driver_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$driver_pid" 2>/dev/null || break; sleep 0.2; done
    fi
    bench/postfix.sh stop >/dev/null 2>&1 || true
    bench/exim.sh stop >/dev/null 2>&1 || true
    bench/opensmtpd.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! command -v postfix >/dev/null || ! command -v smtp-source >/dev/null; then
    echo "::: installing postfix"
    bench/postfix.sh setup
fi
bench/exim.sh setup >/dev/null
bench/opensmtpd.sh setup >/dev/null
command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace </dev/null >/dev/null; }
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 </dev/null >/dev/null; }

echo "::: building (release)"
cargo build --release -q -p tern-loadgen
if ! cargo build --release -q -p tern; then
    echo "warning: tern did not build; only Postfix will be measured" >&2
fi

echo "::: benchmark"
python3 bench/bench.py "$@" &
driver_pid=$!
wait "$driver_pid"
