use super::*;
use std::time::Duration;
use tern_queue::{Attempt, FsStore, Recipient};

fn deferred(a: &str, next: SystemTime) -> Recipient {
    Recipient {
        dsn: Default::default(),
        address: a.into(),
        original: None,
        status: RecipientStatus::Deferred {
            attempts: 1,
            last_reply: StoredReply::from_legacy("451 4.7.1 greylisted"),
            next_attempt: next,
        },
    }
}

fn envelope(recipients: Vec<Recipient>) -> Envelope {
    Envelope {
        client_ip: Some("192.0.2.7".parse().unwrap()),
        helo: Some("client.test".into()),
        ..Envelope::new(
            QueueId::generate(),
            Some("alice@example.test".into()),
            recipients,
            SystemTime::now() - Duration::from_secs(60),
            0,
        )
    }
}

#[test]
fn flush_only_touches_deferred_recipients_of_the_domain() {
    let now = SystemTime::now();
    let later = now + Duration::from_secs(3600);
    let mut env = envelope(vec![
        deferred("a@One.test", later),
        deferred("b@two.test", later),
        Recipient {
            dsn: Default::default(),
            address: "c@one.test".into(),
            original: None,
            status: RecipientStatus::Pending,
        },
    ]);
    assert_eq!(flush_recipients(&mut env, Some("one.test"), now), 1);
    assert_eq!(flush_recipients(&mut env, Some("one.test."), now), 0);
    assert_eq!(flush_recipients(&mut env, None, now), 1);
    assert_eq!(env.recipients[2].status, RecipientStatus::Pending);
}

#[test]
fn filters_select_by_status_domain_and_sender() {
    let later = SystemTime::now() + Duration::from_secs(600);
    let mut env = envelope(vec![deferred("x@gmail.com", later)]);
    let by = |status: Option<EntryStatus>, domain: Option<&str>, sender: Option<&str>| Filter {
        status,
        domain: domain.map(str::to_string),
        sender: sender.map(str::to_string),
    };
    assert!(Filter::default().matches(&env));
    assert!(by(Some(EntryStatus::Deferred), None, None).matches(&env));
    assert!(!by(Some(EntryStatus::Pending), None, None).matches(&env));
    assert!(by(None, Some("GMAIL.com"), None).matches(&env));
    assert!(!by(None, Some("outlook.com"), None).matches(&env));
    assert!(by(None, None, Some("Alice@example.test")).matches(&env));
    assert!(!by(None, None, Some("")).matches(&env));
    env.held = true;
    assert_eq!(EntryStatus::of(&env), EntryStatus::Held);
    assert!(!by(Some(EntryStatus::Deferred), None, None).matches(&env));
}

#[test]
fn the_timeline_tells_the_story_in_order() {
    let t0 = SystemTime::now() - Duration::from_secs(600);
    let mut env = envelope(vec![deferred(
        "bob@gmail.com",
        t0 + Duration::from_secs(900),
    )]);
    env.received_at = t0;
    env.events.push(Event::Received {
        at: t0,
        listener: "submission".into(),
        client_ip: Some("192.0.2.7".parse().unwrap()),
        helo: Some("laptop".into()),
        tls: Some("TLSv1_3 TLS13_AES_128_GCM_SHA256".into()),
        auth: Some("alice".into()),
        checks: None,
    });
    env.log_attempt(Attempt {
        at: t0 + Duration::from_secs(5),
        recipient: "bob@gmail.com".into(),
        host: Some("gmail-smtp-in.l.google.com".into()),
        reply: StoredReply::from_legacy("451 4.7.28 rate limited"),
        tls: None,
    });
    env.events.push(Event::Held {
        at: t0 + Duration::from_secs(10),
        by: "admin API".into(),
    });
    let steps = timeline(&env);
    let events: Vec<&str> = steps
        .iter()
        .map(|s| s.json["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["received", "queued", "attempt", "held", "deferred"]
    );
    assert!(
        steps[0].text.contains("authenticated as alice"),
        "{}",
        steps[0].text
    );
    assert!(steps[0].text.contains("TLSv1_3"), "{}", steps[0].text);
    assert!(steps[2].text.contains("gmail-smtp-in.l.google.com"));
    assert!(steps[2].text.contains("451 4.7.28"));
    assert_eq!(steps[2].json["outcome"], "deferred");
}

#[test]
fn an_old_envelope_without_events_still_has_a_timeline() {
    let env = envelope(vec![deferred("b@x.test", SystemTime::now())]);
    let steps = timeline(&env);
    assert_eq!(steps[0].json["event"], "received");
    assert!(steps[0].text.contains("client.test [192.0.2.7]"));
}

#[test]
fn actions_on_a_real_spool() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("data_dir = {:?}\n", dir.path().display().to_string());
    let cfg = Arc::new(Config::from_toml_str(&text, std::path::Path::new("t.toml")).unwrap());
    let store: Arc<dyn QueueStore> = Arc::new(FsStore::open(dir.path()).unwrap());
    let later = SystemTime::now() + Duration::from_secs(3600);
    let a = envelope(vec![deferred("a@one.test", later)]);
    let b = envelope(vec![deferred("b@two.test", later)]);
    store.commit(&a, b"Subject: a\r\n\r\nx\r\n").unwrap();
    store.commit(&b, b"Subject: b\r\n\r\nx\r\n").unwrap();
    let q = Queue::with_store(cfg, store.clone());

    let report = q
        .bulk(
            Action::Hold,
            &Filter {
                domain: Some("one.test".into()),
                ..Filter::default()
            },
            &|_, _| {},
        )
        .unwrap();
    assert_eq!((report.matched, report.done), (1, 1));
    let a2 = q.load(a.id.as_ref()).unwrap();
    assert!(a2.held);
    assert!(matches!(a2.events.events()[0], Event::Held { .. }));
    assert!(!q.load(b.id.as_ref()).unwrap().held);

    let done = q.act(Action::Hold, a.id.as_ref()).unwrap();
    assert_eq!(done.result, "unchanged");
    let done = q.act(Action::Flush, a.id.as_ref()).unwrap();
    assert_eq!(done.result, "unchanged", "a held entry is not flushed");
    let done = q.act(Action::Flush, b.id.as_ref()).unwrap();
    assert_eq!(done.result, "flushed");

    // Busy while someone else holds the lock.
    let lock = store.lock(&b.id).unwrap().unwrap();
    assert!(matches!(
        q.act(Action::Delete, b.id.as_ref()),
        Err(OpError::Busy(_))
    ));
    drop(lock);
    assert_eq!(
        q.act(Action::Delete, b.id.as_ref()).unwrap().result,
        "deleted"
    );
    assert!(matches!(
        q.load(b.id.as_ref()),
        Err(OpError::NoSuchEntry(_))
    ));
    assert!(matches!(q.load("nonsense"), Err(OpError::NoSuchEntry(_))));
    let (all, problems) = q.list(&Filter::default()).unwrap();
    assert_eq!(all.len(), 1);
    assert!(problems.is_empty());
}
