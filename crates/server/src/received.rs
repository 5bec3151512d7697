//! The `Received:` trace header (RFC 5321 4.4) and the protocol keyword for its `with`
//! clause (RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA; RFC 6531: UTF8SMTP...).

use std::net::IpAddr;

pub struct TraceInfo<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub tls: Option<&'a str>,
    pub authenticated: bool,
    pub smtputf8: bool,
    pub id: &'a str,
    /// Named only when the message has exactly one recipient (4.4: privacy of the others).
    pub single_recipient: Option<&'a str>,
    pub date: &'a str,
}

pub fn protocol_keyword(esmtp: bool, tls: bool, auth: bool, utf8: bool) -> String {
    let base = match (esmtp, tls, auth) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    if utf8 && esmtp {
        format!("UTF8{}", base.trim_start_matches('E'))
    } else {
        base.to_string()
    }
}

/// The folded header, ending in CRLF.
pub fn received_header(t: &TraceInfo) -> String {
    let ip = match t.client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPv6:{v6}"),
        },
    };
    let helo = sanitize(t.helo);
    let with = protocol_keyword(t.esmtp, t.tls.is_some(), t.authenticated, t.smtputf8);
    let mut h = format!(
        "Received: from {helo} ([{ip}])\r\n\tby {} (tern) with {with}",
        t.hostname
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!("\r\n\t(using {})", sanitize(tls)));
    }
    h.push_str(&format!("\r\n\tid {}", t.id));
    if let Some(rcpt) = t.single_recipient {
        h.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", t.date));
    h
}

/// HELO names come from the client: keep header syntax intact whatever they hold.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | ';' | '<' | '>'))
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_form() {
        let h = received_header(&TraceInfo {
            helo: "walton.net",
            client_ip: "192.0.2.7".parse().unwrap(),
            hostname: "mx.tern.test",
            esmtp: true,
            tls: None,
            authenticated: false,
            smtputf8: false,
            id: "abc",
            single_recipient: Some("riker@starfleet.org"),
            date: "Sat, 28 Nov 2026 10:00:00 +0000",
        });
        assert_eq!(
            h,
            "Received: from walton.net ([192.0.2.7])\r\n\tby mx.tern.test (tern) with ESMTP\r\n\tid abc\r\n\tfor <riker@starfleet.org>;\r\n\tSat, 28 Nov 2026 10:00:00 +0000\r\n"
        );
    }

    #[test]
    fn keywords() {
        assert_eq!(protocol_keyword(false, false, false, false), "SMTP");
        assert_eq!(protocol_keyword(true, true, true, false), "ESMTPSA");
        assert_eq!(protocol_keyword(true, true, false, true), "UTF8SMTPS");
    }

    #[test]
    fn hostile_helo_cannot_break_header() {
        let h = received_header(&TraceInfo {
            helo: "x\r\nBcc: evil (y); <z>",
            client_ip: "::1".parse().unwrap(),
            hostname: "h",
            esmtp: false,
            tls: None,
            authenticated: false,
            smtputf8: false,
            id: "i",
            single_recipient: None,
            date: "d",
        });
        assert!(h.starts_with("Received: from xBcc: evil y z ([IPv6:::1])"));
        assert_eq!(h.matches("\r\n").count(), 4);
    }
}
