//! Every reply the server sends, in one place (docs/smtp-replies.md is this table in prose).
//! Enhanced codes per RFC 3463; RFC 2034 3 exempts the greeting and HELO/EHLO replies.

use tern_auth::verify::SmtpReply;
use tern_proto::{ec, EnhancedCode, Reply};

pub fn greeting(host: &str) -> Reply {
    Reply::new(220, None, format!("{host} ESMTP tern"))
}

pub fn helo(host: &str) -> Reply {
    Reply::new(250, None, host.to_string())
}

pub fn ehlo(host: &str, client: &str, extensions: Vec<String>) -> Reply {
    let mut lines = vec![format!("{host} Hello {client}")];
    lines.extend(extensions);
    Reply::with_lines(250, None, lines)
}

pub fn helo_syntax() -> Reply {
    Reply::new(501, ec(5, 5, 4), "Syntax: EHLO hostname")
}

pub fn ok() -> Reply {
    Reply::new(250, ec(2, 0, 0), "OK")
}

pub fn sender_ok() -> Reply {
    Reply::new(250, ec(2, 1, 0), "Sender OK")
}

pub fn recipient_ok() -> Reply {
    Reply::new(250, ec(2, 1, 5), "Recipient OK")
}

pub fn need_helo() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Send HELO/EHLO first")
}

pub fn nested_mail() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Sender already specified")
}

pub fn need_mail() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Need MAIL before RCPT")
}

pub fn need_mail_before_data() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Need MAIL before DATA")
}

pub fn need_mail_before_bdat() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Need MAIL before BDAT")
}

pub fn need_rcpt_before_bdat() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Need RCPT before BDAT")
}

/// RFC 3030 3: DATA and BDAT cannot be mixed in one transaction.
pub fn data_after_bdat() -> Reply {
    Reply::new(503, ec(5, 5, 1), "DATA not allowed after BDAT")
}

/// A BDAT after a failed one of the same transaction (the transaction was abandoned).
pub fn bdat_after_failure() -> Reply {
    Reply::new(
        503,
        ec(5, 5, 1),
        "Transaction abandoned after a failed BDAT, send RSET or MAIL",
    )
}

/// RFC 3030 2: the reply to a chunk that is not the last.
pub fn chunk_received(size: u64) -> Reply {
    Reply::new(250, ec(2, 0, 0), format!("{size} octets received"))
}

pub fn need_rcpt() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Need RCPT before DATA")
}

pub fn no_valid_recipients() -> Reply {
    Reply::new(554, ec(5, 5, 1), "No valid recipients")
}

pub fn bad_sender(why: &str) -> Reply {
    Reply::new(
        501,
        ec(5, 1, 7),
        format!("Bad sender address syntax: {why}"),
    )
}

pub fn bad_recipient(why: &str) -> Reply {
    Reply::new(
        501,
        ec(5, 1, 3),
        format!("Bad recipient address syntax: {why}"),
    )
}

/// MAIL or RCPT with a control or bidi/invisible formatting character in the path (see
/// `tern_proto::address::is_forbidden_char`). 553 "mailbox name not allowed" rather than 501:
/// the syntax may be fine under RFC 6531, the policy refuses it; 5.1.3 per RFC 3463 3.2.
pub fn address_control_character() -> Reply {
    Reply::new(553, ec(5, 1, 3), "Address contains a control character")
}

pub fn syntax(why: &str) -> Reply {
    Reply::new(501, ec(5, 5, 4), format!("Syntax error: {why}"))
}

pub fn unsupported_param(name: &str) -> Reply {
    Reply::new(555, ec(5, 5, 4), format!("Unsupported parameter {name}"))
}

pub fn bad_param_value(name: &str) -> Reply {
    Reply::new(
        501,
        ec(5, 5, 4),
        format!("Invalid value for parameter {name}"),
    )
}

pub fn too_big() -> Reply {
    Reply::new(
        552,
        ec(5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}

pub fn utf8_required() -> Reply {
    Reply::new(553, ec(5, 6, 7), "Non-ASCII address requires SMTPUTF8")
}

pub fn no_such_user(addr: &str) -> Reply {
    Reply::new(
        550,
        ec(5, 1, 1),
        format!("<{addr}>: Recipient address rejected: no such user"),
    )
}

pub fn relay_denied(addr: &str) -> Reply {
    Reply::new(550, ec(5, 7, 1), format!("<{addr}>: Relay access denied"))
}

pub fn too_many_recipients() -> Reply {
    Reply::new(452, ec(4, 5, 3), "Too many recipients")
}

/// A catch-all recipient whose mailbox does not exist yet, beyond
/// `limits.max_new_mailboxes_per_message` or `limits.max_new_mailboxes_per_minute`. 450 (RFC
/// 5321 4.2.3: "mailbox unavailable ... temporarily blocked for policy reasons") rather than
/// 452, which a client reads at RCPT as "too many recipients, send the rest now" (RFC 5321
/// 4.5.3.1.10) and which would defeat the pacing; RFC 3463 X.2.0 (mailbox status) since the
/// cause is this mailbox, not yet created, rather than X.2.2 "mailbox full", which it is not.
pub fn mailbox_creation_limited(addr: &str) -> Reply {
    Reply::new(
        450,
        ec(4, 2, 0),
        format!("<{addr}>: Too many new mailboxes, try again later"),
    )
}

pub fn start_data() -> Reply {
    Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")
}

pub fn queued(id: &str) -> Reply {
    Reply::new(250, ec(2, 0, 0), format!("OK: queued as {id}"))
}

pub fn bare_line_ending() -> Reply {
    Reply::new(
        554,
        ec(5, 6, 0),
        "Message rejected: bare <LF> or <CR> in message data (see SMTP smuggling)",
    )
}

pub fn local_error() -> Reply {
    Reply::new(
        451,
        ec(4, 3, 0),
        "Local error in processing, try again later",
    )
}

/// RFC 3463 X.3.1 "Mail system full": the disk or a quota is full. 452 (RFC 5321 4.2.2
/// "Requested action not taken: insufficient system storage") tells the client to retry later.
pub fn storage_full() -> Reply {
    Reply::new(
        452,
        ec(4, 3, 1),
        "Insufficient system storage, try again later",
    )
}

/// RFC 3463 X.3.0: the mail system cannot take this message, and retrying it cannot help.
pub fn store_refused() -> Reply {
    Reply::new(554, ec(5, 3, 0), "Message cannot be stored, do not retry")
}

/// A refusal decided by inbound verification (`tern_auth`): SPF `fail` at MAIL FROM with
/// `checks.spf_fail_reject` (550 5.7.23, RFC 7372 3.2); a DMARC `p=reject` failure with
/// `checks.dmarc_reject` (550 5.7.1) or a DNS failure under `p=reject` (451 4.7.1, RFC 7489
/// 6.6.3) at the end of DATA. Code, enhanced code and text are the engine's; the text names
/// domains from the client's message, so anything but printable ASCII in it is replaced.
pub fn auth_refused(r: &SmtpReply) -> Reply {
    let enhanced = EnhancedCode::parse_prefix(r.status).map(|(code, _)| code);
    let text: String = r
        .text
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    Reply::new(r.code, enhanced, text)
}

pub fn header_too_big() -> Reply {
    Reply::new(552, ec(5, 3, 4), "Header section exceeds the size limit")
}

/// RFC 3463 X.4.6 "Routing loop detected".
pub fn mail_loop() -> Reply {
    Reply::new(
        554,
        ec(5, 4, 6),
        "Too many Received headers: mail loop detected",
    )
}

pub fn quit(host: &str) -> Reply {
    Reply::new(221, ec(2, 0, 0), format!("{host} closing connection"))
}

pub fn vrfy_ambiguous() -> Reply {
    Reply::new(
        252,
        ec(2, 5, 0),
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}

pub fn vrfy_ok(addr: &str) -> Reply {
    Reply::new(250, ec(2, 1, 5), format!("<{addr}>"))
}

pub fn expn_disabled() -> Reply {
    Reply::new(502, ec(5, 5, 1), "EXPN is disabled")
}

pub fn expn_list(members: &[String]) -> Reply {
    Reply::with_lines(
        250,
        ec(2, 1, 5),
        members.iter().map(|m| format!("<{m}>")).collect(),
    )
}

pub fn obsolete(verb: &str) -> Reply {
    Reply::new(
        502,
        ec(5, 5, 1),
        format!("{verb} is obsolete (removed by RFC 5321)"),
    )
}

pub fn turn() -> Reply {
    Reply::new(
        502,
        ec(5, 5, 1),
        "TURN is not supported: it is insecure (RFC 2821), use ETRN or ATRN",
    )
}

pub fn unrecognized() -> Reply {
    Reply::new(500, ec(5, 5, 1), "Command unrecognized")
}

pub fn line_too_long() -> Reply {
    Reply::new(500, ec(5, 5, 2), "Line too long")
}

pub fn timeout(host: &str) -> Reply {
    Reply::new(
        421,
        ec(4, 4, 2),
        format!("{host} Timeout, closing connection"),
    )
}

pub fn too_many_connections(host: &str) -> Reply {
    Reply::new(
        421,
        ec(4, 7, 0),
        format!("{host} Too many connections, try again later"),
    )
}

pub fn shutting_down(host: &str) -> Reply {
    Reply::new(421, ec(4, 3, 2), format!("{host} Service shutting down"))
}

pub fn too_many_errors(host: &str) -> Reply {
    Reply::new(
        421,
        ec(4, 7, 0),
        format!("{host} Too many errors, closing connection"),
    )
}

pub fn tls_unavailable() -> Reply {
    Reply::new(454, ec(4, 7, 0), "TLS not available")
}

pub fn auth_unavailable() -> Reply {
    Reply::new(502, ec(5, 5, 1), "AUTH not available")
}

/// RFC 5321 4.1.1.8 / 4.3.2: help per command.
pub fn help(topic: Option<&str>) -> Reply {
    let Some(topic) = topic else {
        return Reply::with_lines(
            214,
            ec(2, 0, 0),
            vec![
                "tern SMTP server. Commands:".into(),
                "HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY EXPN HELP STARTTLS AUTH".into(),
                "HELP <command> describes one; see RFC 5321.".into(),
            ],
        );
    };
    let text = match topic.to_ascii_uppercase().as_str() {
        "HELO" => "HELO <hostname>: identify yourself (plain SMTP)",
        "EHLO" => "EHLO <hostname>: identify yourself and list the ESMTP extensions",
        "MAIL" => {
            "MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8] [RET=FULL|HDRS] [ENVID=id] [REQUIRETLS]: start a transaction"
        }
        "RCPT" => "RCPT TO:<address> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] [ORCPT=rfc822;addr]: add a recipient",
        "DATA" => "DATA: send the message, ended by a line holding a single dot",
        "BDAT" => "BDAT <size> [LAST]: send the next <size> octets of the message (RFC 3030)",
        "RSET" => "RSET: abort the current transaction",
        "NOOP" => "NOOP: do nothing",
        "QUIT" => "QUIT: close the connection",
        "VRFY" => "VRFY <user>: verify an address (usually answered 252)",
        "EXPN" => "EXPN <list>: expand a mailing list (disabled by default)",
        "HELP" => "HELP [command]: this help",
        "STARTTLS" => "STARTTLS: switch the connection to TLS (RFC 3207)",
        "AUTH" => "AUTH <mechanism> [initial-response]: authenticate (RFC 4954), over TLS only",
        "SEND" | "SOML" | "SAML" => {
            "SEND, SOML and SAML were removed by RFC 5321 and are not supported"
        }
        "TURN" => "TURN is insecure (RFC 2821) and not supported",
        _ => return Reply::new(504, ec(5, 5, 1), "HELP topic unknown"),
    };
    Reply::new(214, ec(2, 0, 0), text)
}

pub fn auth_challenge(b64: &str) -> Reply {
    Reply::new(334, None, b64.to_string())
}

pub fn auth_ok() -> Reply {
    Reply::new(235, ec(2, 7, 0), "Authentication successful")
}

pub fn auth_failed() -> Reply {
    Reply::new(535, ec(5, 7, 8), "Authentication credentials invalid")
}

pub fn auth_required() -> Reply {
    Reply::new(530, ec(5, 7, 0), "Authentication required")
}

/// RFC 4954 6: 538 when the mechanism needs an encrypted channel.
pub fn auth_needs_tls() -> Reply {
    Reply::new(
        538,
        ec(5, 7, 11),
        "Encryption required for requested authentication mechanism",
    )
}

pub fn auth_twice() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Already authenticated")
}

pub fn auth_in_transaction() -> Reply {
    Reply::new(
        503,
        ec(5, 5, 1),
        "AUTH not allowed during a mail transaction",
    )
}

pub fn auth_mechanism() -> Reply {
    Reply::new(
        504,
        ec(5, 5, 4),
        "Unrecognized authentication type (use PLAIN or LOGIN)",
    )
}

pub fn auth_cancelled() -> Reply {
    Reply::new(501, ec(5, 7, 0), "Authentication cancelled")
}

pub fn auth_bad_base64() -> Reply {
    Reply::new(501, ec(5, 5, 2), "Invalid base64 or malformed credentials")
}

pub fn auth_too_many_failures(host: &str) -> Reply {
    Reply::new(
        421,
        ec(4, 7, 0),
        format!("{host} Too many authentication failures, closing connection"),
    )
}

/// RFC 4954 6: 454 4.7.0 is the temporary authentication failure. Every password check slot is
/// busy; the password was not looked at, so the client may simply try again.
pub fn auth_busy() -> Reply {
    Reply::new(
        454,
        ec(4, 7, 0),
        "Too many authentications in progress, try again later",
    )
}

/// The user name is at `limits.max_auth_failures_per_user`: no password is checked for it until
/// its failures are forgotten. Given for every name, known or not, so it reveals nothing.
pub fn auth_user_locked() -> Reply {
    Reply::new(
        454,
        ec(4, 7, 0),
        "Too many failed logins for this user, try again later",
    )
}

/// `limits.max_session_time` is over (RFC 5321 4.5.3.2 lets the server close a session it will
/// not serve any longer with 421).
pub fn session_too_long(host: &str) -> Reply {
    Reply::new(
        421,
        ec(4, 4, 2),
        format!("{host} Session time limit exceeded, closing connection"),
    )
}

pub fn sender_not_owned(addr: &str) -> Reply {
    Reply::new(
        553,
        ec(5, 7, 1),
        format!("<{addr}>: Sender address not owned by the authenticated user"),
    )
}

pub fn rate_limited() -> Reply {
    Reply::new(
        450,
        ec(4, 7, 1),
        "Too many messages from your address, try again later",
    )
}

/// A cross-protocol attack (an HTTP request sent to the SMTP port) is cut off at once.
pub fn http_refused(host: &str) -> Reply {
    Reply::new(
        421,
        ec(4, 7, 0),
        format!("{host} This is an SMTP server, not HTTP, closing connection"),
    )
}

// The content filters' verdicts that come without a reply of their own (docs/filtering.md;
// Postfix's texts, so that clients and log readers see what they know).

pub fn filter_connect_rejected() -> Reply {
    Reply::new(554, ec(5, 7, 1), "Connection rejected by content filter")
}

pub fn filter_connect_tempfail() -> Reply {
    Reply::new(
        421,
        ec(4, 7, 1),
        "Service unavailable - try again later; closing connection",
    )
}

pub fn filter_command_rejected() -> Reply {
    Reply::new(550, ec(5, 7, 1), "Command rejected")
}

pub fn filter_content_rejected() -> Reply {
    Reply::new(550, ec(5, 7, 1), "Message content rejected")
}

pub fn filter_tempfail() -> Reply {
    Reply::new(451, ec(4, 7, 1), "Service unavailable - try again later")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/smtp-replies.md is the oracle the e2e tests check against: every fixed-text reply
    /// must appear there verbatim (as `code x.y.z text`, with `<hostname>` for the host).
    #[test]
    fn documented_replies_match_the_table() {
        let doc = include_str!("../../../docs/smtp-replies.md").replace("\\|", "|");
        let host = "<hostname>";
        let replies = [
            filter_connect_rejected(),
            filter_connect_tempfail(),
            filter_command_rejected(),
            filter_content_rejected(),
            filter_tempfail(),
            greeting(host),
            helo_syntax(),
            ok(),
            sender_ok(),
            recipient_ok(),
            need_helo(),
            nested_mail(),
            need_mail(),
            need_mail_before_data(),
            need_rcpt(),
            need_mail_before_bdat(),
            need_rcpt_before_bdat(),
            data_after_bdat(),
            bdat_after_failure(),
            no_valid_recipients(),
            too_big(),
            utf8_required(),
            address_control_character(),
            too_many_recipients(),
            mailbox_creation_limited("addr"),
            start_data(),
            bare_line_ending(),
            local_error(),
            storage_full(),
            store_refused(),
            header_too_big(),
            mail_loop(),
            quit(host),
            vrfy_ambiguous(),
            expn_disabled(),
            help(Some("MAIL")),
            help(Some("nope")),
            turn(),
            unrecognized(),
            line_too_long(),
            timeout(host),
            too_many_connections(host),
            shutting_down(host),
            too_many_errors(host),
            auth_busy(),
            auth_user_locked(),
            session_too_long(host),
        ];
        for r in replies {
            let wire = String::from_utf8(r.to_bytes()).unwrap();
            let line = wire.trim_end();
            assert!(
                doc.contains(&format!("`{line}`")),
                "docs/smtp-replies.md does not show `{line}`"
            );
        }
    }
}
