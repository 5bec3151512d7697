#!/usr/bin/env bash
# Reference Postfix for the benchmark: its own config dir, queue and Maildir under $BENCH_DIR, on a loopback port.
#
#   bench/postfix.sh setup   write the config (idempotent; rewrites it every time)
#   bench/postfix.sh start   setup + start (stops a running bench instance first)
#   bench/postfix.sh stop    stop the bench instance (never touches the system /etc/postfix instance)
#   bench/postfix.sh clean   stop + delete queue, Maildir and log
#
# Environment: BENCH_DIR (default /tmp/tern-bench), PF_PORT (10025), SINK_PORT (10027, where relay.test goes).
# What it builds: chroot off, maillog_file, virtual(8) Maildir delivery of every address in bench.test into one
# catch-all Maildir ($BENCH_DIR/postfix/vmail/mail/), relay.test relayed to smtp-sink on 127.0.0.1:$SINK_PORT
# through transport_maps, and otherwise Postfix's default durability (fsync of queue files and Maildir files).
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/tmp/tern-bench}
PF_PORT=${PF_PORT:-10025}
SINK_PORT=${SINK_PORT:-10027}
PF=$BENCH_DIR/postfix
CONF=$PF/etc
# 10 MiB workloads plus headers must fit; Debian's default message_size_limit is 10240000.
MAX_SIZE=52428800

install_postfix() {
    if command -v postfix >/dev/null && command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null; then
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    echo "postfix postfix/mailname string bench.invalid" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postfix </dev/null >/dev/null
    # The package's install script may start the system instance on port 25; we run our own.
    postfix stop >/dev/null 2>&1 || true
}

setup() {
    install_postfix
    getent group vmail >/dev/null || groupadd --system vmail
    id vmail >/dev/null 2>&1 || useradd --system -g vmail -d /nonexistent -s /usr/sbin/nologin vmail
    local uid gid
    uid=$(id -u vmail)
    gid=$(id -g vmail)

    mkdir -p "$CONF" "$PF/spool" "$PF/lib" "$PF/vmail"
    # Start from Debian's files each time so the result does not depend on earlier runs (idempotent).
    cp /etc/postfix/master.cf "$CONF/master.cf"
    cp /etc/postfix/main.cf "$CONF/main.cf"
    [ -d /etc/postfix/dynamicmaps.cf.d ] && cp -r /etc/postfix/dynamicmaps.cf.d "$CONF/"
    cp /etc/postfix/dynamicmaps.cf "$CONF/" 2>/dev/null || true
    chown vmail:vmail "$PF/vmail"
    chown postfix "$PF/lib"

    local pc=(postconf -c "$CONF")
    "${pc[@]}" -e \
        "queue_directory = $PF/spool" \
        "data_directory = $PF/lib" \
        "meta_directory = /etc/postfix" \
        "maillog_file_prefixes = /var, /dev/stdout, $PF" \
        "maillog_file = $PF/postfix.log" \
        "myhostname = postfix.bench.invalid" \
        "mydomain = bench.invalid" \
        "myorigin = \$myhostname" \
        "mydestination =" \
        "inet_interfaces = loopback-only" \
        "inet_protocols = ipv4" \
        "mynetworks = 127.0.0.0/8" \
        "alias_maps =" \
        "alias_database =" \
        "relayhost =" \
        "smtpd_tls_security_level = none" \
        "smtp_tls_security_level = none" \
        "virtual_mailbox_domains = bench.test" \
        "virtual_mailbox_base = $PF/vmail" \
        "virtual_mailbox_maps = static:mail/" \
        "virtual_uid_maps = static:$uid" \
        "virtual_gid_maps = static:$gid" \
        "virtual_mailbox_limit = 0" \
        "message_size_limit = $MAX_SIZE" \
        "relay_domains = relay.test" \
        "transport_maps = inline:{relay.test=smtp:[127.0.0.1]:$SINK_PORT}" \
        "smtp_helo_name = postfix.bench.invalid"
    # No chroot: Debian's chroot needs copies of /etc files inside the queue directory.
    "${pc[@]}" -F '*/*/chroot = n'
    # Replace port 25 by our loopback port; the service name is the listen address.
    "${pc[@]}" -M# smtp/inet 2>/dev/null || true
    "${pc[@]}" -M# "127.0.0.1:$PF_PORT/inet" 2>/dev/null || true
    "${pc[@]}" -Me "127.0.0.1:$PF_PORT/inet = 127.0.0.1:$PF_PORT inet n - n - - smtpd"
    postfix -c "$CONF" check
}

running() {
    postfix -c "$CONF" status >/dev/null 2>&1
}

start() {
    setup
    if running; then postfix -c "$CONF" stop >/dev/null 2>&1 || true; fi
    postfix -c "$CONF" start >/dev/null 2>&1
    # Wait (bounded) for the listener to answer.
    local i
    for i in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null; then
            echo "postfix listening on 127.0.0.1:$PF_PORT (config $CONF)"
            return 0
        fi
        sleep 0.2
    done
    echo "postfix did not start; see $PF/postfix.log" >&2
    return 1
}

stop() {
    [ -f "$CONF/main.cf" ] || return 0
    if running; then postfix -c "$CONF" stop >/dev/null 2>&1 || true; fi
    # `postfix stop` returns before every child has exited; wait (bounded) for the port to close.
    local i
    for i in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null || return 0
        sleep 0.2
    done
}

clean() {
    stop
    rm -rf "$PF/spool" "$PF/lib" "$PF/vmail" "$PF/postfix.log"
}

case "${1:-}" in
    setup) setup ;;
    start) start ;;
    stop) stop ;;
    clean) clean ;;
    *) echo "usage: $0 setup|start|stop|clean" >&2; exit 2 ;;
esac
