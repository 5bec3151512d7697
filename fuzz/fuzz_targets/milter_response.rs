//! Fuzz target `milter_response`: the invariants of `milter_checks::milter_response`
//! (fuzz/checks/milter.rs), shared with the corpus replay in crates/milter/tests/fuzz_corpus.rs.
#![no_main]

#[path = "../checks/milter.rs"]
mod milter_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| milter_checks::milter_response(data));
