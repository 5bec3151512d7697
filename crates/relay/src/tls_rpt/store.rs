//! The counters: per report period, per policy domain, per policy, successes, failures and
//! failure-detail rows, with fixed caps so memory stays bounded whatever the traffic:
//!
//! - at most [`MAX_DOMAINS`] (period, domain) entries in all; a session for one more is not
//!   recorded, only counted ([`Store::dropped`], logged at the period's report time);
//! - at most [`MAX_POLICIES`] policies per domain and period (a domain changing its MTA-STS
//!   policy that often: the rest is counted as dropped too);
//! - at most [`MAX_DETAILS`] distinct failure-detail rows per policy; further failures still
//!   count in the summary and go to one row per result type without host or address.
//!
//! Saved as JSON to `<data_dir>/tls-rpt/counters.json` (write a temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FailureDetails, Policy, ResultType};

pub const MAX_DOMAINS: usize = 10_000;
pub const MAX_POLICIES: usize = 8;
pub const MAX_DETAILS: usize = 100;

/// The `failure-reason-code` of the row that takes failures past [`MAX_DETAILS`].
pub const OVERFLOW_REASON: &str = "further failures; details not kept (row limit reached)";

const FILE: &str = "counters.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    #[serde(default)]
    pub format: u32,
    /// By the period's start (Unix seconds).
    #[serde(default)]
    pub periods: BTreeMap<u64, PeriodData>,
    /// Sessions not recorded because of the caps (since start; not saved).
    #[serde(skip)]
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodData {
    /// The period's end (Unix seconds, exclusive).
    pub end: u64,
    pub domains: BTreeMap<String, DomainData>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainData {
    pub policies: Vec<PolicyData>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyData {
    pub policy: Policy,
    pub successes: u64,
    pub failures: u64,
    pub details: Vec<Detail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    pub result: ResultType,
    pub details: FailureDetails,
    pub count: u64,
}

impl Store {
    /// The number of (period, domain) entries.
    pub fn len(&self) -> usize {
        self.periods.values().map(|p| p.domains.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn policy(
        &mut self,
        start: u64,
        end: u64,
        domain: &str,
        policy: &Policy,
    ) -> Option<&mut PolicyData> {
        let known = self
            .periods
            .get(&start)
            .is_some_and(|p| p.domains.contains_key(domain));
        if !known && self.len() >= MAX_DOMAINS {
            self.dropped += 1;
            return None;
        }
        let period = self.periods.entry(start).or_insert_with(|| PeriodData {
            end,
            domains: BTreeMap::new(),
        });
        let d = period.domains.entry(domain.to_string()).or_default();
        let i = match d.policies.iter().position(|p| p.policy == *policy) {
            Some(i) => i,
            None if d.policies.len() >= MAX_POLICIES => {
                self.dropped += 1;
                return None;
            }
            None => {
                d.policies.push(PolicyData {
                    policy: policy.clone(),
                    successes: 0,
                    failures: 0,
                    details: Vec::new(),
                });
                d.policies.len() - 1
            }
        };
        d.policies.get_mut(i)
    }

    pub fn success(&mut self, start: u64, end: u64, domain: &str, policy: &Policy) {
        if let Some(p) = self.policy(start, end, domain, policy) {
            p.successes += 1;
        }
    }

    pub fn failure(
        &mut self,
        start: u64,
        end: u64,
        domain: &str,
        policy: &Policy,
        result: ResultType,
        details: FailureDetails,
    ) {
        let Some(p) = self.policy(start, end, domain, policy) else {
            return;
        };
        p.failures += 1;
        if let Some(row) = p
            .details
            .iter_mut()
            .find(|r| r.result == result && r.details == details)
        {
            row.count += 1;
            return;
        }
        let overflow = FailureDetails {
            failure_reason_code: Some(OVERFLOW_REASON.to_string()),
            ..Default::default()
        };
        let kept = p.details.iter().filter(|r| r.details != overflow).count();
        if kept < MAX_DETAILS {
            p.details.push(Detail {
                result,
                details,
                count: 1,
            });
            return;
        }
        match p
            .details
            .iter_mut()
            .find(|r| r.result == result && r.details == overflow)
        {
            Some(row) => row.count += 1,
            None => p.details.push(Detail {
                result,
                details: overflow,
                count: 1,
            }),
        }
    }

    /// Adds `other`'s counts (the saved counters at start-up) to these.
    pub fn merge(&mut self, other: Store) {
        self.dropped += other.dropped;
        for (start, period) in other.periods {
            for (domain, data) in period.domains {
                for p in data.policies {
                    if let Some(mine) = self.policy(start, period.end, &domain, &p.policy) {
                        mine.successes += p.successes;
                        mine.failures += p.failures;
                        for row in p.details {
                            match mine
                                .details
                                .iter_mut()
                                .find(|r| r.result == row.result && r.details == row.details)
                            {
                                Some(r) => r.count += row.count,
                                None => mine.details.push(row),
                            }
                        }
                    }
                }
            }
        }
    }

    /// The (period start, domain) entries whose period has ended by `now`.
    pub fn due(&self, now: u64) -> Vec<(u64, String)> {
        self.periods
            .iter()
            .filter(|(_, p)| p.end <= now)
            .flat_map(|(start, p)| p.domains.keys().map(move |d| (*start, d.clone())))
            .collect()
    }

    pub fn get(&self, start: u64, domain: &str) -> Option<(u64, DomainData)> {
        let p = self.periods.get(&start)?;
        p.domains.get(domain).map(|d| (p.end, d.clone()))
    }

    pub fn remove(&mut self, start: u64, domain: &str) {
        if let Some(p) = self.periods.get_mut(&start) {
            p.domains.remove(domain);
            if p.domains.is_empty() {
                self.periods.remove(&start);
            }
        }
    }

    /// Drops periods that ended before `oldest` (reports that could not be sent for too long);
    /// returns how many (period, domain) entries went.
    pub fn expire(&mut self, oldest: u64) -> usize {
        let old: Vec<u64> = self
            .periods
            .iter()
            .filter(|(_, p)| p.end < oldest)
            .map(|(s, _)| *s)
            .collect();
        let mut n = 0;
        for s in old {
            if let Some(p) = self.periods.remove(&s) {
                n += p.domains.len();
            }
        }
        n
    }
}

/// The saved counters in `dir`, `None` when there are none.
pub fn load(dir: &Path) -> io::Result<Option<Store>> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let store: Store = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if store.format > FORMAT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: format {} is newer than this tern's",
                path.display(),
                store.format
            ),
        ));
    }
    Ok(Some(store))
}

/// Writes `store` to `dir` (created when missing): a temporary file, fsync'd, renamed over the
/// old one, and the directory fsync'd. Nothing left to report: the file is removed.
pub fn save(dir: &Path, store: &Store) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE);
    if store.is_empty() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        return sync_dir(dir);
    }
    let mut copy = store.clone();
    copy.format = FORMAT;
    let bytes = serde_json::to_vec(&copy).map_err(io::Error::other)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_rpt::PolicyType;

    fn sts() -> Policy {
        Policy {
            kind: PolicyType::Sts,
            strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx_hosts: vec!["mx.a.test".into()],
        }
    }

    fn fail(store: &mut Store, domain: &str, mx: &str) {
        store.failure(
            0,
            86400,
            domain,
            &sts(),
            ResultType::CertificateHostMismatch,
            FailureDetails::at(mx, None, "x"),
        );
    }

    #[test]
    fn counts_aggregate_per_domain_policy_and_row() {
        let mut s = Store::default();
        s.success(0, 86400, "a.test", &Policy::none());
        s.success(0, 86400, "a.test", &Policy::none());
        s.success(0, 86400, "a.test", &sts());
        fail(&mut s, "a.test", "mx.a.test");
        fail(&mut s, "a.test", "mx.a.test");
        let (end, d) = s.get(0, "a.test").unwrap();
        assert_eq!(end, 86400);
        assert_eq!(d.policies.len(), 2);
        assert_eq!((d.policies[0].successes, d.policies[0].failures), (2, 0));
        let p = &d.policies[1];
        assert_eq!((p.successes, p.failures, p.details.len()), (1, 2, 1));
        assert_eq!(p.details[0].count, 2);
        assert_eq!(s.due(86399), []);
        assert_eq!(s.due(86400), [(0, "a.test".to_string())]);
        s.remove(0, "a.test");
        assert!(s.is_empty() && s.periods.is_empty());
    }

    #[test]
    fn caps_bound_domains_policies_and_rows() {
        let mut s = Store::default();
        for i in 0..MAX_DOMAINS + 5 {
            s.success(0, 10, &format!("d{i}.test"), &Policy::none());
        }
        assert_eq!(s.len(), MAX_DOMAINS);
        assert_eq!(s.dropped, 5);
        // An existing domain still counts.
        s.success(0, 10, "d1.test", &Policy::none());
        assert_eq!(s.get(0, "d1.test").unwrap().1.policies[0].successes, 2);

        let mut s = Store::default();
        for i in 0..MAX_POLICIES + 2 {
            s.success(
                0,
                10,
                "a.test",
                &Policy::tlsa(vec![format!("3 1 1 {i:02x}")]),
            );
        }
        assert_eq!(s.get(0, "a.test").unwrap().1.policies.len(), MAX_POLICIES);
        assert_eq!(s.dropped, 2);

        let mut s = Store::default();
        for i in 0..MAX_DETAILS + 30 {
            fail(&mut s, "a.test", &format!("mx{i}.a.test"));
        }
        s.failure(
            0,
            10,
            "a.test",
            &sts(),
            ResultType::StarttlsNotSupported,
            FailureDetails::at("other.a.test", None, "y"),
        );
        let p = &s.get(0, "a.test").unwrap().1.policies[0];
        assert_eq!(p.failures as usize, MAX_DETAILS + 31);
        assert_eq!(p.details.len(), MAX_DETAILS + 2);
        let total: u64 = p.details.iter().map(|r| r.count).sum();
        assert_eq!(total, p.failures, "every failure is in some row");
        let over: Vec<&Detail> = p
            .details
            .iter()
            .filter(|r| r.details.failure_reason_code.as_deref() == Some(OVERFLOW_REASON))
            .collect();
        assert_eq!(over.len(), 2);
        assert_eq!(over[0].count, 30);
    }

    #[test]
    fn persistence_round_trip_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mut s = Store::default();
        s.success(100, 200, "a.test", &Policy::none());
        fail(&mut s, "a.test", "mx.a.test");
        s.failure(
            100,
            200,
            "b.test",
            &Policy::none(),
            ResultType::StarttlsNotSupported,
            FailureDetails::at(
                "mx.b.test",
                Some("192.0.2.1".parse().unwrap()),
                "starttls-not-supported",
            ),
        );
        save(dir.path(), &s).unwrap();
        assert!(!dir.path().join("counters.json.tmp").exists());
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.periods, s.periods);
        // Merged into counters recorded since: the sums.
        let mut now = Store::default();
        now.success(100, 200, "a.test", &Policy::none());
        now.merge(back);
        let (_, d) = now.get(100, "a.test").unwrap();
        assert_eq!(d.policies[0].successes, 2);
        assert_eq!(now.get(0, "a.test").unwrap().1.policies[0].failures, 1);
        assert_eq!(
            now.get(100, "b.test").unwrap().1.policies[0].details[0].count,
            1
        );
        // Nothing left: the file goes.
        save(dir.path(), &Store::default()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        // A damaged file is an error, not a panic.
        std::fs::write(dir.path().join("counters.json"), b"{not json").unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn old_periods_expire() {
        let mut s = Store::default();
        s.success(0, 10, "a.test", &Policy::none());
        s.success(10, 20, "a.test", &Policy::none());
        assert_eq!(s.expire(15), 1);
        assert_eq!(s.due(100), [(10, "a.test".to_string())]);
    }
}
