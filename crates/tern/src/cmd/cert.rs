//! `tern cert self-signed --host NAME`: a certificate and key for testing STARTTLS and port 465.
//! Real deployments use a CA-issued full chain (e.g. from an ACME client).

use std::path::Path;
use std::process::ExitCode;

pub fn self_signed(host: &str, out_dir: &Path) -> ExitCode {
    let cert = match generate(host) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern cert: cannot generate a certificate for {host}: {e}");
            return ExitCode::from(70);
        }
    };
    if let Err(e) = std::fs::create_dir_all(out_dir) {
        eprintln!("tern cert: cannot create {}: {e}", out_dir.display());
        return ExitCode::from(73);
    }
    let cert_path = out_dir.join("cert.pem");
    let key_path = out_dir.join("key.pem");
    if let Err(e) = std::fs::write(&cert_path, cert.cert.pem()) {
        eprintln!("tern cert: cannot write {}: {e}", cert_path.display());
        return ExitCode::from(73);
    }
    if let Err(e) = write_private(&key_path, cert.signing_key.serialize_pem().as_bytes()) {
        eprintln!("tern cert: cannot write {}: {e}", key_path.display());
        return ExitCode::from(73);
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

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
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
