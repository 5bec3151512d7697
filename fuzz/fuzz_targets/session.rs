//! Fuzz target `session`: client bytes into a `Session` (fuzz/checks/session.rs), shared with
//! the corpus replay in crates/server/tests/fuzz_corpus.rs.
#![no_main]

#[path = "../checks/proto.rs"]
mod proto_checks;
#[path = "../checks/session.rs"]
mod session_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    session_checks::session(data);
});
