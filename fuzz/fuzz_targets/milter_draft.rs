//! Fuzz target `milter_draft`: the invariants of `filter_checks::milter_draft`
//! (fuzz/checks/filter.rs), shared with the corpus replay in crates/server/tests/fuzz_filter.rs.
#![no_main]

#[path = "../checks/filter.rs"]
mod filter_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| filter_checks::milter_draft(data));
