//! An in-memory resolver for tests: fixed MX and address tables, NXDOMAIN for anything else.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::dnssec::{tlsa_name, Dnssec, Tlsa};
use crate::error::DnsError;
use crate::resolver::{reverse_name, DnsFuture, MxRecord, Resolver};

#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    mx: HashMap<String, Vec<MxRecord>>,
    ips: HashMap<String, Vec<IpAddr>>,
    txt: HashMap<String, Vec<Vec<u8>>>,
    ptr: HashMap<String, Vec<String>>,
    failing: HashMap<String, String>,
    /// TLSA records by TLSA base name (`_25._tcp.mx.example.test`), and whether they are secure.
    tlsa: HashMap<String, Dnssec<Vec<Tlsa>>>,
    /// Names whose answers are secure ([`StaticResolver::secure`]); with any, it validates.
    secure: std::collections::HashSet<String>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an MX record for `domain`.
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Self {
        self.mx.entry(key(domain)).or_default().push(MxRecord {
            preference,
            exchange: key(exchange),
        });
        self
    }

    /// Adds an address for `host` (the name then exists, with NODATA for MX unless one is added).
    pub fn ip(mut self, host: &str, ip: IpAddr) -> Self {
        self.ips.entry(key(host)).or_default().push(ip);
        self
    }

    /// Adds a TXT record for `name` (its strings already joined).
    pub fn txt(mut self, name: &str, record: &str) -> Self {
        self.txt
            .entry(key(name))
            .or_default()
            .push(record.as_bytes().to_vec());
        self
    }

    /// Adds a PTR record for `ip` (under its reverse name, which then exists).
    pub fn ptr(mut self, ip: IpAddr, name: &str) -> Self {
        self.ptr
            .entry(reverse_name(ip))
            .or_default()
            .push(key(name));
        self
    }

    /// Sets the TLSA answer for `_<port>._tcp.<host>` (secure, insecure or bogus); the
    /// resolver then validates ([`Resolver::dnssec_validates`]).
    pub fn tlsa(mut self, host: &str, port: u16, answer: Dnssec<Vec<Tlsa>>) -> Self {
        self.tlsa.insert(key(&tlsa_name(host, port)), answer);
        self
    }

    /// Marks the MX and address answers of `name` as DNSSEC-secure; the resolver then
    /// validates.
    pub fn secure(mut self, name: &str) -> Self {
        self.secure.insert(key(name));
        self
    }

    fn status<T>(&self, k: &str, t: T) -> Dnssec<T> {
        if self.secure.contains(k) {
            Dnssec::Secure(t)
        } else {
            Dnssec::Insecure(t)
        }
    }

    /// Makes every lookup of `name` fail temporarily (like SERVFAIL).
    pub fn servfail(mut self, name: &str) -> Self {
        self.failing.insert(key(name), "SERVFAIL".into());
        self
    }

    fn exists(&self, k: &str) -> bool {
        self.mx.contains_key(k)
            || self.ips.contains_key(k)
            || self.txt.contains_key(k)
            || self.ptr.contains_key(k)
    }

    fn check(&self, k: &str) -> Result<(), DnsError> {
        if let Some(reason) = self.failing.get(k) {
            return Err(DnsError::Temporary {
                name: k.to_string(),
                reason: reason.clone(),
            });
        }
        if !self.exists(k) {
            return Err(DnsError::NxDomain(k.to_string()));
        }
        Ok(())
    }
}

impl Resolver for StaticResolver {
    fn mx(&self, domain: &str) -> DnsFuture<'_, Vec<MxRecord>> {
        let k = key(domain);
        let result = self
            .check(&k)
            .map(|()| self.mx.get(&k).cloned().unwrap_or_default());
        Box::pin(async move { result })
    }

    fn ips(&self, host: &str) -> DnsFuture<'_, Vec<IpAddr>> {
        let k = key(host);
        let result = self
            .check(&k)
            .map(|()| self.ips.get(&k).cloned().unwrap_or_default());
        Box::pin(async move { result })
    }

    fn txt(&self, name: &str) -> DnsFuture<'_, Vec<Vec<u8>>> {
        let k = key(name);
        let result = self
            .check(&k)
            .map(|()| self.txt.get(&k).cloned().unwrap_or_default());
        Box::pin(async move { result })
    }

    fn dnssec_validates(&self) -> DnsFuture<'_, bool> {
        let v = !self.secure.is_empty() || !self.tlsa.is_empty();
        Box::pin(async move { Ok(v) })
    }

    fn mx_dnssec(&self, domain: &str) -> DnsFuture<'_, Dnssec<Vec<MxRecord>>> {
        let k = key(domain);
        let result = self
            .check(&k)
            .map(|()| self.status(&k, self.mx.get(&k).cloned().unwrap_or_default()));
        Box::pin(async move { result })
    }

    fn ips_dnssec(&self, host: &str) -> DnsFuture<'_, Dnssec<Vec<IpAddr>>> {
        let k = key(host);
        let result = self
            .check(&k)
            .map(|()| self.status(&k, self.ips.get(&k).cloned().unwrap_or_default()));
        Box::pin(async move { result })
    }

    fn tlsa(&self, host: &str, port: u16) -> DnsFuture<'_, Dnssec<Vec<Tlsa>>> {
        let k = key(&tlsa_name(host, port));
        let result = match self.failing.get(&k) {
            Some(reason) => Err(DnsError::Temporary {
                name: k.clone(),
                reason: reason.clone(),
            }),
            None => Ok(self
                .tlsa
                .get(&k)
                .cloned()
                .unwrap_or(Dnssec::Insecure(Vec::new()))),
        };
        Box::pin(async move { result })
    }

    fn ptr(&self, ip: IpAddr) -> DnsFuture<'_, Vec<String>> {
        let k = reverse_name(ip);
        let result = self
            .check(&k)
            .map(|()| self.ptr.get(&k).cloned().unwrap_or_default());
        Box::pin(async move { result })
    }
}
