//! DNS for mail routing: a `Resolver` trait (so tests and the relay can swap in fakes), a hickory
//! implementation and its one setup, the RFC 5321 5.1 MX selection rules (preference order,
//! implicit MX, null MX), and the targets to connect to for a domain (self-MX and loop rules).

pub mod dnssec;
pub mod error;
pub mod hickory;
pub mod mx;
pub mod resolver;
pub mod setup;
pub mod static_resolver;
pub mod targets;

pub use dnssec::{tlsa_name, Dnssec, DnssecResolver, Tlsa};
pub use error::DnsError;
pub use hickory::HickoryResolver;
pub use mx::{mx_hosts, resolve_host, MxHost, MxResult};
pub use resolver::{reverse_name, DnsFuture, MxRecord, Resolver};
pub use setup::{setup_resolver, setup_resolver_dnssec, ResolverSetup, FALLBACK_NAMESERVER};
pub use static_resolver::StaticResolver;
pub use targets::{
    host_targets, mx_targets, mx_targets_checked, AddressCheck, MxTargets, Myself, RefusedTarget,
    Target, TargetError, MAX_MX_NAMES, MAX_TARGETS,
};
