//! Fuzz target `client_reply`: server bytes into tern-client's `Session`, with the invariants of
//! `client_checks::client_reply` (fuzz/checks/client.rs), shared with the corpus replay in
//! crates/client/tests/fuzz_corpus.rs.
#![no_main]

#[path = "../checks/client.rs"]
mod client_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| client_checks::client_reply(data));
