//! Exit codes of `tern send` and `tern sendmail` (sysexits.h, as sendmail uses them), so a
//! script can tell "try again later" from "will never work".

use std::process::ExitCode;

use tern_queue::RcptClass;

pub const OK: u8 = 0;
/// EX_USAGE: bad flags, invalid address, no recipient.
pub const USAGE: u8 = 64;
/// EX_DATAERR: input that can't be sent (a body that is not UTF-8).
pub const DATAERR: u8 = 65;
/// EX_NOINPUT: a body, HTML or attachment file is missing or unreadable.
pub const NOINPUT: u8 = 66;
/// EX_UNAVAILABLE: permanent failure (5xx, null MX, NXDOMAIN, message too big).
pub const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: an internal error (cannot start the runtime).
pub const SOFTWARE: u8 = 70;
/// EX_TEMPFAIL: temporary failure (4xx, network error, timeout, DNS SERVFAIL).
pub const TEMPFAIL: u8 = 75;
/// EX_CONFIG: the tern config could not be loaded (sendmail mode).
pub const CONFIG: u8 = 78;

pub fn for_class(class: RcptClass) -> ExitCode {
    ExitCode::from(match class {
        RcptClass::Delivered => OK,
        RcptClass::Deferred => TEMPFAIL,
        RcptClass::Failed => UNAVAILABLE,
    })
}

/// The text shown under `tern send --help`.
pub const HELP: &str = "\
Exit codes:
  0   every recipient accepted
  64  usage error (bad flag, invalid address, no recipient)
  65  input that cannot be sent (body not UTF-8)
  66  a body, HTML or attachment file is missing or unreadable
  69  permanent failure for at least one recipient (5xx reply, no such domain, null MX, too big)
  75  temporary failure for at least one recipient (4xx reply, network error, timeout, DNS failure,
      TLS failure: a certificate that does not verify, a --tls-fingerprint mismatch, or --user
      refused because the certificate did not verify)
When some recipients are accepted and others not, one line per recipient is printed and the exit
code is that of the worst outcome (69 over 75 over 0).

Environment:
  TERN_MX_PORT     port for direct MX delivery (default 25; --port wins)
  TERN_NAMESERVER  ip:port of the DNS server for MX lookups (default: /etc/resolv.conf)";
