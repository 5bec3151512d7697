//! Reading the files a config names (certificates, keys, secrets, passwords, the config itself)
//! with a size bound: a path such as `/dev/zero` or a log file named by mistake must give an
//! error naming the file, not read until memory runs out.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest file tern reads for a key, certificate, secret or password: a PEM chain of a
/// dozen certificates is well under 100 KiB.
pub const MAX_SMALL_FILE: u64 = 1024 * 1024;

/// The largest config file.
pub const MAX_CONFIG_FILE: u64 = 4 * 1024 * 1024;

/// Reads all of `path` if it holds at most `max` bytes; otherwise `FileTooLarge`.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(out)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_string(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_and_a_small_one_read() {
        let e = read_bounded(Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(read_bounded(&p, 3).unwrap(), b"abc");
        assert!(read_bounded(&p, 2).is_err());
    }
}
