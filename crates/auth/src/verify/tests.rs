//! The verifier against records put straight into its caches (mail-auth consults them before
//! any query; the resolver itself points at a closed loopback port, so anything not in the
//! cache is a DNS failure) and messages signed in the test by tern's own Signer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::{ResolverCache, Txt};
use tern_config::{ChecksConfig, DkimConfig};

use super::*;
use crate::dkim::{generate_key, DkimRecord, KeyAlgorithm, PrivateKey, Signer};

const HOST: &str = "mx.receiver.test";
const CLIENT: &str = "192.0.2.10";

fn checks() -> ChecksConfig {
    tern_config::defaults::CHECKS
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn verifier(checks: ChecksConfig) -> Verifier {
    // Port 9 on loopback: nothing listens, so an uncached lookup fails at once (temperror).
    let mut settings = ResolverSettings::new(vec!["127.0.0.1:9".parse().unwrap()]);
    settings.query_timeout = Duration::from_millis(300);
    Verifier::new(&settings, checks, HOST).unwrap()
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

fn txt(v: &Verifier, name: &str, value: Txt) {
    v.caches().txt.insert(name.into(), value, later());
}

fn nx(v: &Verifier, name: &str) {
    txt(
        v,
        name,
        Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
            ResponseCode::NXDomain,
        ))),
    );
}

fn spf(v: &Verifier, domain: &str, record: &str) {
    let parsed = Spf::parse(record.as_bytes()).unwrap();
    txt(v, &format!("{domain}."), Txt::Spf(Arc::new(parsed)));
}

fn dmarc(v: &Verifier, domain: &str, record: &str) {
    let parsed = Dmarc::parse(record.as_bytes()).unwrap();
    txt(
        v,
        &format!("_dmarc.{domain}."),
        Txt::Dmarc(Arc::new(parsed)),
    );
    // The DMARC tree walk also asks the parent names.
    let mut rest = domain;
    while let Some((_, parent)) = rest.split_once('.') {
        nx(v, &format!("_dmarc.{parent}."));
        rest = parent;
    }
}

fn ip() -> IpAddr {
    CLIENT.parse().unwrap()
}

/// A signer for example.test (selector s1) whose public key is in the verifier's cache.
fn signer(v: &Verifier, dir: &std::path::Path) -> Signer {
    let key_file = dir.join("k.pem");
    std::fs::write(&key_file, generate_key(KeyAlgorithm::Ed25519).unwrap()).unwrap();
    let key = PrivateKey::load(&key_file).unwrap();
    let record = DkimRecord::new("example.test", "s1", &key);
    let dk = DomainKey::parse(record.value.as_bytes()).unwrap();
    txt(
        v,
        "s1._domainkey.example.test.",
        Txt::DomainKey(Arc::new(dk)),
    );
    Signer::from_config(&[DkimConfig {
        domain: "example.test".into(),
        selector: "s1".into(),
        key_file,
        headers: tern_config::defaults::DKIM_HEADERS
            .map(String::from)
            .to_vec(),
        subdomains: false,
    }])
    .unwrap()
}

const MESSAGE: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@receiver.test\r\n\
Subject: hello\r\nMessage-ID: <1@example.test>\r\n\r\nHello Bob.\r\n";

fn signed(s: &Signer) -> Vec<u8> {
    let mut m = s.sign(MESSAGE).unwrap();
    m.extend_from_slice(MESSAGE);
    m
}

#[test]
fn spf_results_and_the_mail_from_verdict() {
    let rt = rt();
    let v = verifier(checks());
    spf(&v, "example.test", "v=spf1 ip4:192.0.2.0/24 -all");
    spf(&v, "soft.test", "v=spf1 ip4:198.51.100.1 ~all");
    spf(&v, "neutral.test", "v=spf1 ?all");
    nx(&v, "none.test.");
    let check = |from: &str| {
        rt.block_on(v.check_spf_mail(ip(), "client.test", from))
            .unwrap()
    };
    assert_eq!(check("a@example.test").result, AuthResult::Pass);
    assert_eq!(check("a@soft.test").result, AuthResult::SoftFail);
    assert_eq!(check("a@neutral.test").result, AuthResult::Neutral);
    assert_eq!(check("a@none.test").result, AuthResult::None);
    // Not in the cache, and the nameserver is unreachable.
    let temp = check("a@unknown.test");
    assert_eq!(temp.result, AuthResult::TempError);
    assert_eq!(
        temp.verdict,
        SpfVerdict::Accept,
        "a DNS failure never refuses"
    );

    let other: IpAddr = "203.0.113.5".parse().unwrap();
    let fail = rt
        .block_on(v.check_spf_mail(other, "client.test", "a@example.test"))
        .unwrap();
    assert_eq!(fail.result, AuthResult::Fail);
    assert_eq!(
        fail.verdict,
        SpfVerdict::Accept,
        "spf_fail_reject is off by default"
    );

    let strict = verifier(ChecksConfig {
        spf_fail_reject: true,
        ..checks()
    });
    spf(&strict, "example.test", "v=spf1 ip4:192.0.2.0/24 -all");
    let fail = rt
        .block_on(strict.check_spf_mail(other, "client.test", "a@example.test"))
        .unwrap();
    match &fail.verdict {
        SpfVerdict::Reject(reply) => {
            assert_eq!((reply.code, reply.status), (550, "5.7.23"));
            assert!(reply.to_string().starts_with("550 5.7.23 "), "{reply}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    let off = verifier(ChecksConfig {
        spf: false,
        ..checks()
    });
    assert!(rt
        .block_on(off.check_spf_mail(ip(), "client.test", "a@example.test"))
        .is_none());
}

#[test]
fn the_null_sender_is_checked_by_helo() {
    let rt = rt();
    let v = verifier(checks());
    spf(&v, "client.example.test", "v=spf1 ip4:192.0.2.10 -all");
    let out = rt
        .block_on(v.check_spf_mail(ip(), "client.example.test", ""))
        .unwrap();
    assert_eq!(out.result, AuthResult::Pass);
    assert_eq!(
        out.identity,
        SpfIdentity::Helo("client.example.test".into())
    );
}

#[test]
fn signed_and_aligned_mail_passes_dkim_and_dmarc() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(checks());
    let s = signer(&v, dir.path());
    dmarc(&v, "example.test", "v=DMARC1; p=reject");
    spf(&v, "example.test", "v=spf1 ip4:192.0.2.0/24 -all");
    let spf = rt.block_on(v.check_spf_mail(ip(), "client.test", "a@example.test"));
    let verdict = rt.block_on(v.check_message(
        ip(),
        "client.test",
        "a@example.test",
        spf.as_ref(),
        &signed(&s),
    ));
    let sigs = verdict.dkim.clone().unwrap();
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].result, AuthResult::Pass);
    assert_eq!(
        (sigs[0].domain.as_str(), sigs[0].selector.as_str()),
        ("example.test", "s1")
    );
    let d = verdict.dmarc.clone().unwrap();
    assert_eq!(
        (d.result, d.policy),
        (AuthResult::Pass, DmarcPolicy::Reject)
    );
    assert_eq!(verdict.disposition, Disposition::Deliver);
    assert_eq!(verdict.arc, Some(AuthResult::None));
    assert_eq!(
        verdict.log_fields().to_string(),
        "spf=pass dkim=pass dmarc=pass arc=none"
    );
    let ar = &verdict.authentication_results;
    assert!(
        ar.starts_with(&format!("Authentication-Results: {HOST};")),
        "{ar}"
    );
    assert!(ar.ends_with("\r\n"), "{ar}");
    for needle in [
        "spf=pass",
        "dkim=pass header.d=example.test header.s=s1",
        "dmarc=pass header.from=example.test",
    ] {
        assert!(ar.contains(needle), "{needle} in {ar}");
    }
    // Folded: no line longer than RFC 5322's 78 characters recommendation by much, all CRLF.
    assert!(ar.split("\r\n").all(|l| !l.contains('\n')), "{ar}");
}

#[test]
fn an_altered_body_fails_and_dmarc_reject_refuses_it() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(checks());
    let s = signer(&v, dir.path());
    dmarc(&v, "example.test", "v=DMARC1; p=reject");
    let mut message = signed(&s);
    let n = message.len();
    message[n - 4] = b'X';
    let other: IpAddr = "203.0.113.5".parse().unwrap();
    // SPF off here: only DKIM could align.
    let verdict =
        rt.block_on(v.check_message(other, "client.test", "a@example.test", None, &message));
    // mail-auth reports a body hash mismatch as neutral (RFC 6376 6.1.3 PERMFAIL, "body hash
    // did not verify"); either way it is not a pass and cannot align.
    let sig = &verdict.dkim.as_ref().unwrap()[0];
    assert_eq!(sig.result, AuthResult::Neutral, "{sig:?}");
    assert!(
        sig.reason
            .as_deref()
            .is_some_and(|r| r.to_lowercase().contains("body")),
        "{sig:?}"
    );
    assert_eq!(verdict.dmarc.as_ref().unwrap().result, AuthResult::Fail);
    match &verdict.disposition {
        Disposition::Reject(reply) => assert_eq!((reply.code, reply.status), (550, "5.7.1")),
        other => panic!("expected a rejection, got {other:?}"),
    }

    // dmarc_reject = false: delivered, marked, quarantined.
    let lenient = verifier(ChecksConfig {
        dmarc_reject: false,
        ..checks()
    });
    let s = signer(&lenient, dir.path().join("x").as_path().parent().unwrap());
    dmarc(&lenient, "example.test", "v=DMARC1; p=reject");
    let mut message = signed(&s);
    let n = message.len();
    message[n - 4] = b'X';
    let verdict =
        rt.block_on(lenient.check_message(other, "client.test", "a@example.test", None, &message));
    assert_eq!(verdict.disposition, Disposition::Quarantine);
    assert!(verdict.authentication_results.contains("dmarc=fail"));
}

#[test]
fn quarantine_pct_and_none_policies() {
    let rt = rt();
    let other: IpAddr = "203.0.113.5".parse().unwrap();
    let unsigned = MESSAGE;
    let run = |record: &str| {
        let v = verifier(checks());
        dmarc(&v, "example.test", record);
        rt.block_on(v.check_message(other, "client.test", "a@example.test", None, unsigned))
    };
    assert_eq!(
        run("v=DMARC1; p=quarantine").disposition,
        Disposition::Quarantine
    );
    assert_eq!(run("v=DMARC1; p=none").disposition, Disposition::Deliver);
    // A subdomain's policy comes from sp= of the organizational domain's record.
    let v = verifier(checks());
    dmarc(&v, "example.test", "v=DMARC1; p=none; sp=reject");
    nx(&v, "_dmarc.sub.example.test.");
    let sub = b"From: a@sub.example.test\r\nSubject: x\r\n\r\nbody\r\n";
    let verdict =
        rt.block_on(v.check_message(other, "client.test", "a@sub.example.test", None, sub));
    let d = verdict.dmarc.unwrap();
    assert_eq!(
        (d.result, d.policy),
        (AuthResult::Fail, DmarcPolicy::Reject)
    );
}

#[test]
fn a_dns_failure_is_a_temporary_refusal_only_under_a_reject_policy() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(checks());
    // The signature's key is not cached and the nameserver is unreachable: dkim=temperror,
    // and so DMARC (p=reject) cannot decide.
    let s = signer(&v, dir.path());
    v.caches().txt.remove("s1._domainkey.example.test.");
    dmarc(&v, "example.test", "v=DMARC1; p=reject");
    let verdict =
        rt.block_on(v.check_message(ip(), "client.test", "a@example.test", None, &signed(&s)));
    assert_eq!(
        verdict.dkim.as_ref().unwrap()[0].result,
        AuthResult::TempError
    );
    assert_eq!(
        verdict.dmarc.as_ref().unwrap().result,
        AuthResult::TempError
    );
    match &verdict.disposition {
        Disposition::TempFail(reply) => {
            assert_eq!((reply.code, reply.status), (451, "4.7.1"));
            assert!(!reply.is_permanent());
        }
        other => panic!("expected a temporary refusal, got {other:?}"),
    }
    // No DMARC record reachable at all: the policy is unknown, so the message is delivered.
    let v = verifier(checks());
    let verdict = rt.block_on(v.check_message(
        ip(),
        "client.test",
        "a@unknown.test",
        None,
        b"From: a@unknown.test\r\n\r\nx\r\n",
    ));
    assert_eq!(
        verdict.dmarc.as_ref().unwrap().result,
        AuthResult::TempError
    );
    assert_eq!(verdict.disposition, Disposition::Deliver);
}

#[test]
fn checks_that_are_off_are_not_reported() {
    let rt = rt();
    let v = verifier(ChecksConfig {
        spf: false,
        dkim: false,
        dmarc: false,
        arc: false,
        ..checks()
    });
    let verdict =
        rt.block_on(v.check_message(ip(), "client.test", "a@example.test", None, MESSAGE));
    assert_eq!(verdict.disposition, Disposition::Deliver);
    assert_eq!(
        verdict.log_fields().to_string(),
        "spf=off dkim=off dmarc=off arc=off"
    );
    assert_eq!(
        verdict.authentication_results,
        format!("Authentication-Results: {HOST}; none\r\n")
    );
}

/// Fixtures signed once by dkimpy (testdata/auth/make_fixtures.py), an independent signer.
#[test]
fn dkimpy_signatures_verify_and_an_altered_body_does_not() {
    let rt = rt();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let key = PrivateKey::load(&root.join("crates/auth/testdata/rsa-2048-pkcs1.pem")).unwrap();
    let check = |file: &str| {
        let v = verifier(ChecksConfig {
            spf: false,
            dmarc: false,
            arc: false,
            ..checks()
        });
        let record = DkimRecord::new("signer.test", "s1", &key);
        let dk = DomainKey::parse(record.value.as_bytes()).unwrap();
        txt(
            &v,
            "s1._domainkey.signer.test.",
            Txt::DomainKey(Arc::new(dk)),
        );
        let message = std::fs::read(root.join("testdata/auth").join(file)).unwrap();
        let verdict = rt.block_on(v.check_message(ip(), "client.test", "", None, &message));
        verdict.dkim.unwrap()
    };
    let good = check("dkimpy-signed.eml");
    assert_eq!(good.len(), 1);
    assert_eq!(good[0].result, AuthResult::Pass, "{good:?}");
    assert_eq!(good[0].domain, "signer.test");
    let bad = check("dkimpy-body-altered.eml");
    assert_ne!(bad[0].result, AuthResult::Pass, "{bad:?}");
}

#[test]
fn the_strip_helper_removes_a_forged_verdict_before_ours_is_added() {
    let header = format!("Authentication-Results: {HOST}; dmarc=pass\r\nFrom: a@example.test\r\n");
    let out = strip_our_authentication_results(header.as_bytes(), HOST);
    assert_eq!(out, b"From: a@example.test\r\n".to_vec());
}

/// RFC 8601 2.7.1: a message without any DKIM-Signature is `dkim=none`, in the same field as
/// the other results, and alone when it is the only check.
#[test]
fn an_unsigned_message_is_dkim_none() {
    let rt = rt();
    let v = verifier(checks());
    dmarc(&v, "example.test", "v=DMARC1; p=none");
    let verdict =
        rt.block_on(v.check_message(ip(), "client.test", "a@example.test", None, MESSAGE));
    let ar = &verdict.authentication_results;
    assert!(
        ar.starts_with(&format!("Authentication-Results: {HOST}; dkim=none;\r\n\t")),
        "{ar}"
    );
    assert!(ar.contains("dmarc=fail"), "{ar}");
    assert_eq!(verdict.log_fields().dkim, "none");
    assert_eq!(ar.matches("dkim=").count(), 1, "{ar}");

    let only_dkim = verifier(ChecksConfig {
        spf: false,
        dmarc: false,
        arc: false,
        ..checks()
    });
    let verdict = rt.block_on(only_dkim.check_message(ip(), "client.test", "", None, MESSAGE));
    assert_eq!(
        verdict.authentication_results,
        format!("Authentication-Results: {HOST}; dkim=none\r\n")
    );
    // A signed message has its signature's entry and no `none`.
    let dir = tempfile::tempdir().unwrap();
    let s = signer(&v, dir.path());
    let verdict = rt.block_on(v.check_message(ip(), "client.test", "", None, &signed(&s)));
    assert!(!verdict.authentication_results.contains("dkim=none"));
}

/// A sealer for receiver.test (the parent of HOST) whose RSA key is in `v`'s cache.
fn arc_sealer(v: &Verifier, dir: &std::path::Path) -> crate::ArcSealer {
    let key_file = dir.join("arc.pem");
    std::fs::write(&key_file, generate_key(KeyAlgorithm::Rsa2048).unwrap()).unwrap();
    let key = PrivateKey::load(&key_file).unwrap();
    let record = DkimRecord::new("receiver.test", "arc", &key);
    let dk = DomainKey::parse(record.value.as_bytes()).unwrap();
    txt(
        v,
        "arc._domainkey.receiver.test.",
        Txt::DomainKey(Arc::new(dk)),
    );
    let text = format!(
        "hostname = \"{HOST}\"\ndata_dir = {:?}\n[[dkim]]\ndomain = \"receiver.test\"\n\
         selector = \"arc\"\nkey_file = {:?}\n",
        dir.display().to_string(),
        key_file.display().to_string()
    );
    let cfg = tern_config::Config::from_toml_str(&text, std::path::Path::new("t.toml")).unwrap();
    crate::ArcSealer::from_config(&cfg).unwrap().unwrap()
}

/// Our seal validates (mail-auth's own ARC validator, the same keys in its cache), the next one
/// continues the chain with cv=pass, a changed body makes the next seal cv=fail, and after a
/// cv=fail nobody seals (RFC 8617 5.1 step 1).
#[test]
fn arc_seals_chain_pass_then_fail() {
    use crate::{NotSealed, SealedChain};
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(ChecksConfig {
        spf: false,
        ..checks()
    });
    let s = signer(&v, dir.path());
    let sealer = arc_sealer(&v, dir.path());
    dmarc(&v, "example.test", "v=DMARC1; p=reject");
    // Each hop: verify and seal, then forward (our fields in front of the message).
    let hop = |message: &[u8]| {
        let verdict = rt.block_on(v.check_message_sealed(
            ip(),
            "client.test",
            "",
            None,
            message,
            Some(&sealer),
        ));
        let seal = verdict.arc_seal.clone();
        (verdict, seal)
    };
    let first = signed(&s);
    let (verdict, seal) = hop(&first);
    assert_eq!(verdict.arc, Some(AuthResult::None));
    let seal = seal.unwrap().unwrap();
    assert_eq!((seal.instance, seal.cv), (1, SealedChain::None));
    let f = &seal.fields;
    assert!(f.starts_with("ARC-Seal: i=1;"), "{f}");
    assert!(f.contains("cv=none"), "{f}");
    assert!(f.contains("d=receiver.test") && f.contains("s=arc"), "{f}");
    // The AAR carries our Authentication-Results, results and all.
    let aar = f.split("ARC-Authentication-Results: ").nth(1).unwrap();
    let ours = verdict
        .authentication_results
        .strip_prefix("Authentication-Results: ")
        .unwrap();
    assert_eq!(aar, format!("i=1; {ours}"), "{f}");

    let second: Vec<u8> = [
        seal.fields.as_bytes(),
        verdict.authentication_results.as_bytes(),
        &first,
    ]
    .concat();
    let (verdict, seal) = hop(&second);
    assert_eq!(verdict.arc, Some(AuthResult::Pass), "{verdict:?}");
    let seal = seal.unwrap().unwrap();
    assert_eq!((seal.instance, seal.cv), (2, SealedChain::Pass));

    let mut third: Vec<u8> = [seal.fields.as_bytes(), &second].concat();
    let n = third.len();
    third[n - 4] = b'X';
    let (verdict, seal) = hop(&third);
    assert_ne!(verdict.arc, Some(AuthResult::Pass));
    // The altered body fails DKIM, so DMARC p=reject refuses it: a refused message is not
    // sealed. Delivered (DMARC off) it is sealed with cv=fail.
    assert!(matches!(verdict.disposition, Disposition::Reject(_)));
    assert_eq!(seal, None);
    let lenient = verifier(ChecksConfig {
        spf: false,
        dmarc: false,
        ..checks()
    });
    // The same keys as `v` knows.
    for name in [
        "arc._domainkey.receiver.test.",
        "s1._domainkey.example.test.",
    ] {
        let key: Box<str> = name.into();
        txt(&lenient, name, v.caches().txt.get(&key).unwrap());
    }
    let seal_with = |message: &[u8]| {
        rt.block_on(lenient.check_message_sealed(
            ip(),
            "client.test",
            "",
            None,
            message,
            Some(&sealer),
        ))
        .arc_seal
        .unwrap()
    };
    let failed = seal_with(&third).unwrap();
    assert_eq!((failed.instance, failed.cv), (3, SealedChain::Fail));
    let fourth: Vec<u8> = [failed.fields.as_bytes(), &third].concat();
    assert_eq!(seal_with(&fourth), Err(NotSealed::AlreadyFailed));
    // ARC off: nothing says what cv= would be.
    let no_arc = verifier(ChecksConfig {
        arc: false,
        ..checks()
    });
    let verdict = rt.block_on(no_arc.check_message_sealed(
        ip(),
        "client.test",
        "",
        None,
        MESSAGE,
        Some(&sealer),
    ));
    assert_eq!(verdict.arc_seal, Some(Err(NotSealed::ArcNotChecked)));
}
