#!/usr/bin/env bash
# A private PostgreSQL cluster for bench/pg.py (issue 14: the shared queue on PostgreSQL).
#
#   bench/pg.sh setup        initdb into $BENCH_DIR/pg/cluster (once; as `nobody` when run as root)
#   bench/pg.sh start        setup if needed, then start on 127.0.0.1:$PG_PORT (default: a free port)
#   bench/pg.sh stop         stop it (fast shutdown, bounded; never touches a system cluster)
#   bench/pg.sh clean        stop + delete the cluster
#   bench/pg.sh url [DB]     print the URL of database DB (default postgres) on the running cluster
#   bench/pg.sh psql [ARGS]  psql to it as the superuser `tern` (trust auth, loopback only)
#
# Durability as tern relies on it: fsync = on, synchronous_commit = on (the defaults, said explicitly).
# Needs the postgresql package (initdb, pg_ctl, psql, pgbench): apt-get install -y postgresql.
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/tmp/tern-bench}
C=$BENCH_DIR/pg/cluster
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$BIN/pg_ctl" ] || { echo "pg.sh: no PostgreSQL server binaries; apt-get install -y postgresql" >&2; exit 1; }

as_pg() { # PostgreSQL refuses to run as root
    if [ "$(id -u)" = 0 ]; then (cd "$C" && runuser -u nobody -- "$@"); else (cd "$C" && "$@"); fi
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
running() { [ -d "$C/data" ] && as_pg "$BIN/pg_ctl" -D "$C/data" status >/dev/null 2>&1; }
port() { cat "$C/port"; }

setup() {
    [ -f "$C/data/PG_VERSION" ] && return 0
    rm -rf "$C" && mkdir -p "$C/sock"
    [ "$(id -u)" = 0 ] && chown -R nobody "$C"
    trap 'rm -rf "$C/data"' ERR # no half-made cluster left behind
    as_pg "$BIN/initdb" -D "$C/data" -U tern -A trust --no-sync -E UTF8 >"$C/initdb.log"
    trap - ERR
    cat >>"$C/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$C/sock'
fsync = on
synchronous_commit = on
max_connections = 200
log_min_messages = warning
EOF
}

start() {
    setup
    if running; then echo "PostgreSQL already running on 127.0.0.1:$(port)"; return 0; fi
    local p=${PG_PORT:-$(free_port)}
    echo "$p" >"$C/port"
    trap 'stop >/dev/null 2>&1 || true; exit 130' INT TERM # never leave a half-started server
    if ! as_pg "$BIN/pg_ctl" -D "$C/data" -l "$C/pg.log" -o "-p $p" -w -t 60 start >/dev/null; then
        tail -n 20 "$C/pg.log" >&2; stop >/dev/null 2>&1 || true; exit 1
    fi
    trap - INT TERM
    echo "PostgreSQL $("$BIN/postgres" -V | awk '{print $3}') on 127.0.0.1:$p (data $C/data, log $C/pg.log)"
}

stop() {
    running || return 0
    as_pg "$BIN/pg_ctl" -D "$C/data" -m fast -w -t 30 stop >/dev/null ||
        as_pg "$BIN/pg_ctl" -D "$C/data" -m immediate -w -t 30 stop >/dev/null
}

case "${1:-}" in
    setup) setup ;;
    start) start ;;
    stop) stop ;;
    clean) stop; rm -rf "$C" ;;
    url) running || { echo "pg.sh: not running" >&2; exit 1; }; echo "postgres://tern@127.0.0.1:$(port)/${2:-postgres}" ;;
    psql) shift; exec psql -X -h 127.0.0.1 -p "$(port)" -U tern -d postgres "$@" ;;
    *) echo "usage: $0 setup|start|stop|clean|url [DB]|psql [ARGS]" >&2; exit 2 ;;
esac
