//! `tern sendmail` and the binary invoked as `sendmail`: the flags cron, git send-email,
//! mailutils, mutt and PHP mail() use, parsed by hand (they don't fit clap). Reads the message
//! from stdin, completes Date/Message-ID/From, and submits it to the local tern listener.

use std::ffi::OsString;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use tern_client::{ConnectOptions, Direction, SessionOptions, TlsMode};

use super::send::deliver::{deliver, Route};
use super::send::{exit, local_hostname, qualify, report};

const PROG: &str = "sendmail";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opts {
    /// -t: recipients from To/Cc/Bcc.
    pub extract: bool,
    /// -i / -oi: a lone "." line does not end the message.
    pub ignore_dots: bool,
    pub sender: Option<String>,
    pub full_name: Option<String>,
    pub verbose: bool,
    pub rcpts: Vec<String>,
    /// -bi (newaliases): nothing to do in tern.
    pub noop: bool,
}

/// Parses sendmail's command line (without argv[0]).
pub fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut i = 0;
    // An option's value is either glued (-fuser) or the next word (-f user).
    let value = |i: &mut usize, glued: &str, flag: &str| -> Result<String, String> {
        if !glued.is_empty() {
            return Ok(glued.to_string());
        }
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| format!("option {flag} requires a value"))
    };
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            o.rcpts.extend(args[i + 1..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a == "-" {
            o.rcpts.push(a.to_string());
            i += 1;
            continue;
        }
        let flag = &a[1..];
        match flag.chars().next() {
            Some('t') if flag == "t" => o.extract = true,
            Some('i') if flag == "i" => o.ignore_dots = true,
            Some('v') if flag == "v" => o.verbose = true,
            Some('f') => o.sender = Some(value(&mut i, &flag[1..], "-f")?),
            // -r is the old spelling of -f.
            Some('r') => o.sender = Some(value(&mut i, &flag[1..], "-r")?),
            Some('F') => o.full_name = Some(value(&mut i, &flag[1..], "-F")?),
            Some('o') => {
                // -oi is -i; -odi/-odb/-odq, -oem, -oQ... are accepted and ignored, as sendmail
                // ignores options it does not know.
                if flag == "oi" {
                    o.ignore_dots = true;
                } else if flag == "o" {
                    i += 1; // "-o X": the option is the next word
                }
            }
            Some('b') => match flag {
                "bm" => {}
                "bi" => o.noop = true,
                other => return Err(format!("mode -{other} is not supported (only -bm)")),
            },
            // Values tern does not use: DSN (-N), return (-R), envid (-V), body type (-B),
            // log file (-X), config (-C), log level (-L).
            Some('N' | 'R' | 'V' | 'B' | 'X' | 'C' | 'L') => {
                value(&mut i, &flag[1..], a)?;
            }
            // -U (initial submission), -m (me too), -n (no aliasing), -e?: accepted, ignored.
            Some('U' | 'm' | 'n' | 'e' | 'G') => {}
            _ => return Err(format!("unknown option {a}")),
        }
        i += 1;
    }
    // "a@b, c@d" in one argument (mail(1), PHP) is a list.
    o.rcpts = o.rcpts.iter().flat_map(|r| split_addresses(r)).collect();
    Ok(o)
}

/// Splits an address list on commas outside quotes, angle brackets and comments, and reduces
/// each entry to its bare address (`Name <a@b>` -> `a@b`, `a@b (comment)` -> `a@b`).
pub fn split_addresses(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut angle, mut paren) = (false, false, 0u32);
    let mut escaped = false;
    for c in list.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            '(' if !quoted => paren += 1,
            ')' if !quoted && paren > 0 => paren -= 1,
            ':' if !quoted && !angle && paren == 0 => {
                // Group syntax "name: a@b, c@d;": drop the display name.
                cur.clear();
                continue;
            }
            ',' | ';' if !quoted && !angle && paren == 0 => {
                out.extend(bare_address(&cur));
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.extend(bare_address(&cur));
    out
}

fn bare_address(entry: &str) -> Option<String> {
    let e = entry.trim();
    let addr = match (e.rfind('<'), e.rfind('>')) {
        (Some(a), Some(b)) if a < b => e[a + 1..b].trim().to_string(),
        _ => {
            // Strip comments: "a@b (Name)".
            let mut s = String::new();
            let mut depth = 0;
            for c in e.chars() {
                match c {
                    '(' => depth += 1,
                    ')' if depth > 0 => depth -= 1,
                    _ if depth == 0 => s.push(c),
                    _ => {}
                }
            }
            s.trim().trim_matches('"').to_string()
        }
    };
    (!addr.is_empty()).then_some(addr)
}

/// The message as read from stdin, split into header lines (folded fields joined) and body.
pub struct Parsed {
    /// Each field with its continuation lines, as raw text without the final line break.
    pub fields: Vec<String>,
    pub body: Vec<u8>,
}

/// Reads stdin's bytes into fields and body. Without -i, a line holding only "." ends the input
/// (traditional sendmail behaviour).
pub fn parse_message(input: &[u8], ignore_dots: bool) -> Parsed {
    let mut data: &[u8] = input;
    if !ignore_dots {
        let mut pos = 0;
        for line in input.split_inclusive(|b| *b == b'\n') {
            let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            if trimmed == b"." {
                data = &input[..pos];
                break;
            }
            pos += line.len();
        }
    }
    let mut fields: Vec<String> = Vec::new();
    let mut pos = 0;
    for line in data.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            pos += line.len();
            break;
        }
        let s = String::from_utf8_lossy(text).into_owned();
        let continuation = s.starts_with([' ', '\t']);
        match fields.last_mut() {
            Some(last) if continuation => {
                last.push_str("\r\n");
                last.push_str(&s);
            }
            _ if !continuation && !s.contains(':') => {
                // Not a header line: the message has no header section; all of it is body.
                pos = 0;
                fields.clear();
                break;
            }
            _ => fields.push(s),
        }
        pos += line.len();
    }
    Parsed {
        fields,
        body: data[pos.min(data.len())..].to_vec(),
    }
}

fn field_name(f: &str) -> String {
    f.split(':')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn field_value(f: &str) -> String {
    f.split_once(':')
        .map(|(_, v)| v.replace("\r\n", " "))
        .unwrap_or_default()
}

pub fn run_args(args: Vec<OsString>) -> ExitCode {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if opts.noop {
        return ExitCode::SUCCESS;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("{PROG}: cannot read the message from stdin: {e}");
        return ExitCode::from(exit::NOINPUT);
    }
    run(opts, &input)
}

fn run(opts: Opts, input: &[u8]) -> ExitCode {
    let config = match tern_config::Config::discover(None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let hostname = config.hostname.clone();
    let target = submission_addr(config.smtp.listen.first().copied());
    let mut parsed = parse_message(input, opts.ignore_dots);
    let (sender, rcpts) = match envelope(&opts, &mut parsed, &config.local.qualify_domain) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let message = complete_message(&parsed, &opts, &sender, &hostname);

    let mut session = SessionOptions::new(local_hostname());
    if opts.verbose {
        session.transcript = Some(Arc::new(|d: Direction, line: &str| eprintln!("{d} {line}")));
    }
    let mut connect = ConnectOptions::new(session);
    // Local submission to our own listener: loopback, no TLS needed.
    connect.tls = TlsMode::None;
    let route = Route::Server {
        host: target.ip().to_string(),
        port: target.port(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{PROG}: cannot start the runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let results = runtime.block_on(deliver(&route, &connect, &sender, &rcpts, &message));
    let (worst, lines) = report::summarize(&results, PROG, opts.verbose);
    for line in lines {
        eprintln!("{line}");
    }
    exit::for_class(worst)
}

/// The envelope (sender, recipients) from the flags and, with -t, the header, every address
/// without a domain qualified with `qualify_domain` (the header's address fields too, as
/// sendmail does, so cron's `From: root (Cron Daemon)` becomes a valid address). Errors are
/// usage errors, found before anything is sent: a bad sender is blamed on the sender.
pub fn envelope(
    opts: &Opts,
    parsed: &mut Parsed,
    qualify_domain: &str,
) -> Result<(String, Vec<String>), String> {
    for f in &mut parsed.fields {
        *f = qualify::field(f, qualify_domain);
    }
    let sender = match opts.sender.as_deref() {
        // `-f <>` (and `-f ""`): the null reverse-path, for bounces (RFC 5321 4.5.5).
        Some("<>" | "") => String::new(),
        Some(s) => {
            let bare = s
                .strip_prefix('<')
                .and_then(|s| s.strip_suffix('>'))
                .unwrap_or(s);
            qualify::address(bare, qualify_domain)
        }
        None => {
            let user = std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "root".into());
            qualify::address(&user, qualify_domain)
        }
    };
    if !sender.is_empty() {
        if let Err(e) = tern_proto::Address::parse(&sender) {
            return Err(format!("invalid sender {sender:?}: {e}"));
        }
    }
    let mut rcpts = opts.rcpts.clone();
    if opts.extract {
        for f in &parsed.fields {
            if matches!(field_name(f).as_str(), "to" | "cc" | "bcc") {
                rcpts.extend(split_addresses(&field_value(f)));
            }
        }
    }
    let mut unique: Vec<String> = Vec::new();
    for r in rcpts {
        let r = qualify::address(&r, qualify_domain);
        if !unique.iter().any(|u| u.eq_ignore_ascii_case(&r)) {
            unique.push(r);
        }
    }
    if unique.is_empty() {
        return Err("no recipients (give addresses or use -t)".into());
    }
    for r in &unique {
        if let Err(e) = tern_proto::Address::parse(r) {
            return Err(format!("invalid recipient {r:?}: {e}"));
        }
    }
    Ok((sender, unique))
}

/// The first `[smtp] listen` address, with a wildcard mapped to loopback; 127.0.0.1:2525 when
/// the config has none.
pub fn submission_addr(listen: Option<SocketAddr>) -> SocketAddr {
    let mut addr = listen.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2525));
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    addr
}

/// The `-F` full name as an RFC 5322 display name. It comes from whoever runs sendmail (cron
/// passes a job's owner), so it must never break the header: control characters (CR and LF
/// above all: a header injection) are dropped, ASCII becomes a quoted-string (RFC 5322 3.2.4,
/// `"` and `\` escaped), and anything else RFC 2047 encoded-words (UTF-8, base64), each at
/// most 75 characters (RFC 2047 2), split between characters.
fn display_name(raw: &str) -> String {
    use base64::Engine as _;
    let name: String = raw.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim();
    if name.is_empty() {
        return String::new();
    }
    if name.is_ascii() {
        let mut out = String::with_capacity(name.len() + 2);
        out.push('"');
        for c in name.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        return out;
    }
    // "=?UTF-8?B?" + "?=" leave 63 characters of base64: 45 bytes of UTF-8 per word.
    const MAX_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in name.chars() {
        if chunk.len() + c.len_utf8() > MAX_BYTES {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Header section (Bcc removed when -t; Date, Message-ID, From added when missing) + body.
pub fn complete_message(p: &Parsed, opts: &Opts, sender: &str, hostname: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.body.len() + 512);
    let has = |name: &str| p.fields.iter().any(|f| field_name(f) == name);
    // RFC 5322 3.6: Date and From are required; Message-ID should be present.
    if !has("from") {
        let addr = if sender.is_empty() {
            format!("MAILER-DAEMON@{hostname}")
        } else {
            sender.to_string()
        };
        let line = match opts.full_name.as_deref().map(display_name) {
            Some(name) if !name.is_empty() => format!("From: {name} <{addr}>"),
            _ => format!("From: {addr}"),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has("date") {
        let now = chrono::Local::now();
        let date = tern_proto::rfc5322_date_at(now.into(), now.offset().local_minus_utc());
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    if !has("message-id") {
        let id = uuid::Uuid::now_v7().simple();
        out.extend_from_slice(format!("Message-ID: <{id}@{hostname}>\r\n").as_bytes());
    }
    for f in &p.fields {
        // -t: Bcc recipients get the message, the header does not travel (RFC 5322 3.6.3).
        if opts.extract && field_name(f) == "bcc" {
            continue;
        }
        out.extend_from_slice(f.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&p.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn full_names_cannot_break_the_from_header() {
        assert_eq!(display_name("Cron Daemon"), "\"Cron Daemon\"");
        assert_eq!(display_name("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
        // Header injection: CR/LF (and every other control character) are dropped.
        assert_eq!(
            display_name("Evil\r\nBcc: victim@x.test"),
            "\"EvilBcc: victim@x.test\""
        );
        assert_eq!(display_name("\u{7}\u{9b}"), "");
        // Non-ASCII: encoded-words of at most 75 characters, split between characters.
        let w = display_name("Jörg Müller");
        assert_eq!(w, "=?UTF-8?B?SsO2cmcgTcO8bGxlcg==?=");
        let long = display_name(&"é".repeat(60));
        assert!(
            long.split(' ')
                .all(|w| w.len() <= 75 && w.starts_with("=?UTF-8?B?")),
            "{long}"
        );
        assert_eq!(long.split(' ').count(), 3);
    }

    #[test]
    fn flags_used_in_the_wild() {
        // cron: sendmail -FCronDaemon -i -B8BITMIME -oem user
        let o = parse_args(&args("-FCronDaemon -i -B8BITMIME -oem alice@x.test")).unwrap();
        assert_eq!(o.full_name.as_deref(), Some("CronDaemon"));
        assert!(o.ignore_dots);
        assert_eq!(o.rcpts, ["alice@x.test"]);
        // PHP mail(): sendmail -t -i ; git send-email: -i -f sender rcpt...
        let o = parse_args(&args("-t -i")).unwrap();
        assert!(o.extract && o.ignore_dots);
        let o = parse_args(&args("-oi -f me@x.test -odq -oQ/tmp -- -weird@x.test")).unwrap();
        assert_eq!(o.sender.as_deref(), Some("me@x.test"));
        assert_eq!(o.rcpts, ["-weird@x.test"]);
        let o = parse_args(&args("-fme@x.test -v -bm a@x.test,b@x.test")).unwrap();
        assert!(o.verbose);
        assert_eq!(o.rcpts, ["a@x.test", "b@x.test"]);
        assert!(parse_args(&args("-bp")).is_err());
        assert!(parse_args(&args("-f")).is_err());
        assert!(parse_args(&args("-bi")).unwrap().noop);
    }

    #[test]
    fn address_lists() {
        assert_eq!(
            split_addresses("\"Doe, Jo\" <jo@x.test>, b@x.test (Bee), undisclosed-recipients:;"),
            ["jo@x.test", "b@x.test"]
        );
        assert_eq!(
            split_addresses("team: a@x.test, c@x.test;"),
            ["a@x.test", "c@x.test"]
        );
    }

    #[test]
    fn completes_headers_and_strips_bcc() {
        let input =
            b"To: a@x.test\nBcc: secret@x.test,\n  other@x.test\nSubject: hi\n\nbody\n.\nafter\n";
        let p = parse_message(input, false);
        assert_eq!(p.fields.len(), 3);
        assert_eq!(p.body, b"body\n");
        let opts = Opts {
            extract: true,
            full_name: Some("Cron Daemon".into()),
            ..Opts::default()
        };
        let m = String::from_utf8(complete_message(&p, &opts, "me@h.test", "h.test")).unwrap();
        assert!(
            m.starts_with("From: \"Cron Daemon\" <me@h.test>\r\nDate: "),
            "{m}"
        );
        assert!(m.contains("Message-ID: <"));
        assert!(!m.to_ascii_lowercase().contains("bcc"), "{m}");
        assert!(!m.contains("other@x.test"));
        assert!(m.ends_with("Subject: hi\r\n\r\nbody\n"));
        // -i keeps the lone dot and what follows.
        assert!(parse_message(input, true).body.ends_with(b".\nafter\n"));
    }

    #[test]
    fn cron_mail_to_root_is_qualified() {
        // Debian cron without MAILTO: `sendmail -FCronDaemon -i -B8BITMIME -oem root`.
        let opts = parse_args(&args("-FCronDaemon -i -B8BITMIME -oem root")).unwrap();
        let mut p = parse_message(
            b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@vm> job\n\nout\n",
            true,
        );
        let (sender, rcpts) = envelope(
            &Opts {
                sender: Some("root".into()),
                ..opts
            },
            &mut p,
            "vm.example",
        )
        .unwrap();
        assert_eq!(sender, "root@vm.example");
        assert_eq!(rcpts, ["root@vm.example"]);
        assert_eq!(p.fields[0], "From: root@vm.example (Cron Daemon)");
        assert_eq!(p.fields[1], "To: root@vm.example");
        assert_eq!(p.fields[2], "Subject: Cron <root@vm> job");
    }

    #[test]
    fn extracted_recipients_are_qualified() {
        let opts = parse_args(&args("-t -f <>")).unwrap();
        let mut p = parse_message(b"To: root, \"Ops\" <ops>\nCc: a@x.test\n\nhi\n", false);
        let (sender, rcpts) = envelope(&opts, &mut p, "h.test").unwrap();
        assert_eq!(sender, "");
        assert_eq!(rcpts, ["root@h.test", "ops@h.test", "a@x.test"]);
        assert_eq!(p.fields[0], "To: root@h.test, \"Ops\" <ops@h.test>");
    }

    #[test]
    fn a_bad_sender_is_blamed_on_the_sender() {
        let opts = parse_args(&args("-f a..b@x.test root@h.test")).unwrap();
        let mut p = parse_message(b"\nhi\n", false);
        let e = envelope(&opts, &mut p, "h.test").unwrap_err();
        assert!(e.starts_with("invalid sender \"a..b@x.test\""), "{e}");
        let opts = parse_args(&args("-f root root@h.test")).unwrap();
        let (sender, _) = envelope(&opts, &mut p, "h.test").unwrap();
        assert_eq!(sender, "root@h.test");
        let opts = parse_args(&args("-f ok@h.test bad..rcpt@x.test")).unwrap();
        let e = envelope(&opts, &mut p, "h.test").unwrap_err();
        assert!(e.starts_with("invalid recipient"), "{e}");
    }

    #[test]
    fn wildcard_listen_maps_to_loopback() {
        assert_eq!(
            submission_addr(Some("0.0.0.0:25".parse().unwrap())).to_string(),
            "127.0.0.1:25"
        );
        assert_eq!(
            submission_addr(Some("[::]:26".parse().unwrap())).to_string(),
            "[::1]:26"
        );
        assert_eq!(submission_addr(None).to_string(), "127.0.0.1:2525");
    }
}
