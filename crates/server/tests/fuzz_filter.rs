//! Replays the committed inputs of the fuzz target `milter_draft` (fuzz/seeds/milter_draft and
//! fuzz/corpus/milter_draft) through the checks the fuzzer runs (fuzz/checks/filter.rs).

#[path = "../../../fuzz/checks/filter.rs"]
mod filter_checks;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn milter_draft_corpus() {
    replay::replay(
        env!("CARGO_MANIFEST_DIR"),
        "milter_draft",
        8,
        filter_checks::milter_draft,
    );
}
