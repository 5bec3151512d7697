//! `tern passwd`: read a password on stdin and print its argon2id hash for `[[users]] password`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

pub fn run() -> ExitCode {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (input is shown; pipe it in to avoid that): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    if let Err(e) = stdin.lock().read_line(&mut line) {
        eprintln!("tern passwd: cannot read the password from stdin: {e}");
        return ExitCode::from(66);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("tern passwd: empty password (give it on stdin, e.g. `printf '%s' \"$PW\" | tern passwd`)");
        return ExitCode::from(64);
    }
    match tern_server::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern passwd: hashing failed: {e}");
            ExitCode::from(70)
        }
    }
}
