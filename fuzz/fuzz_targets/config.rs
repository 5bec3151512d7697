//! Fuzz target `config`: arbitrary bytes as a TOML file into `Config::from_toml_str`, with the
//! invariants of `config_checks::config` (fuzz/checks/config.rs), shared with the corpus replay
//! in crates/config/tests/fuzz_corpus.rs.
#![no_main]

#[path = "../checks/config.rs"]
mod config_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| config_checks::config(data));
