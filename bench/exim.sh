#!/usr/bin/env bash
# Exim 4 peer for the benchmark: Debian's exim4-daemon-light unpacked (apt-get download + dpkg -x; it conflicts
# with the installed postfix package), a private config, spool and log under $BENCH_DIR/exim, on a loopback port.
#
#   bench/exim.sh setup   unpack Exim if needed, create its user, write the config (rewritten every time)
#   bench/exim.sh start   setup + start the daemon (stops a running bench instance first)
#   bench/exim.sh stop    stop the bench instance (by the pid file it wrote)
#   bench/exim.sh clean   stop + delete spool, Maildir and logs
#
# Environment: BENCH_DIR (default /tmp/tern-bench), EXIM_PORT (10028), SINK_PORT (10027, where relay.test goes),
# EXIM_ROOT (where the package is unpacked; default /opt/tern-bench/exim).
# What it builds (the equivalent of bench/postfix.sh): catch-all Maildir delivery of every address in bench.test
# into $BENCH_DIR/exim/vmail/mail/ as the vmail user, relay.test to smtp-sink on 127.0.0.1:$SINK_PORT, 50 MiB
# messages, Exim's default durability (fsync of the spool -D/-H files and of each Maildir file), immediate
# delivery. The tuning for a busy server is commented in the config below and listed in docs/performance.md.
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/tmp/tern-bench}
EXIM_PORT=${EXIM_PORT:-10028}
SINK_PORT=${SINK_PORT:-10027}
EXIM_ROOT=${EXIM_ROOT:-/opt/tern-bench/exim}
EX=$BENCH_DIR/exim
CONF=$EX/exim.conf
BIN=$EXIM_ROOT/usr/sbin/exim4
PIDFILE=$EX/exim.pid

# shellcheck source=bench/deps.sh
. "$(dirname "$0")/deps.sh"

install_exim() {
    install_libs exim4-daemon-light exim4-base
    if [ ! -x "$BIN" ]; then
        local d
        d=$(mktemp -d)
        (cd "$d" && apt-get download -qq exim4-daemon-light exim4-base </dev/null >/dev/null)
        mkdir -p "$EXIM_ROOT"
        dpkg -x "$d"/exim4-daemon-light_*.deb "$EXIM_ROOT"
        dpkg -x "$d"/exim4-base_*.deb "$EXIM_ROOT"
        rm -rf "$d"
    fi
    # Debian's binary is built with EXIM_USER=Debian-exim (what the package's postinst creates).
    getent group Debian-exim >/dev/null || groupadd --system Debian-exim
    id Debian-exim >/dev/null 2>&1 || useradd --system -g Debian-exim -d /nonexistent -s /usr/sbin/nologin Debian-exim
    getent group vmail >/dev/null || groupadd --system vmail
    id vmail >/dev/null 2>&1 || useradd --system -g vmail -d /nonexistent -s /usr/sbin/nologin vmail
}

setup() {
    install_exim
    mkdir -p "$EX/spool" "$EX/log" "$EX/vmail"
    chown Debian-exim:Debian-exim "$EX/spool" "$EX/log"
    chown vmail:vmail "$EX/vmail"
    cat >"$CONF" <<EOF
# Written by bench/exim.sh; rewritten on every run.
exim_path = $BIN
primary_hostname = exim.bench.invalid
qualify_domain = bench.invalid
spool_directory = $EX/spool
log_file_path = $EX/log/%slog
pid_file_path = $PIDFILE
local_interfaces = 127.0.0.1
daemon_smtp_ports = $EXIM_PORT
disable_ipv6 = true
keep_environment =

domainlist local_domains = bench.test
domainlist relay_to_domains = relay.test
hostlist relay_from_hosts = 127.0.0.1

acl_smtp_rcpt = acl_check_rcpt
message_size_limit = 50M

# --- tuning for a busy server (docs/performance.md lists each with its default) ---
# Concurrent incoming sessions: default 20; the matrix has 100-session rows.
smtp_accept_max = 300
# Listen backlog: default 20; 100 sessions connect at once.
smtp_connect_backlog = 1024
# Default 10: after that many messages on one connection Exim only queues. 0 = never.
smtp_accept_queue_per_connection = 0
# No load-based queueing or refusing (unset is the default; the shared machine's load average is 2-10).
# queue_only_load, deliver_queue_load_max, smtp_load_reserve: unset.
# No reverse DNS or ident lookups for the loopback client (defaults: host_lookup = *, rfc1413_hosts = @[]).
host_lookup =
rfc1413_hosts =
rfc1413_query_timeout = 0s
# Parallel remote deliveries of one message (default 4 in 4.96 is fine; one recipient here). Raised anyway.
remote_max_parallel = 20
# Spread spool files over 62 subdirectories (default false): smaller directories under load.
split_spool_directory = true
# No per-message log file in spool/msglog/ (default true): one file created, written and deleted per
# message; the Exim spec suggests turning it off "to reduce Exim's I/O on very busy systems". The main log
# still has every line.
message_logs = false
# Deliver immediately after reception (the default: queue_only unset); no queue runner is needed.
# No TLS here (none of the servers uses it on loopback).

begin acl

acl_check_rcpt:
  accept  domains = +local_domains
  accept  domains = +relay_to_domains
          hosts   = +relay_from_hosts
  deny    message = relay not permitted

begin routers

relay_sink:
  driver = manualroute
  domains = +relay_to_domains
  route_list = * 127.0.0.1
  transport = remote_smtp_sink
  self = send
  no_more

catchall_maildir:
  driver = accept
  domains = +local_domains
  transport = maildir_delivery
  no_more

begin transports

remote_smtp_sink:
  driver = smtp
  port = $SINK_PORT
  allow_localhost
  hosts_avoid_tls = *
  helo_data = exim.bench.invalid

maildir_delivery:
  driver = appendfile
  directory = $EX/vmail/mail
  maildir_format
  create_directory
  delivery_date_add
  envelope_to_add
  return_path_add
  user = vmail
  group = vmail
  mode = 0600

begin retry
*   *   F,2h,15m; G,16h,1h,1.5; F,4d,6h
EOF
    chmod 644 "$CONF"
    chown root:root "$CONF"
    # With -C Exim drops root (and could not deliver as vmail) unless the file is listed in the binary's
    # TRUSTED_CONFIG_LIST (Debian: /etc/exim4/trusted_configs, owned by root, not group/world-writable).
    # No exim package is installed here, so this file serves only the bench instance.
    mkdir -p /etc/exim4
    touch /etc/exim4/trusted_configs
    chmod 644 /etc/exim4/trusted_configs
    grep -qxF "$CONF" /etc/exim4/trusted_configs || echo "$CONF" >>/etc/exim4/trusted_configs
    "$BIN" -C "$CONF" -bV >/dev/null
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
    setup
    stop
    # -bd: daemon; -oX: port; no -q (deliveries are immediate; a queue runner would only add noise).
    "$BIN" -C "$CONF" -bd -oX "$EXIM_PORT" -oP "$PIDFILE"
    local i
    for i in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$EXIM_PORT") 2>/dev/null; then
            echo "exim listening on 127.0.0.1:$EXIM_PORT (config $CONF)"
            return 0
        fi
        sleep 0.2
    done
    echo "exim did not start; see $EX/log/paniclog and mainlog" >&2
    return 1
}

stop() {
    running || return 0
    local pid
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    rm -f "$PIDFILE"
}

clean() {
    stop
    rm -rf "$EX/spool" "$EX/log" "$EX/vmail"
}

case "${1:-}" in
    setup) setup ;;
    start) start ;;
    stop) stop ;;
    clean) clean ;;
    *) echo "usage: $0 setup|start|stop|clean" >&2; exit 2 ;;
esac
