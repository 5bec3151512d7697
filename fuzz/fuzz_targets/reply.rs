//! Fuzz target `reply`: the invariants of `proto_checks::reply` (fuzz/checks/proto.rs), shared
//! with the corpus replay in crates/proto/tests/fuzz_corpus.rs.
#![no_main]

#[path = "../checks/proto.rs"]
mod proto_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_checks::reply(data));
