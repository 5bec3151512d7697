#!/usr/bin/env bash
# OpenSMTPD peer for the benchmark: Debian's opensmtpd unpacked where .ci/run puts it (apt-get download + dpkg -x;
# it conflicts with the installed postfix package), a private config, queue and control socket under
# $BENCH_DIR/opensmtpd, on a loopback port.
#
#   bench/opensmtpd.sh setup   unpack OpenSMTPD if needed, create its users, write the config
#   bench/opensmtpd.sh start   setup + start smtpd in the foreground without -d/-v (stops a running bench instance)
#   bench/opensmtpd.sh stop    stop the bench instance (by the pid file it wrote)
#   bench/opensmtpd.sh clean   stop + delete queue, Maildir and log
#
# Environment: BENCH_DIR (default /tmp/tern-bench), OSMTPD_PORT (10029), SINK_PORT (10027, where relay.test goes),
# TERN_TEST_OPENSMTPD_ROOT (where the package is unpacked; default /opt/tern-test/opensmtpd).
#
# smtpd 6.8 has its queue (/var/spool/smtpd) and control socket (/var/run/smtpd.sock) compiled in, and
# tests/e2e/test_interop.py runs another smtpd with those paths. So this one runs in a private mount namespace
# (unshare -m) where $BENCH_DIR/opensmtpd/spool is bind-mounted on /var/spool/smtpd and $BENCH_DIR/opensmtpd/run
# on /run: its own queue and socket, nothing shared with other instances. Its delivery agents (mail.maildir,
# mail.mda) are looked up in /usr/libexec/opensmtpd, so the unpacked usr/libexec is bind-mounted on /usr/libexec
# in that namespace too. smtpd resolves every client's address (no option turns that off) with its own resolver
# (libasr), which asks DNS before /etc/hosts by default; this machine's DNS server sometimes takes 5 s, which
# stalled 1 connection in ~20. A private resolv.conf with `lookup file bind` (libasr's keyword; glibc ignores
# it) makes 127.0.0.1 resolve from /etc/hosts, as Postfix (glibc, files first) does, and as Exim does with
# host_lookup unset.
# What it builds (the equivalent of bench/postfix.sh): every address in bench.test delivered as the vmail user by
# OpenSMTPD's own mail.maildir into one catch-all Maildir ($BENCH_DIR/opensmtpd/vmail/mail/), relay.test relayed
# to smtp-sink on 127.0.0.1:$SINK_PORT, 50 MiB messages, default durability (fsync'd queue files; mail.maildir
# fsyncs each file before the rename into new/).
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/tmp/tern-bench}
OSMTPD_PORT=${OSMTPD_PORT:-10029}
SINK_PORT=${SINK_PORT:-10027}
ROOT=${TERN_TEST_OPENSMTPD_ROOT:-/opt/tern-test/opensmtpd}
OS=$BENCH_DIR/opensmtpd
CONF=$OS/smtpd.conf
PIDFILE=$OS/smtpd.pid
BIN=$ROOT/usr/sbin/smtpd
SHIM=$OS/listen_backlog.so

# shellcheck source=bench/deps.sh
. "$(dirname "$0")/deps.sh"

install_opensmtpd() {
    install_libs opensmtpd
    # The same steps as .ci/run.
    if [ ! -x "$BIN" ]; then
        local d
        d=$(mktemp -d)
        (cd "$d" && apt-get download -qq opensmtpd </dev/null >/dev/null)
        mkdir -p "$ROOT"
        dpkg -x "$d"/opensmtpd_*.deb "$ROOT"
        rm -rf "$d"
    fi
    local u
    for u in opensmtpd opensmtpq; do
        getent group "$u" >/dev/null || groupadd --system "$u"
        id "$u" >/dev/null 2>&1 || useradd --system --gid "$u" --home-dir /var/lib/opensmtpd/empty \
            --shell /usr/sbin/nologin "$u"
    done
    mkdir -p /var/lib/opensmtpd/empty
    # The mount point start() binds the private spool over. OpenSMTPD itself (as the e2e tests run it,
    # without the bind mount) refuses a spool that is not mode 711, so it is created that way.
    mkdir -p /var/spool/smtpd
    chmod 711 /var/spool/smtpd
    getent group vmail >/dev/null || groupadd --system vmail
    id vmail >/dev/null 2>&1 || useradd --system -g vmail -d /nonexistent -s /usr/sbin/nologin vmail
}

setup() {
    install_opensmtpd
    mkdir -p "$OS/spool" "$OS/run" "$OS/vmail"
    chmod 711 "$OS/spool"
    chown vmail:vmail "$OS/vmail"
    cat >"$CONF" <<EOF
# Written by bench/opensmtpd.sh; rewritten on every run.
# Tuning (docs/performance.md lists each with its default):
# - queue: no "queue compression" / "queue encryption" (the defaults; both cost CPU); ttl left at 4d.
# - smtp limit max-mails / max-rcpt: defaults (100 / 1000) are above what one session sends here.
# - mda limit: at most 50 deliveries at once and 7 per user by default; every message here goes to the one
#   user vmail, so 7 would serialize the local rows: raised to 100 / 100 (parse.y keywords of 6.8).
# - mta limit (limit.c of 6.8): 10 connections per host and 5 per route by default (Postfix: 20 per
#   destination), raised to 20 each; and delays meant for politeness to remote MXs, which hold every relayed
#   message back by seconds when the next hop is one smarthost (here smtp-sink, as for Postfix's transport):
#   conn-delay-route (5 s between new connections on a route), conn-delay-relay (2 s) and reconn-delay-route
#   (3 s) set to 0.
smtp max-message-size 50M
mda limit max-session 100 max-session-per-user 100
mta limit max-conn-per-host 20 max-conn-per-route 20 conn-delay-route 0 conn-delay-relay 0 reconn-delay-route 0

listen on 127.0.0.1 port $OSMTPD_PORT hostname opensmtpd.bench.invalid

# Catch-all: every local part of bench.test maps to the system user vmail (table(5), virtual mapping).
table vusers { "@bench.test" = "vmail" }
action "local" maildir "$OS/vmail/mail" virtual <vusers>
action "relay" relay host smtp://127.0.0.1:$SINK_PORT helo opensmtpd.bench.invalid

match from any for domain "bench.test" action "local"
match from any for domain "relay.test" action "relay"
EOF
    chmod 644 "$CONF"
    { grep -v '^lookup' /etc/resolv.conf; echo "lookup file bind"; } >"$OS/resolv.conf"
    "$BIN" -n -f "$CONF" >/dev/null 2>&1 || { "$BIN" -n -f "$CONF"; exit 1; }
    # The listen backlog shim (see bench/shim/listen_backlog.c for why).
    local src
    src=$(cd "$(dirname "$0")" && pwd)/shim/listen_backlog.c
    if [ ! -f "$SHIM" ] || [ "$src" -nt "$SHIM" ]; then
        command -v gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc libc6-dev </dev/null >/dev/null; }
        gcc -O2 -shared -fPIC -o "$SHIM" "$src" -ldl
    fi
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
    setup
    stop
    # -F: foreground, no debug output (-d and -v log every event to stderr and are slow). Logs go to syslog,
    # which this machine does not run: OpenSMTPD writes no log here (Postfix and Exim write one each).
    setsid unshare -m --propagation private sh -c \
        "mount --bind '$OS/spool' /var/spool/smtpd && mount --bind '$OS/run' /run && mount --bind '$ROOT/usr/libexec' /usr/libexec && mount --bind '$OS/resolv.conf' /etc/resolv.conf && LD_PRELOAD='$SHIM' BENCH_LISTEN_BACKLOG=1024 exec '$BIN' -F -f '$CONF'" \
        </dev/null >>"$OS/smtpd.out" 2>&1 &
    echo $! >"$PIDFILE"
    local i
    for i in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$OSMTPD_PORT") 2>/dev/null; then
            echo "opensmtpd listening on 127.0.0.1:$OSMTPD_PORT (config $CONF)"
            return 0
        fi
        running || break
        sleep 0.2
    done
    echo "opensmtpd did not start; see $OS/smtpd.out" >&2
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
    # Its privilege-separated children share the session that setsid created; wait for them too (bounded).
    for i in $(seq 1 50); do
        pgrep -s "$pid" >/dev/null 2>&1 || break
        sleep 0.2
    done
    for i in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$OSMTPD_PORT") 2>/dev/null || break
        sleep 0.2
    done
    rm -f "$PIDFILE"
}

clean() {
    stop
    rm -rf "$OS/spool" "$OS/run" "$OS/vmail" "$OS/smtpd.out"
}

case "${1:-}" in
    setup) setup ;;
    start) start ;;
    stop) stop ;;
    clean) clean ;;
    *) echo "usage: $0 setup|start|stop|clean" >&2; exit 2 ;;
esac
