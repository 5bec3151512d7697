//! The commands and Sendmail macros each step sends to a milter. The names are those
//! Postfix sends (MILTER_README, "Macros"), which is what rspamd, OpenDKIM and OpenDMARC read:
//! `j` and `{daemon_name}` name the server, `{client_addr}` and friends the client, `i` the
//! queue id, `{auth_authen}` the authenticated user (OpenDKIM signs mail that has one).

use std::net::IpAddr;

use tern_config::Config;
use tern_milter::{Command, ConnectAddress, MacroDef, MacroStage, NulFree, Step};

use crate::session::{ConnInfo, FilterStep, Session};

type Macros = (MacroStage, Vec<MacroDef>);

fn def(name: &str, value: &str) -> Option<MacroDef> {
    // A value with a NUL cannot be sent; such a macro is left out rather than cut.
    Some(MacroDef {
        name: NulFree::new(name.as_bytes().to_vec()).ok()?,
        value: NulFree::new(value.as_bytes().to_vec()).ok()?,
    })
}

fn text(s: &str) -> NulFree {
    NulFree::lossy(s.as_bytes())
}

/// SMFIC_CONNECT and its macros. tern does not look up the client's name, so the host name is
/// the address literal (as Sendmail and Postfix send for an unknown name).
pub fn connect(info: &ConnInfo, cfg: &Config) -> (Command, Macros) {
    let ip = info.peer.ip();
    let literal = format!("[{ip}]");
    let macros = [
        def("j", &cfg.hostname),
        def("{daemon_name}", "tern"),
        def("{daemon_addr}", &info.local.ip().to_string()),
        def("{if_addr}", &info.local.ip().to_string()),
        def("{client_addr}", &ip.to_string()),
        def("{client_port}", &info.peer.port().to_string()),
        def("{client_name}", "unknown"),
        def("{client_ptr}", "unknown"),
        def("_", &format!("unknown {literal}")),
        def("v", concat!("tern ", env!("CARGO_PKG_VERSION"))),
    ];
    let command = Command::Connect {
        hostname: text(&literal),
        address: connect_address(ip, info.peer.port()),
    };
    (
        command,
        (MacroStage::Connect, macros.into_iter().flatten().collect()),
    )
}

/// The client's address for SMFIC_CONNECT.
pub fn connect_address(ip: IpAddr, port: u16) -> ConnectAddress {
    match ip {
        IpAddr::V4(addr) => ConnectAddress::Inet { port, addr },
        IpAddr::V6(addr) => match addr.to_ipv4_mapped() {
            Some(addr) => ConnectAddress::Inet { port, addr },
            None => ConnectAddress::Inet6 { port, addr },
        },
    }
}

/// SMFIC_HELO and its macros (the TLS in use, as Postfix names it).
pub fn helo(name: &str, info: &ConnInfo) -> (Command, Macros) {
    let mut macros = Vec::new();
    if let Some(tls) = &info.tls {
        // "TLSv1.3 TLS13_AES_256_GCM_SHA384": version, then cipher suite.
        let mut parts = tls.split_whitespace();
        if let Some(v) = parts.next() {
            macros.extend(def("{tls_version}", v));
        }
        if let Some(c) = parts.next() {
            macros.extend(def("{cipher}", c));
        }
    }
    (Command::Helo(text(name)), (MacroStage::Helo, macros))
}

/// The protocol step, the command and its macros for a session step.
pub fn for_step(step: &FilterStep, session: &Session) -> (Step, Command, Option<Macros>) {
    match step {
        FilterStep::Helo { name } => {
            let (command, macros) = helo(name, session.conn());
            (Step::Helo, command, Some(macros))
        }
        FilterStep::Mail { id, from, args } => {
            let mut macros = vec![
                def("i", id),
                def("{mail_addr}", from.trim_matches(['<', '>'])),
            ];
            if let Some(user) = session.authenticated() {
                macros.push(def("{auth_authen}", user));
                macros.extend(session.auth_mechanism().map(|m| def("{auth_type}", m)));
            }
            let command = Command::Mail {
                sender: text(from),
                args: args.iter().map(|a| text(a)).collect(),
            };
            (
                Step::Mail,
                command,
                Some((MacroStage::Mail, macros.into_iter().flatten().collect())),
            )
        }
        FilterStep::Rcpt { to } => {
            let macros = def("{rcpt_addr}", to.trim_matches(['<', '>']));
            let command = Command::Rcpt {
                recipient: text(to),
                args: Vec::new(),
            };
            (
                Step::Rcpt,
                command,
                Some((MacroStage::Rcpt, macros.into_iter().collect())),
            )
        }
        FilterStep::Data => (Step::Data, Command::Data, None),
    }
}

/// The macros of the end of message.
pub fn end_of_message(id: &str) -> Vec<MacroDef> {
    def("i", id).into_iter().collect()
}
