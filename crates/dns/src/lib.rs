//! DNS for mail routing: a `Resolver` trait (so tests and the relay can swap in fakes), a hickory
//! implementation, and the RFC 5321 5.1 MX selection rules (preference order, implicit MX, null MX).

pub mod error;
pub mod hickory;
pub mod mx;
pub mod resolver;
pub mod static_resolver;

pub use error::DnsError;
pub use hickory::HickoryResolver;
pub use mx::{mx_hosts, resolve_host, MxHost, MxResult};
pub use resolver::{DnsFuture, MxRecord, Resolver};
pub use static_resolver::StaticResolver;
