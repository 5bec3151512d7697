//! Replays the committed inputs of the fuzz target `config` (fuzz/seeds/config and
//! fuzz/corpus/config) through the same checks the fuzzer runs (fuzz/checks/config.rs).

#[path = "../../../fuzz/checks/config.rs"]
mod config_checks;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn config_corpus() {
    replay::replay(
        env!("CARGO_MANIFEST_DIR"),
        "config",
        5,
        config_checks::config,
    );
}
