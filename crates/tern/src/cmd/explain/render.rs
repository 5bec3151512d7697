//! The text form of the `tern explain` report: the same JSON object as `--json`, section by
//! section, so the two can never say different things.

use std::fmt::Write;

use serde_json::Value;

pub fn text(r: &Value) -> String {
    let mut o = String::new();
    let c = &r["client"];
    let ip_note = if c["ip_given"].as_bool() == Some(true) {
        ""
    } else {
        " (the default: an untrusted internet client; pass --ip to change it)"
    };
    let _ = writeln!(
        o,
        "client: {}{ip_note}, EHLO {}",
        s(&c["ip"]),
        s(&c["helo"])
    );
    if let Some(user) = c["auth"].as_str() {
        let _ = writeln!(o, "  logs in as {user} (password not checked)");
    }
    let trusted = match c["trusted_network"].as_str() {
        Some(net) => format!("yes ({net})"),
        None => "no".into(),
    };
    let _ = writeln!(o, "  trusted network: {trusted}");
    let _ = writeln!(o, "  relay allowed: {}", s(&c["relay_reason"]));

    let l = &r["listener"];
    let _ = writeln!(
        o,
        "\nlistener: {} on {}",
        s(&l["name"]),
        join(&l["addresses"])
    );
    let _ = writeln!(o, "  {}", s(&l["tls"]));
    let _ = writeln!(o, "  {}", s(&l["auth_rule"]));
    if l["milters"].as_bool() == Some(true) {
        let _ = writeln!(
            o,
            "  content filters ([[milters]]) are asked at each step; their verdicts are not simulated"
        );
    }
    let _ = writeln!(o, "  session, as the server would answer it:");
    for step in arr(&l["session"]) {
        let reply = s(&step["reply"]["line"]);
        let first = reply.lines().next().unwrap_or_default();
        let more = reply.lines().count().saturating_sub(1);
        let more = if more > 0 {
            format!(" (+{more} lines)")
        } else {
            String::new()
        };
        let _ = writeln!(o, "    C: {}", s(&step["command"]));
        let _ = writeln!(o, "    S: {first}{more}");
        if let Some(note) = step["note"].as_str() {
            let _ = writeln!(o, "       ({note})");
        }
    }

    let snd = &r["sender"];
    let _ = writeln!(o, "\nsender: <{}>", s(&snd["address"]));
    let _ = writeln!(o, "  MAIL FROM: {}", s(&snd["reply"]["line"]));
    let _ = writeln!(o, "  SPF: {}", s(&snd["spf"]));
    if let Value::Object(checks) = &snd["inbound_checks"] {
        let on: Vec<&str> = checks
            .iter()
            .filter(|(_, v)| v.as_bool() == Some(true))
            .map(|(k, _)| k.as_str())
            .collect();
        let _ = writeln!(o, "  inbound checks at end of DATA: {}", on.join(", "));
    }
    if let Some(rule) = snd["enforce_sender_rule"].as_str() {
        let _ = writeln!(o, "  {rule}");
    }

    for rcpt in arr(&r["recipients"]) {
        let _ = writeln!(
            o,
            "\nrecipient <{}>: {}",
            s(&rcpt["address"]),
            s(&rcpt["decision"])
        );
        let _ = writeln!(o, "  RCPT TO: {}", s(&rcpt["reply"]["line"]));
        let _ = writeln!(o, "  why: {}", s(&rcpt["why"]));
        for t in arr(&rcpt["targets"]) {
            if t["kind"] == "local" {
                let _ = writeln!(
                    o,
                    "  -> local mailbox {}: {}",
                    s(&t["mailbox"]),
                    s(&t["path"])
                );
                continue;
            }
            let fwd = if t["forwarded"].as_bool() == Some(true) {
                " (forwarded)"
            } else {
                ""
            };
            let _ = writeln!(o, "  -> relay to {}{fwd}", s(&t["address"]));
            if let Some(text) = t["srs"]["text"].as_str() {
                match t["srs"]["sender"].as_str() {
                    Some(sender) => {
                        let _ = writeln!(o, "     SRS: sender becomes {sender}: {text}");
                    }
                    None => {
                        let _ = writeln!(o, "     SRS: {text}");
                    }
                }
            }
            route(&mut o, &t["route"]);
        }
    }
    if let Some(line) = r["data"]["line"].as_str() {
        let _ = writeln!(o, "\nmessage refused at DATA: {line}");
    }

    let d = &r["dkim"];
    let _ = writeln!(o, "\nDKIM: {}", s(&d["why"]));
    for k in arr(&d["keys"]) {
        let verb = if d["signs"].as_bool() == Some(true) {
            "signs"
        } else {
            "covers the domain (not used here)"
        };
        let _ = writeln!(
            o,
            "  key d={} s={} a={}: {verb}",
            s(&k["domain"]),
            s(&k["selector"]),
            s(&k["algorithm"])
        );
    }

    let lim = &r["limits"];
    let _ = writeln!(o, "\nlimits:");
    let _ = writeln!(
        o,
        "  max message size {} bytes (SIZE), header {} bytes, {} recipients per message",
        lim["max_message_size"], lim["max_header_size"], lim["max_recipients"]
    );
    let _ = writeln!(
        o,
        "  connections: {} in all, {} per client address (0: no limit)",
        lim["max_connections"], lim["max_connections_per_ip"]
    );
    let _ = writeln!(
        o,
        "  messages per client address per minute: {}: {}",
        lim["max_messages_per_ip_per_minute"],
        s(&lim["message_rate_rule"])
    );
    let _ = writeln!(
        o,
        "  errors before the session is closed: {}; AUTH failures: {}",
        lim["max_errors"], lim["max_auth_failures"]
    );
    let _ = writeln!(
        o,
        "  timeouts: command {}, data {}, whole session {}",
        s(&lim["command_timeout"]),
        s(&lim["data_timeout"]),
        s(&lim["max_session_time"])
    );
    if let Some(f) = r["dns"]["fallback"].as_str() {
        let _ = writeln!(o, "\nDNS: {f}");
    }
    let verdict = if r["accepted"].as_bool() == Some(true) {
        "everything would be accepted"
    } else {
        "something would be refused"
    };
    let _ = writeln!(o, "\nresult: {verdict}");
    o
}

fn route(o: &mut String, rt: &Value) {
    if rt["kind"] == "route" {
        let route = &rt["route"];
        let user = route["auth_user"]
            .as_str()
            .map(|u| format!(", AUTH as {u}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "     route: {} -> {}:{}{user}",
            s(&route["entry"]),
            s(&route["host"]),
            route["port"]
        );
    } else {
        let mx = &rt["mx"];
        if let Some(e) = mx["error"].as_str() {
            let _ = writeln!(o, "     MX lookup for {}: {e}", s(&rt["domain"]));
        } else if mx["implicit"].as_bool() == Some(true) {
            let _ = writeln!(
                o,
                "     no MX for {}: the domain itself is the mail host (implicit MX, RFC 5321 5.1)",
                s(&rt["domain"])
            );
        } else {
            let _ = writeln!(
                o,
                "     MX hosts of {} (port {}), in the order tried:",
                s(&rt["domain"]),
                rt["mx_port"]
            );
        }
        for h in arr(&mx["hosts"]) {
            let addrs = match h["error"].as_str() {
                Some(e) => format!("no address: {e}"),
                None => join(&h["addresses"]),
            };
            let _ = writeln!(
                o,
                "       preference {} {}: {addrs}",
                h["preference"],
                s(&h["host"])
            );
        }
    }
    let _ = writeln!(
        o,
        "     TLS: {} ({}): {}",
        s(&rt["tls"]["policy"]),
        s(&rt["tls"]["from"]),
        s(&rt["tls"]["meaning"])
    );
    let out = &rt["outcome"];
    match out["action"].as_str() {
        Some("deliver") => {
            let hops: Vec<String> = arr(&rt["hops"])
                .iter()
                .map(|h| format!("{} [{}]", s(&h["host"]), s(&h["address"])))
                .collect();
            let _ = writeln!(o, "     the relay would connect to: {}", hops.join(", "));
        }
        Some(action) => {
            let _ = writeln!(
                o,
                "     the relay would {action}: {} ({})",
                s(&out["reply"]),
                s(&out["text"])
            );
        }
        None => {}
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn join(v: &Value) -> String {
    arr(v).iter().map(s).collect::<Vec<_>>().join(", ")
}
