# Sourced by bench/exim.sh and bench/opensmtpd.sh.
# The unpacked peer binaries need the shared libraries their packages depend on (a fresh machine has few of
# them: Exim wants libidn12 and libgnutls-dane0, OpenSMTPD libevent). Only the lib* dependencies are
# installed: the packages themselves would conflict with postfix.
#   install_libs PACKAGE...
install_libs() {
    local libs
    libs=$(apt-cache depends --no-recommends --no-suggests "$@" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^lib/ {print $2}' | sort -u)
    # shellcheck disable=SC2086
    dpkg -s $libs >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $libs </dev/null >/dev/null; }
}
