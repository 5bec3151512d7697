//! Replays the committed inputs of the fuzz target `client_reply` (fuzz/seeds/client_reply and
//! fuzz/corpus/client_reply) through the same checks the fuzzer runs (fuzz/checks/client.rs).

#[path = "../../../fuzz/checks/client.rs"]
mod client_checks;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn client_reply_corpus() {
    replay::replay(
        env!("CARGO_MANIFEST_DIR"),
        "client_reply",
        5,
        client_checks::client_reply,
    );
}

/// The seeds go where their names say: a delivered message was sent whole, with QUIT after it;
/// AUTH only where the server offered it; nothing after a refused greeting but QUIT.
#[test]
fn seeds_reach_their_stage() {
    let seed = |name: &str| {
        let path = format!(
            "{}/../../fuzz/seeds/client_reply/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        String::from_utf8_lossy(&client_checks::run(&input)).into_owned()
    };
    for name in ["lockstep-delivered", "pipelined-delivered"] {
        let wire = seed(name);
        assert!(
            wire.contains("\r\n..leading dot\r\n.\r\n"),
            "{name}: {wire}"
        );
        assert!(wire.ends_with("QUIT\r\n"), "{name}: {wire}");
    }
    assert!(seed("auth-plain").contains("AUTH PLAIN "));
    assert!(seed("helo-fallback").contains("HELO client.test\r\n"));
    assert_eq!(seed("banner-554"), "QUIT\r\n");
    assert_eq!(seed("banner-421"), "");
}
