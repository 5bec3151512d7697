//! Maildir tests: bytes on disk, all-or-nothing on failure, unique names under concurrency,
//! path-traversal safety of mailbox_path.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Component;

fn files(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
            v.sort();
            v
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    }
}

fn copy<'a>(mailbox: PathBuf, who: &str, body: &'a [u8]) -> MaildirCopy<'a> {
    MaildirCopy {
        mailbox,
        prefix: format!("Return-Path: <s@example.org>\r\nDelivered-To: {who}\r\n").into_bytes(),
        body: Body::Bytes(body),
    }
}

const BODY: &[u8] = b"Subject: hello\r\n\r\nHi there.\r\n";

/// What a file should hold for this CRLF text: the same with LF line ends (an independent
/// oracle: a string replace, not the writer's converter).
fn as_file(crlf: &[u8]) -> Vec<u8> {
    String::from_utf8(crlf.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes()
}

#[test]
fn each_copy_lands_in_new_with_exactly_prefix_and_body() {
    let d = tempfile::tempdir().unwrap();
    let alice = mailbox_path(d.path(), "alice", "example.org");
    let bob = mailbox_path(d.path(), "Bob", "Example.ORG");
    let copies = [
        copy(alice.clone(), "alice@example.org", BODY),
        copy(bob.clone(), "bob@example.org", BODY),
    ];
    let paths = deliver_all(&copies, "mx.example.org").unwrap();
    assert_eq!(paths.len(), 2);
    for (c, p) in copies.iter().zip(&paths) {
        assert_eq!(files(&c.mailbox.join("new")), vec![p.clone()]);
        assert!(files(&c.mailbox.join("tmp")).is_empty());
        assert!(c.mailbox.join("cur").is_dir());
        let crlf = [c.prefix.as_slice(), BODY].concat();
        let want = as_file(&crlf);
        assert_eq!(fs::read(p).unwrap(), want);
        // S= is the size on disk, W= the size with CRLF (Dovecot's virtual size).
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            name.ends_with(&format!(
                ".mx.example.org,S={},W={}",
                want.len(),
                crlf.len()
            )),
            "{name}"
        );
        assert_eq!(fs::metadata(p).unwrap().len(), want.len() as u64);
        assert_eq!(lf_to_crlf(&fs::read(p).unwrap()), crlf);
        assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
    }
    for dir in [d.path().join("mailboxes"), alice.clone(), alice.join("new")] {
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700,
            "{}",
            dir.display()
        );
    }
}

#[test]
fn a_failing_mailbox_leaves_no_file_in_any_mailbox() {
    let d = tempfile::tempdir().unwrap();
    let good = mailbox_path(d.path(), "alice", "example.org");
    // A regular file where a directory should be: ENOTDIR even as root.
    fs::write(d.path().join("blocker"), b"").unwrap();
    let bad = d.path().join("blocker").join("bob");
    let other = mailbox_path(d.path(), "carol", "example.org");
    let copies = [
        copy(good.clone(), "a", BODY),
        copy(bad.clone(), "b", BODY),
        copy(other.clone(), "c", BODY),
    ];
    let e = deliver_all(&copies, "mx").unwrap_err();
    assert_eq!(e.op(), MaildirOp::Creating);
    assert!(e.path().starts_with(&bad), "{}", e.path().display());
    assert_eq!(e.io_error().raw_os_error(), Some(libc::ENOTDIR));
    assert!(e.is_temporary(), "the admin can fix a misplaced file");
    let text = e.to_string();
    assert!(
        text.contains("Not a directory") && text.contains(" creating "),
        "{text}"
    );
    assert!(text.contains(&bad.display().to_string()), "{text}");
    for mb in [&good, &other] {
        assert!(files(&mb.join("new")).is_empty(), "{}", mb.display());
        assert!(files(&mb.join("tmp")).is_empty(), "{}", mb.display());
    }
}

#[test]
fn a_failed_rename_takes_back_the_copies_already_in_new() {
    let d = tempfile::tempdir().unwrap();
    let first = mailbox_path(d.path(), "alice", "example.org");
    let broken = mailbox_path(d.path(), "bob", "example.org");
    fs::create_dir_all(broken.join("tmp")).unwrap();
    fs::write(broken.join("new"), b"not a directory").unwrap();
    let copies = [
        copy(first.clone(), "a", BODY),
        copy(broken.clone(), "b", BODY),
    ];
    let e = deliver_all(&copies, "mx").unwrap_err();
    assert_eq!(e.op(), MaildirOp::Renaming);
    assert!(e.path().starts_with(broken.join("new")));
    assert!(files(&first.join("new")).is_empty());
    assert!(files(&first.join("tmp")).is_empty());
    assert!(files(&broken.join("tmp")).is_empty());
}

#[test]
fn a_missing_new_directory_is_recreated() {
    let d = tempfile::tempdir().unwrap();
    let mb = mailbox_path(d.path(), "alice", "example.org");
    fs::create_dir_all(mb.join("tmp")).unwrap();
    let paths = deliver_all(&[copy(mb.clone(), "a", BODY)], "mx").unwrap();
    assert_eq!(files(&mb.join("new")), paths);
    assert!(mb.join("cur").is_dir());
}

#[test]
fn no_copies_is_a_no_op() {
    assert!(deliver_all(&[], "mx").unwrap().is_empty());
}

#[test]
fn names_are_unique_across_threads() {
    let d = tempfile::tempdir().unwrap();
    let mb = mailbox_path(d.path(), "alice", "example.org");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let mb = mb.clone();
            std::thread::spawn(move || {
                let mut out = Vec::with_capacity(200);
                for i in 0..200 {
                    let body = format!("thread {t} message {i}\r\n");
                    let c = copy(mb.clone(), "alice@example.org", body.as_bytes());
                    out.extend(deliver_all(&[c], "mx.example.org").unwrap());
                }
                out
            })
        })
        .collect();
    let mut all: Vec<PathBuf> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 1600);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 1600, "two deliveries got the same name");
    assert_eq!(files(&mb.join("new")).len(), 1600);
    assert!(files(&mb.join("tmp")).is_empty());
}

#[test]
fn hostnames_cannot_break_the_file_name() {
    assert_eq!(sanitize_hostname("mx.example.org"), "mx.example.org");
    assert_eq!(sanitize_hostname("a/b:c,d\\e"), "a\\057b\\072c\\054d\\134e");
    assert_eq!(sanitize_hostname("sp ace\n"), "sp\\040ace\\012");
    assert_eq!(sanitize_hostname(""), "localhost");
    assert!(sanitize_hostname(&"x".repeat(300)).len() <= 104);
    let name = with_sizes(
        &unique_base(&sanitize_hostname(&"h".repeat(253))),
        usize::MAX,
        usize::MAX,
    );
    assert!(name.len() < 255, "{}", name.len());
}

#[test]
fn storage_errors_are_classified() {
    let err = |code| {
        MaildirError::new(
            MaildirOp::Writing,
            "/x/tmp/y",
            io::Error::from_raw_os_error(code),
        )
    };
    let full = err(libc::ENOSPC);
    assert!(full.is_temporary() && full.is_storage_full());
    assert_eq!(
        full.to_string(),
        "No space left on device (os error 28) writing /x/tmp/y"
    );
    for code in [
        libc::EIO,
        libc::EACCES,
        libc::EPERM,
        libc::EROFS,
        libc::ENOTDIR,
        libc::EDQUOT,
    ] {
        assert!(err(code).is_temporary(), "{code}");
    }
    for code in [libc::EFBIG, libc::ENAMETOOLONG] {
        assert!(!err(code).is_temporary(), "{code}");
    }
}

// ---- mailbox_path ----

/// The two components under `<data_dir>/mailboxes`, asserting nothing else is there.
fn components(data_dir: &Path, local: &str, domain: &str) -> (String, String) {
    let p = mailbox_path(data_dir, local, domain);
    let rest = p
        .strip_prefix(data_dir.join("mailboxes"))
        .expect("stays under mailboxes/");
    let parts: Vec<String> = rest
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().unwrap().to_owned(),
            other => panic!("{local:?}@{domain:?} gave {other:?}"),
        })
        .collect();
    assert_eq!(parts.len(), 2, "{local:?}@{domain:?} -> {}", p.display());
    for part in &parts {
        assert!(part != "." && part != ".." && !part.starts_with('.') && !part.is_empty());
        assert!(
            part.chars()
                .all(|c| !c.is_control() && !c.is_ascii_whitespace() && c != '/'),
            "{part:?}"
        );
    }
    (parts[0].clone(), parts[1].clone())
}

/// Inverse of escape_component, to prove no two addresses share a directory.
fn unescape(s: &str) -> Vec<u8> {
    if s == "%" {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '%' {
            out.push(u8::from_str_radix(&rest[1..3], 16).unwrap());
            rest = &rest[3..];
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[test]
fn traversal_attempts_stay_inside_the_mailbox_root() {
    let root = Path::new("/srv/tern");
    let evil = [
        "..",
        ".",
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "..\u{0}",
        "a\0b",
        "\"john..doe\"",
        "\"/\"",
        ".hidden",
        "%2e%2e",
        "",
        " ",
        "jörg",
        "\u{202E}gpj.exe",
        "a\u{85}b",
        "\u{2215}etc\u{2215}passwd",
        "\\..\\..",
    ];
    for local in evil {
        for domain in [
            "example.org",
            "..",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "",
            "a/b",
        ] {
            components(root, local, domain);
        }
    }
    assert_eq!(components(root, "..", ".."), ("%2E.".into(), "%2E.".into()));
    assert_eq!(components(root, "a/b", "x").1, "a%2Fb");
    assert_eq!(
        components(root, "", "[192.0.2.1]"),
        ("%5B192.0.2.1%5D".into(), "%".into())
    );
    // SMTPUTF8 local parts stay readable; Unicode controls (NEL) are escaped.
    assert_eq!(components(root, "Jörg", "x").1, "jörg");
    assert_eq!(components(root, "a\u{85}b", "x").1, "a%C2%85b");
    assert_eq!(components(root, "%2e%2e", "x").1, "%252e%252e");
}

#[test]
fn ascii_case_is_folded_and_nothing_else_merges() {
    let root = Path::new("/d");
    assert_eq!(
        mailbox_path(root, "Alice", "Example.ORG"),
        mailbox_path(root, "alice", "example.org")
    );
    assert_eq!(
        components(root, "First.Last+Tag=x-y_z", "example.org").1,
        "first.last+tag=x-y_z"
    );
    // Unicode case is not folded: the Kelvin sign must not reach k's mailbox.
    assert_ne!(
        mailbox_path(root, "\u{212A}", "x"),
        mailbox_path(root, "k", "x")
    );
    assert_ne!(mailbox_path(root, "Ä", "x"), mailbox_path(root, "ä", "x"));
}

proptest::proptest! {
    #[test]
    fn any_address_maps_to_one_safe_component_pair_and_round_trips(local in ".{0,40}", domain in ".{0,40}") {
        let (d, l) = components(Path::new("/d"), &local, &domain);
        proptest::prop_assert_eq!(unescape(&l), local.to_ascii_lowercase().into_bytes());
        proptest::prop_assert_eq!(unescape(&d), domain.to_ascii_lowercase().into_bytes());
    }
}

#[test]
fn staged_delivery_lands_the_same_bytes_and_leaves_no_staging_file() {
    let d = tempfile::tempdir().unwrap();
    let staging = Staging::open(&d.path().join("mailboxes").join(".staging")).unwrap();
    let alice = mailbox_path(d.path(), "alice", "example.org");
    let bob = mailbox_path(d.path(), "bob", "example.org");
    let dirs = DirSyncer::new();
    for round in 0..20 {
        let copies = [
            copy(alice.clone(), "alice@example.org", BODY),
            copy(bob.clone(), "bob@example.org", BODY),
        ];
        let paths = deliver_all_staged(&copies, "mx.example.org", &dirs, &staging).unwrap();
        for (c, p) in copies.iter().zip(&paths) {
            assert_eq!(
                fs::read(p).unwrap(),
                as_file(&[c.prefix.as_slice(), BODY].concat())
            );
            assert_eq!(files(&c.mailbox.join("new")).len(), round + 1);
            assert!(files(&c.mailbox.join("tmp")).is_empty());
        }
    }
    // Spread over the shards, and nothing left behind in any of them.
    assert_eq!(staging.shards.len(), STAGING_SHARDS);
    for shard in &staging.shards {
        assert!(files(shard).is_empty(), "{}", shard.display());
    }
}

#[test]
fn staging_open_removes_leftovers_of_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join(".staging");
    let first = Staging::open(&dir).unwrap();
    fs::write(first.shards[3].join("half-written"), b"partial").unwrap();
    drop(first);
    let again = Staging::open(&dir).unwrap();
    assert!(files(&again.shards[3]).is_empty());
}

#[test]
fn copies_with_different_bodies_each_get_their_own() {
    let d = tempfile::tempdir().unwrap();
    let other: &[u8] = b"Subject: other\r\n\r\n.line\r\nbare\rcr\r\n";
    let copies = [
        copy(
            mailbox_path(d.path(), "a", "example.org"),
            "a@example.org",
            BODY,
        ),
        copy(
            mailbox_path(d.path(), "b", "example.org"),
            "b@example.org",
            other,
        ),
        copy(
            mailbox_path(d.path(), "c", "example.org"),
            "c@example.org",
            BODY,
        ),
    ];
    let paths = deliver_all(&copies, "mx.example.org").unwrap();
    for (c, p) in copies.iter().zip(&paths) {
        assert_eq!(
            fs::read(p).unwrap(),
            as_file(&[c.prefix.as_slice(), bytes_of(c.body)].concat())
        );
    }
}

fn bytes_of(body: Body<'_>) -> &[u8] {
    match body {
        Body::Bytes(b) => b,
        Body::Spooled(_) => panic!("not in memory"),
    }
}

/// A spooled body (read and converted in 64 KiB pieces, a CRLF split across two of them)
/// gives the very file, name sizes included, that the same body from memory gives.
#[test]
fn a_spooled_body_writes_the_same_file_as_one_in_memory() {
    let d = tempfile::tempdir().unwrap();
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < SPOOL_CHUNK - 1 {
        big.push(b'x');
    }
    // The CR is the last octet of the first piece, its LF the first of the second.
    big.extend_from_slice(b"\r\n");
    big.extend_from_slice(&b"more text\r\n".repeat(10_000));
    assert_eq!(big[SPOOL_CHUNK - 1], b'\r');
    let mut file = tern_queue::SpoolFile::create(d.path()).unwrap();
    file.append(&big).unwrap();
    let spooled = file.finish().unwrap();
    let copies = [
        copy(
            mailbox_path(d.path(), "m", "example.org"),
            "m@example.org",
            &big,
        ),
        MaildirCopy {
            body: Body::Spooled(&spooled),
            ..copy(
                mailbox_path(d.path(), "s", "example.org"),
                "m@example.org",
                &[],
            )
        },
    ];
    let paths = deliver_all(&copies, "mx.example.org").unwrap();
    assert_eq!(fs::read(&paths[0]).unwrap(), fs::read(&paths[1]).unwrap());
    let size = |p: &Path| p.to_str().unwrap().split(",S=").nth(1).unwrap().to_string();
    assert_eq!(size(&paths[0]), size(&paths[1]));
}
