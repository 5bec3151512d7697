//! Replays the committed inputs of the fuzz target `milter_response` (fuzz/seeds/milter_response
//! and fuzz/corpus/milter_response) through the same checks the fuzzer runs
//! (fuzz/checks/milter.rs), so every kept input stays a regression test in `cargo test`.

#[path = "../../../fuzz/checks/milter.rs"]
mod milter_checks;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn milter_response_corpus() {
    replay::replay(
        env!("CARGO_MANIFEST_DIR"),
        "milter_response",
        10,
        milter_checks::milter_response,
    );
}

/// The seeds reach what they are named for, so the replay is not vacuous: every modification
/// of the end-of-message seed decodes, a reply code with CR LF is refused, an oversize length
/// stops the stream before its payload.
#[test]
fn seeds_reach_their_outcomes() {
    use tern_milter::{PacketError, ReplyCodeError, Response, ResponseError};
    let seed = |name: &str| {
        let path = format!(
            "{}/../../fuzz/seeds/milter_response/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let data = std::fs::read(&path).expect("seed readable");
        milter_checks::read(&data[1..], data[0])
    };

    let (responses, failed) = seed("eom-modifications");
    assert_eq!(failed, None);
    assert_eq!(responses.len(), 11);
    assert!(responses.iter().all(Result::is_ok), "{responses:?}");
    assert_eq!(responses.last(), Some(&Ok(Response::Accept)));

    let (responses, _) = seed("replycode-crlf");
    assert_eq!(
        responses,
        [Err(ResponseError::ReplyCode(ReplyCodeError::LineBreak))]
    );

    let (responses, failed) = seed("oversize");
    assert!(responses.is_empty());
    assert!(matches!(failed, Some(PacketError::TooLarge { .. })));

    let (responses, failed) = seed("zero-length");
    assert_eq!(responses, [Ok(Response::Continue)]);
    assert_eq!(failed, Some(PacketError::ZeroLength));
}
