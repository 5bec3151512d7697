//! Every rule of `mx_targets`, against a static DNS table (the cases the relay's route tests had,
//! plus literals, the caps, concurrency and the deadline).

use std::collections::HashMap;

use super::*;
use crate::resolver::{DnsFuture, MxRecord};
use crate::static_resolver::StaticResolver;

const PORT: u16 = 2626;
const DEADLINE: Duration = Duration::from_secs(5);

fn me() -> Myself {
    Myself {
        hostname: Some("mx.self.test".into()),
        listeners: vec!["127.0.0.1:2525".parse().unwrap()],
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn targets(r: &dyn Resolver, domain: &str, myself: &Myself) -> Result<Vec<Target>, TargetError> {
    block_on(mx_targets(r, domain, PORT, myself, DEADLINE))
}

fn addrs(t: &[Target]) -> Vec<String> {
    t.iter().map(|t| t.addr.to_string()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Relay wording: what the relay stores for a failure, to pin the texts bounces quote.
fn reply(e: &TargetError) -> String {
    let (code, enhanced) = e.status();
    format!("{code} {enhanced} {e}")
}

#[test]
fn mx_hosts_in_preference_order_on_the_port() {
    let r = StaticResolver::new()
        .mx("x.test", 20, "b.x.test")
        .mx("x.test", 10, "a.x.test")
        .ip("a.x.test", ip("127.0.0.1"))
        .ip("b.x.test", ip("127.0.0.2"));
    let t = targets(&r, "x.test", &me()).unwrap();
    assert_eq!(addrs(&t), ["127.0.0.1:2626", "127.0.0.2:2626"]);
    assert_eq!(t[0].name, "a.x.test");
    assert_eq!(t[1].name, "b.x.test");
}

#[test]
fn implicit_mx_is_the_domain_itself() {
    let r = StaticResolver::new().ip("x.test", ip("192.0.2.1"));
    let t = targets(&r, "X.test.", &me()).unwrap();
    assert_eq!(
        t,
        [Target {
            name: "x.test".into(),
            addr: "192.0.2.1:2626".parse().unwrap()
        }]
    );
}

#[test]
fn an_mx_without_address_is_skipped() {
    let r = StaticResolver::new()
        .mx("x.test", 10, "gone.x.test")
        .mx("x.test", 20, "b.x.test")
        .ip("b.x.test", ip("127.0.0.2"));
    let t = targets(&r, "x.test", &me()).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].name, "b.x.test");
}

#[test]
fn null_mx_is_a_permanent_5_1_10() {
    let r = StaticResolver::new().mx("x.test", 0, "");
    let e = targets(&r, "x.test", &me()).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(
        reply(&e),
        "556 5.1.10 x.test does not accept mail (null MX, RFC 7505)"
    );
}

#[test]
fn nxdomain_and_no_address_are_permanent() {
    let r = StaticResolver::new().mx("other.test", 1, "x");
    let e = targets(&r, "nope.test", &me()).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(
        reply(&e),
        "550 5.1.2 domain nope.test does not exist (NXDOMAIN)"
    );
    // The only MX host has no address: a definite answer for every MX.
    let r = StaticResolver::new().mx("x.test", 10, "bare.x.test").mx(
        "bare.x.test",
        1,
        "elsewhere.test",
    );
    let e = targets(&r, "x.test", &me()).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(
        reply(&e),
        "550 5.4.4 no usable address for any MX host of x.test: no MX and no address records for bare.x.test"
    );
}

#[test]
fn dns_trouble_is_temporary() {
    let r = StaticResolver::new().servfail("x.test");
    let e = targets(&r, "x.test", &me()).unwrap_err();
    assert!(!e.is_permanent());
    assert!(reply(&e).starts_with("451 4.4.3 "), "{}", reply(&e));
    // One MX host failing temporarily, the other definitely: temporary wins (RFC 5321 4.5.4.1).
    let r = StaticResolver::new()
        .mx("x.test", 10, "flaky.x.test")
        .mx("x.test", 20, "gone.x.test")
        .servfail("flaky.x.test");
    let e = targets(&r, "x.test", &me()).unwrap_err();
    assert!(!e.is_permanent(), "{e}");
}

#[test]
fn our_own_name_as_mx_is_a_loop() {
    let r = StaticResolver::new()
        .mx("x.test", 10, "MX.self.test")
        .ip("mx.self.test", ip("127.0.0.1"));
    let e = targets(&r, "x.test", &me()).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(
        reply(&e),
        "554 5.4.6 mail loop: the MX of x.test points back to this host (mx.self.test) but x.test is not a local domain"
    );
}

#[test]
fn hosts_as_or_less_preferred_than_us_are_dropped() {
    let r = StaticResolver::new()
        .mx("x.test", 5, "better.x.test")
        .mx("x.test", 10, "mx.self.test")
        .mx("x.test", 10, "peer.x.test")
        .mx("x.test", 20, "backup.x.test")
        .ip("better.x.test", ip("127.0.0.3"))
        .ip("peer.x.test", ip("127.0.0.5"))
        .ip("backup.x.test", ip("127.0.0.4"));
    let t = targets(&r, "x.test", &me()).unwrap();
    assert_eq!(addrs(&t), ["127.0.0.3:2626"]);
}

#[test]
fn without_a_hostname_no_mx_is_ours() {
    let r = StaticResolver::new()
        .mx("x.test", 10, "mx.self.test")
        .ip("mx.self.test", ip("127.0.0.1"));
    let t = targets(&r, "x.test", &Myself::default()).unwrap();
    assert_eq!(addrs(&t), ["127.0.0.1:2626"]);
}

#[test]
fn our_own_listener_address_is_never_a_target() {
    let myself = Myself {
        hostname: None,
        listeners: vec!["127.0.0.1:2626".parse().unwrap()],
    };
    let r = StaticResolver::new()
        .mx("x.test", 10, "other.x.test")
        .mx("x.test", 20, "next.x.test")
        .ip("other.x.test", ip("127.0.0.1"))
        .ip("other.x.test", ip("127.0.0.9"))
        .ip("next.x.test", ip("127.0.0.1"));
    let t = targets(&r, "x.test", &myself).unwrap();
    assert_eq!(addrs(&t), ["127.0.0.9:2626"]);

    let r = StaticResolver::new()
        .mx("x.test", 10, "other.x.test")
        .ip("other.x.test", ip("127.0.0.1"));
    let e = targets(&r, "x.test", &myself).unwrap_err();
    assert_eq!(
        reply(&e),
        "554 5.4.6 mail loop: every MX host of x.test is this server"
    );
}

#[test]
fn a_wildcard_listener_covers_loopback_on_its_port() {
    let myself = Myself {
        hostname: None,
        listeners: vec!["0.0.0.0:2626".parse().unwrap()],
    };
    let r = StaticResolver::new()
        .mx("x.test", 10, "a.x.test")
        .ip("a.x.test", ip("127.0.0.7"))
        .ip("a.x.test", ip("192.0.2.7"));
    let t = targets(&r, "x.test", &myself).unwrap();
    assert_eq!(addrs(&t), ["192.0.2.7:2626"]);
    // Another port is another server.
    let t = block_on(mx_targets(&r, "x.test", 25, &myself, DEADLINE)).unwrap();
    assert_eq!(t.len(), 2);
}

#[test]
fn address_literals_go_to_that_address() {
    let r = StaticResolver::new();
    let t = targets(&r, "[192.0.2.1]", &me()).unwrap();
    assert_eq!(
        t,
        [Target {
            name: "192.0.2.1".into(),
            addr: "192.0.2.1:2626".parse().unwrap()
        }]
    );
    let t = targets(&r, "[IPv6:2001:db8::1]", &me()).unwrap();
    assert_eq!(addrs(&t), ["[2001:db8::1]:2626"]);
    assert_eq!(t[0].name, "2001:db8::1");
    let e = targets(&r, "[x-tag:stuff]", &me()).unwrap_err();
    assert!(e.is_permanent());
    assert!(reply(&e).starts_with("550 5.4.4 "), "{}", reply(&e));
    let e = targets(&r, "[300.1.1.1]", &me()).unwrap_err();
    assert!(e.is_permanent());
    let mine = Myself {
        hostname: None,
        listeners: vec!["127.0.0.1:2626".parse().unwrap()],
    };
    let e = targets(&r, "[127.0.0.1]", &mine).unwrap_err();
    assert!(matches!(e, TargetError::OwnListener { .. }), "{e}");
}

#[test]
fn at_most_ten_names_and_ten_targets() {
    let mut r = StaticResolver::new();
    for i in 0..15u16 {
        let name = format!("h{i:02}.x.test");
        r = r.mx("x.test", i, &name);
        for j in 1..=3 {
            r = r.ip(&name, ip(&format!("127.0.{i}.{j}")));
        }
    }
    let t = targets(&r, "x.test", &me()).unwrap();
    assert_eq!(t.len(), MAX_TARGETS);
    assert_eq!(t[0].addr.to_string(), "127.0.0.1:2626");
    assert_eq!(t[9].name, "h03.x.test");

    // Names without addresses still count toward the ten names resolved.
    let mut r = StaticResolver::new();
    for i in 0..12u16 {
        let name = format!("h{i:02}.x.test");
        r = r.mx("x.test", i, &name);
        if i >= 10 {
            r = r.ip(&name, ip("127.0.0.1"));
        }
    }
    let e = targets(&r, "x.test", &me()).unwrap_err();
    assert!(matches!(e, TargetError::NoUsableMx { .. }), "{e}");
}

#[test]
fn static_hosts_skip_mx_and_loop_rules() {
    let r = StaticResolver::new()
        .mx("relay.test", 10, "elsewhere.test")
        .ip("relay.test", ip("127.0.0.1"));
    let t = block_on(host_targets(&r, "relay.test", 587)).unwrap();
    assert_eq!(addrs(&t), ["127.0.0.1:587"]);
    assert_eq!(t[0].name, "relay.test");
    let t = block_on(host_targets(&r, "[::1]", 25)).unwrap();
    assert_eq!(addrs(&t), ["[::1]:25"]);
    let e = block_on(host_targets(&r, "gone.test", 25)).unwrap_err();
    assert_eq!(
        reply(&e),
        "550 5.1.2 domain gone.test does not exist (NXDOMAIN)"
    );
}

/// A policy like the relay's: 127.0.0.0/8 and one documentation address are refused.
fn no_loopback(ip: IpAddr) -> Option<String> {
    if ip.is_loopback() {
        Some("loopback".into())
    } else if ip == IpAddr::from([192, 0, 2, 66]) {
        Some("denied".into())
    } else {
        None
    }
}

fn checked(r: &dyn Resolver, domain: &str, myself: &Myself) -> Result<MxTargets, TargetError> {
    block_on(mx_targets_checked(
        r,
        domain,
        PORT,
        myself,
        &no_loopback,
        DEADLINE,
    ))
}

#[test]
fn refused_addresses_are_set_aside_and_the_rest_used() {
    let r = StaticResolver::new()
        .mx("x.test", 10, "lo.x.test")
        .mx("x.test", 20, "ok.x.test")
        .ip("lo.x.test", ip("127.0.0.1"))
        .ip("ok.x.test", ip("192.0.2.66"))
        .ip("ok.x.test", ip("192.0.2.7"));
    let t = checked(&r, "x.test", &Myself::default()).unwrap();
    assert_eq!(addrs(&t.usable), ["192.0.2.7:2626"]);
    let refused: Vec<String> = t.refused.iter().map(ToString::to_string).collect();
    assert_eq!(
        refused,
        [
            "host lo.x.test[127.0.0.1] is loopback",
            "host ok.x.test[192.0.2.66] is denied"
        ]
    );
}

#[test]
fn refused_addresses_do_not_use_up_the_ten_targets() {
    let mut r = StaticResolver::new().mx("x.test", 1, "lo.x.test");
    for j in 1..=12 {
        r = r.ip("lo.x.test", ip(&format!("127.0.0.{j}")));
    }
    r = r
        .mx("x.test", 2, "ok.x.test")
        .ip("ok.x.test", ip("192.0.2.1"));
    let t = checked(&r, "x.test", &Myself::default()).unwrap();
    assert_eq!(addrs(&t.usable), ["192.0.2.1:2626"]);
    assert_eq!(t.refused.len(), 12);
}

#[test]
fn every_address_refused_is_a_permanent_5_4_4() {
    let r = StaticResolver::new()
        .mx("x.test", 10, "a.x.test")
        .mx("x.test", 20, "b.x.test")
        .ip("a.x.test", ip("127.0.0.1"))
        .ip("b.x.test", ip("::1"));
    let e = checked(&r, "x.test", &Myself::default()).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(
        reply(&e),
        "550 5.4.4 every address found for x.test is refused: host a.x.test[127.0.0.1] is loopback (and 1 more)"
    );
    // An MX host without an address beside them changes nothing: still refused.
    let r = StaticResolver::new()
        .mx("x.test", 10, "a.x.test")
        .mx("x.test", 20, "gone.x.test")
        .ip("a.x.test", ip("127.0.0.1"));
    let e = checked(&r, "x.test", &Myself::default()).unwrap_err();
    assert!(matches!(e, TargetError::Refused { .. }), "{e}");
    // An implicit MX is checked like any other.
    let r = StaticResolver::new().ip("x.test", ip("127.0.0.1"));
    let e = checked(&r, "x.test", &Myself::default()).unwrap_err();
    assert!(matches!(e, TargetError::Refused { .. }), "{e}");
}

#[test]
fn a_refused_address_beside_dns_trouble_is_retried() {
    let r = StaticResolver::new()
        .mx("x.test", 10, "a.x.test")
        .mx("x.test", 20, "b.x.test")
        .ip("a.x.test", ip("127.0.0.1"))
        .servfail("b.x.test");
    let e = checked(&r, "x.test", &Myself::default()).unwrap_err();
    assert!(!e.is_permanent(), "{e}");
}

#[test]
fn our_own_listener_stays_a_loop_under_a_policy() {
    let mine = Myself {
        hostname: None,
        listeners: vec!["127.0.0.1:2626".parse().unwrap()],
    };
    let r = StaticResolver::new()
        .mx("x.test", 10, "a.x.test")
        .ip("a.x.test", ip("127.0.0.1"));
    let e = checked(&r, "x.test", &mine).unwrap_err();
    assert!(matches!(e, TargetError::OwnListener { .. }), "{e}");
    let e = checked(&r, "[127.0.0.1]", &mine).unwrap_err();
    assert!(matches!(e, TargetError::OwnListener { .. }), "{e}");
}

#[test]
fn address_literals_are_checked_too() {
    let r = StaticResolver::new();
    let e = checked(&r, "[127.0.0.1]", &Myself::default()).unwrap_err();
    assert_eq!(
        reply(&e),
        "550 5.4.4 every address found for [127.0.0.1] is refused: host 127.0.0.1[127.0.0.1] is loopback"
    );
    let t = checked(&r, "[192.0.2.1]", &Myself::default()).unwrap();
    assert_eq!(addrs(&t.usable), ["192.0.2.1:2626"]);
}

/// Answers like the static table, after a fixed delay per host name.
struct Slow {
    table: StaticResolver,
    delays: HashMap<String, Duration>,
}

impl Resolver for Slow {
    fn mx(&self, domain: &str) -> DnsFuture<'_, Vec<MxRecord>> {
        Resolver::mx(&self.table, domain)
    }

    fn txt(&self, name: &str) -> DnsFuture<'_, Vec<Vec<u8>>> {
        Resolver::txt(&self.table, name)
    }

    fn ips(&self, host: &str) -> DnsFuture<'_, Vec<IpAddr>> {
        let delay = self.delays.get(host).copied().unwrap_or_default();
        let answer = Resolver::ips(&self.table, host);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            answer.await
        })
    }
}

fn slow(delays: &[(&str, u64)]) -> Slow {
    let mut table = StaticResolver::new();
    let mut map = HashMap::new();
    for (i, (name, secs)) in delays.iter().enumerate() {
        table = table
            .mx("x.test", 10 * (i as u16 + 1), name)
            .ip(name, ip(&format!("127.0.0.{}", i + 1)));
        map.insert(name.to_string(), Duration::from_secs(*secs));
    }
    Slow { table, delays: map }
}

#[tokio::test(start_paused = true)]
async fn mx_names_are_resolved_concurrently() {
    // Three 3 s lookups fit in a 5 s deadline only when they run at the same time.
    let r = slow(&[("a.x.test", 3), ("b.x.test", 3), ("c.x.test", 3)]);
    let started = Instant::now();
    let t = mx_targets(&r, "x.test", PORT, &me(), DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        addrs(&t),
        ["127.0.0.1:2626", "127.0.0.2:2626", "127.0.0.3:2626"]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_keeps_what_answered_in_time() {
    let r = slow(&[("stuck.x.test", 3600), ("b.x.test", 1)]);
    let started = Instant::now();
    let t = mx_targets(&r, "x.test", PORT, &me(), DEADLINE)
        .await
        .unwrap();
    assert_eq!(addrs(&t), ["127.0.0.2:2626"]);
    assert_eq!(started.elapsed(), DEADLINE);

    let r = slow(&[("stuck.x.test", 3600)]);
    let e = mx_targets(&r, "x.test", PORT, &me(), DEADLINE)
        .await
        .unwrap_err();
    assert!(!e.is_permanent());
    assert_eq!(
        reply(&e),
        "451 4.4.3 temporary DNS failure for stuck.x.test: no answer within 5s"
    );
}
