//! `tern cert self-signed --host NAME`: a certificate and key for testing STARTTLS and port 465.
//! Real deployments use a CA-issued full chain (e.g. from an ACME client).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

/// EX_CANTCREAT (sysexits.h): an output file cannot be created.
const EX_CANTCREAT: u8 = 73;

/// Writes `cert.pem` (0644) and `key.pem` (0600) into `out_dir`. Neither file is ever written
/// through: each is created with `O_CREAT | O_EXCL` (`create_new`), which also refuses a
/// symlink, even a dangling one, so a link planted at `key.pem` cannot make tern overwrite or
/// disclose the file it points to. With `force`, an existing entry is unlinked first (the link
/// itself, never its target) and then created exclusively all the same.
pub fn self_signed(host: &str, out_dir: &Path, force: bool) -> ExitCode {
    let cert = match generate(host) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern cert: cannot generate a certificate for {host}: {e}");
            return ExitCode::from(70);
        }
    };
    if let Err(e) = std::fs::create_dir_all(out_dir) {
        eprintln!("tern cert: cannot create {}: {e}", out_dir.display());
        return ExitCode::from(EX_CANTCREAT);
    }
    let cert_path = out_dir.join("cert.pem");
    let key_path = out_dir.join("key.pem");
    // Refuse before writing either file, so a refusal leaves no half-written pair behind.
    if !force {
        for path in [&cert_path, &key_path] {
            if path.symlink_metadata().is_ok() {
                eprintln!(
                    "tern cert: {} already exists; not overwritten (pass --force to replace it)",
                    path.display()
                );
                return ExitCode::from(EX_CANTCREAT);
            }
        }
    }
    let files = [
        (&cert_path, cert.cert.pem().into_bytes(), 0o644),
        (
            &key_path,
            cert.signing_key.serialize_pem().into_bytes(),
            0o600,
        ),
    ];
    for (path, data, mode) in files {
        if let Err(e) = write_exclusive(path, &data, mode, force) {
            let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (it appeared meanwhile; not overwritten)"
            } else {
                ""
            };
            eprintln!("tern cert: cannot write {}: {e}{hint}", path.display());
            return ExitCode::from(EX_CANTCREAT);
        }
    }
    println!(
        "wrote {} and {} (self-signed for {host})",
        cert_path.display(),
        key_path.display()
    );
    println!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"",
        cert_path.display(),
        key_path.display()
    );
    ExitCode::SUCCESS
}

/// Creates `path` anew with `mode` and writes `data`, fsync'd. `replace` unlinks whatever is
/// there first (a symlink is removed as a link); the create stays exclusive either way, so a
/// file or link that reappears in between is an error, never written through.
fn write_exclusive(path: &Path, data: &[u8], mode: u32, replace: bool) -> std::io::Result<()> {
    if replace {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn generate(host: &str) -> Result<rcgen::CertifiedKey<rcgen::KeyPair>, rcgen::Error> {
    let signing_key = rcgen::KeyPair::generate()?;
    let cert = params(host)?.self_signed(&signing_key)?;
    Ok(rcgen::CertifiedKey { cert, signing_key })
}

/// The host goes in the subjectAltName, which is what clients match (RFC 6125 6.4.4), and in
/// the subject CN too: that is what `openssl s_client`, mail logs and humans look at (rcgen's
/// default subject is a fixed placeholder).
fn params(host: &str) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, host);
    params.distinguished_name = subject;
    Ok(params)
}

#[cfg(test)]
mod tests {
    #[test]
    fn subject_and_san_name_the_host() {
        let params = super::params("mx.tern.test").unwrap();
        assert_eq!(
            params
                .distinguished_name
                .get(&rcgen::DnType::CommonName)
                .cloned(),
            Some(rcgen::DnValue::Utf8String("mx.tern.test".into()))
        );
        assert!(matches!(
            params.subject_alt_names.as_slice(),
            [rcgen::SanType::DnsName(n)] if n.as_str() == "mx.tern.test"
        ));
        assert!(super::generate("mx.tern.test").is_ok());
    }
}
