//! The TOML file as written: serde structs that reject unknown keys, with spans kept for error positions.
//! Nothing is interpreted here; `build` turns these into the validated `Config`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

type Text = Option<Spanned<String>>;
type Int = Option<Spanned<i64>>;
type Flag = Option<Spanned<bool>>;
type TextList = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub hostname: Text,
    pub data_dir: Text,
    pub smtp: RawSmtp,
    pub submission: RawSubmission,
    pub submissions: RawSubmissions,
    pub tls: Option<Spanned<RawTls>>,
    pub limits: RawLimits,
    pub local: RawLocal,
    pub users: Vec<RawUser>,
    pub aliases: BTreeMap<String, Spanned<OneOrMany>>,
    pub relay: RawRelay,
    pub routes: BTreeMap<String, Spanned<RawRoute>>,
    pub dns: RawDns,
    pub queue: RawQueue,
    pub outbound: RawOutbound,
    pub log: RawLog,
    pub dkim: Vec<Spanned<RawDkim>>,
    pub checks: RawChecks,
    pub srs: RawSrs,
    pub milters: Vec<Spanned<RawMilter>>,
    pub admin: RawAdmin,
    pub tls_rpt: RawTlsRpt,
}

/// `[tls_rpt]`: RFC 8460 TLS reporting.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawTlsRpt {
    pub enabled: Flag,
    pub interval: Text,
    pub organization: Text,
    pub contact: Text,
    pub from: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Text,
    pub token_file: Text,
    pub metrics_domains: TextList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawSmtp {
    pub listen: TextList,
    pub bare_line_endings: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawSubmission {
    pub listen: TextList,
    pub require_tls_for_auth: Flag,
    pub enforce_sender: Flag,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawSubmissions {
    pub listen: TextList,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_message_size: Option<Spanned<Size>>,
    pub max_recipients: Int,
    pub max_connections: Int,
    pub max_connections_per_ip: Int,
    pub max_messages_per_ip_per_minute: Int,
    pub max_errors: Int,
    pub max_header_size: Option<Spanned<Size>>,
    pub max_data_memory: Option<Spanned<Size>>,
    pub max_auth_failures: Int,
    pub command_timeout: Text,
    pub data_timeout: Text,
    pub max_auth_checks: Int,
    pub max_auth_failures_per_user: Int,
    pub max_junk_commands: Int,
    pub max_session_time: Text,
    pub ipv6_prefix_length: Int,
    pub stress_threshold: Int,
    pub stress_command_timeout: Text,
    pub stress_data_timeout: Text,
    /// A size or a percentage ("5%"): both fit [`Size`].
    pub min_free_space: Option<Spanned<Size>>,
    pub max_new_mailboxes_per_message: Int,
    pub max_new_mailboxes_per_minute: Int,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLocal {
    pub domains: TextList,
    pub qualify_domain: Text,
    pub catch_all: Flag,
    pub vrfy: Flag,
    pub expn: Flag,
    pub delivery: Text,
    pub lmtp: Text,
    /// `[local.per_domain."example.com"]`: `delivery`/`lmtp` for one local domain.
    pub per_domain: BTreeMap<String, RawLocalDomain>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLocalDomain {
    pub delivery: Text,
    pub lmtp: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUser {
    pub name: Spanned<String>,
    pub password: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawRelay {
    pub trusted_networks: TextList,
}

/// One `[[dkim]]` signing key (RFC 6376).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDkim {
    pub domain: Spanned<String>,
    pub selector: Spanned<String>,
    pub key_file: Spanned<String>,
    #[serde(default)]
    pub headers: TextList,
    #[serde(default)]
    pub subdomains: Flag,
}

/// `[checks]`: inbound SPF / DKIM / DMARC / ARC verification on port 25.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawChecks {
    pub spf: Flag,
    pub dkim: Flag,
    pub dmarc: Flag,
    pub arc: Flag,
    pub dmarc_reject: Flag,
    pub spf_fail_reject: Flag,
}

/// `[srs]`: the Sender Rewriting Scheme for forwarded mail.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawSrs {
    pub secret_file: Text,
    pub domain: Text,
    pub max_age: Text,
}

/// One `[[milters]]` content filter (the Sendmail milter protocol).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMilter {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    #[serde(default)]
    pub timeout: Text,
    #[serde(default)]
    pub message_timeout: Text,
    #[serde(default)]
    pub on_failure: Text,
    #[serde(default)]
    pub apply_to: TextList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawDns {
    pub nameservers: TextList,
    pub dnssec_trust_anchor: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub max_age: Text,
    pub retry_schedule: TextList,
    pub max_received_headers: Int,
    pub delay_warning: Text,
    pub backend: Text,
    pub postgres_url_file: Text,
    pub node_id: Text,
    pub lease_time: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawOutbound {
    pub mx_port: Int,
    pub concurrency: Int,
    pub concurrency_per_host: Int,
    pub tls: Text,
    pub helo_name: Text,
    pub connect_timeout: Text,
    pub command_timeout: Text,
    pub data_timeout: Text,
    pub attempt_timeout: Text,
    pub deny_networks: TextList,
    pub allow_networks: TextList,
    pub min_data_rate: Option<Spanned<Size>>,
    pub min_data_rate_grace: Text,
    pub mta_sts: Flag,
    pub mta_sts_ca_file: Text,
    pub mta_sts_port: Int,
    pub dane: Flag,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLog {
    pub level: Text,
    pub format: Text,
}

/// A route: either the shorthand string "host[:port]" or a full table.
#[derive(Debug)]
pub(crate) enum RawRoute {
    Short(String),
    Full(Box<RawRouteTable>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteTable {
    pub host: Spanned<String>,
    pub port: Int,
    pub tls: Text,
    pub user: Text,
    pub password_file: Text,
    pub ca_file: Text,
    pub dane: Flag,
}

// Hand-written instead of `#[serde(untagged)]`: untagged enums turn every mistake inside the table
// (an unknown key, a wrong type) into "data did not match any variant", which tells the user nothing.
impl<'de> Deserialize<'de> for RawRoute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RouteVisitor;
        impl<'de> Visitor<'de> for RouteVisitor {
            type Value = RawRoute;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a \"host[:port]\" string or a table { host, port, tls, user, password_file }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRoute, E> {
                Ok(RawRoute::Short(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRoute, A::Error> {
                RawRouteTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawRoute::Full(Box::new(t)))
            }
        }
        deserializer.deserialize_any(RouteVisitor)
    }
}

/// Alias targets: one address as a string, or a list of addresses.
#[derive(Debug)]
pub(crate) struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address string or a list of address strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// A byte size: an integer (the documented form) or a string such as "25MiB".
#[derive(Debug)]
pub(crate) enum Size {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl<'de> Visitor<'de> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes (e.g. 26214400) or a size string (e.g. \"25MiB\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                i64::try_from(v)
                    .map(Size::Bytes)
                    .map_err(|_| E::custom("size is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}
