//! `tern cert self-signed --host NAME`: a certificate and key for testing STARTTLS and port 465.
//! Real deployments use a CA-issued full chain (e.g. from an ACME client).

use std::path::Path;
use std::process::ExitCode;

pub fn self_signed(host: &str, out_dir: &Path) -> ExitCode {
    let cert = match rcgen::generate_simple_self_signed(vec![host.to_string()]) {
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
