//! The admin router over a real socket: auth, status codes and queue changes, with a real
//! filesystem spool.

// Test code: a failed unwrap is a failed test (the helpers are not `#[test]` functions).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use tern_admin::AdminState;
use tern_config::{Config, LiveConfig};
use tern_queue::{Envelope, FsStore, QueueId, QueueStore, Recipient, RecipientStatus, StoredReply};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

struct Admin {
    addr: std::net::SocketAddr,
    store: Arc<dyn QueueStore>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start() -> Admin {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let text = format!(
        "data_dir = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
        dir.path().display().to_string(),
        token.display().to_string()
    );
    let cfg = Arc::new(Config::from_toml_str(&text, std::path::Path::new("t.toml")).unwrap());
    let store: Arc<dyn QueueStore> = Arc::new(FsStore::open(dir.path()).unwrap());
    let listener = tern_admin::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AdminState::new(LiveConfig::new(cfg), store.clone(), None, None);
    let stop = CancellationToken::new();
    tokio::spawn(tern_admin::serve(listener, state, stop.clone()));
    Admin {
        addr,
        store,
        stop,
        _dir: dir,
    }
}

/// (status, headers, body) of one HTTP/1.1 request.
async fn request(
    a: &Admin,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn deferred_entry(domain: &str) -> Envelope {
    Envelope::new(
        QueueId::generate(),
        Some("alice@example.test".into()),
        vec![Recipient {
            dsn: Default::default(),
            address: format!("bob@{domain}"),
            original: None,
            status: RecipientStatus::Deferred {
                attempts: 1,
                last_reply: StoredReply::from_legacy("451 4.7.0 try later"),
                next_attempt: SystemTime::now() + Duration::from_secs(3600),
            },
        }],
        SystemTime::now(),
        20,
    )
}

#[tokio::test]
async fn the_token_guards_the_api_and_not_the_page() {
    let a = start().await;
    let (status, head, body) = request(&a, "GET", "/api/health", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    assert!(body.contains("\"error\""));
    assert_eq!(
        request(&a, "GET", "/api/health", Some("wrong-token-wrong-token"))
            .await
            .0,
        403
    );
    assert_eq!(request(&a, "GET", "/metrics", None).await.0, 401);
    let (status, _, body) = request(&a, "GET", "/api/health", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["queue_messages"], 0);
    // The console's files hold no data: no token needed.
    let (status, head, _) = request(&a, "GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("text/html"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy"),
        "{head}"
    );
    // Unknown path and wrong method.
    assert_eq!(request(&a, "GET", "/nope", Some(TOKEN)).await.0, 404);
    assert_eq!(request(&a, "PUT", "/api/health", Some(TOKEN)).await.0, 405);
    a.stop.cancel();
}

#[tokio::test]
async fn queue_changes_through_the_api() {
    let a = start().await;
    let one = deferred_entry("gmail.com");
    let two = deferred_entry("outlook.com");
    a.store.commit(&one, b"Subject: one\r\n\r\nx\r\n").unwrap();
    a.store.commit(&two, b"Subject: two\r\n\r\nx\r\n").unwrap();

    let (status, _, body) = request(&a, "GET", "/api/queue?domain=gmail.com", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"], 1);
    assert_eq!(v["entries"][0]["id"], one.id.to_string());
    assert_eq!(v["entries"][0]["status"], "deferred");
    assert_eq!(
        request(&a, "GET", "/api/queue?status=bogus", Some(TOKEN))
            .await
            .0,
        400
    );

    let path = format!("/api/queue/{}/hold", one.id);
    let (status, _, body) = request(&a, "POST", &path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"result\":\"held\""), "{body}");
    assert!(a.store.load(&one.id).unwrap().held);

    let (status, _, body) =
        request(&a, "GET", &format!("/api/queue/{}", one.id), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let events: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"held"), "{events:?}");
    assert!(v["headers"].as_str().unwrap().contains("Subject: one"));

    // Busy while the relay (here: this test) holds the entry's lock.
    let lock = a.store.lock(&two.id).unwrap().unwrap();
    let (status, _, _) =
        request(&a, "DELETE", &format!("/api/queue/{}", two.id), Some(TOKEN)).await;
    assert_eq!(status, 409);
    drop(lock);

    assert_eq!(
        request(&a, "POST", "/api/queue/delete", Some(TOKEN))
            .await
            .0,
        400,
        "bulk needs a filter"
    );
    let (status, _, body) = request(
        &a,
        "POST",
        "/api/queue/delete?domain=outlook.com",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["matched"].as_u64(), v["done"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(a.store.load(&two.id).is_err());
    let (status, _, _) = request(&a, "GET", &format!("/api/queue/{}", two.id), Some(TOKEN)).await;
    assert_eq!(status, 404);
    assert_eq!(
        request(&a, "POST", "/api/queue/x/explode", Some(TOKEN))
            .await
            .0,
        404
    );
    a.stop.cancel();
}
