//! `tern dkim verify FILE`: every DKIM-Signature of a message checked as the port-25 listener
//! checks it (tern-auth's verifier, the DNS of the config or `--nameserver`), one line per
//! signature and the Authentication-Results field. Exit 0 when every signature passes, 1 when
//! one does not or there is none, 75 when the only problem was a DNS failure.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use tern_auth::AuthResult;
use tern_config::ChecksConfig;

use super::dkim::{exit, ConfigArg, Failed};
use super::verifier;

pub(crate) fn verify(
    file: &Path,
    nameserver: Option<SocketAddr>,
    config: &ConfigArg,
) -> Result<(), Failed> {
    let raw = read(file)?;
    let message = crlf(raw);
    let rt = verifier::runtime()?;
    let sigs = rt.block_on(async {
        let only_dkim = ChecksConfig {
            spf: false,
            dkim: true,
            dmarc: false,
            arc: false,
            ..tern_config::defaults::CHECKS
        };
        let v = verifier::build(nameserver, config, only_dkim)?;
        // No SMTP session here: the address and names only matter to SPF and ARC, both off.
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let verdict = v.check_message(unspecified, "", "", None, &message).await;
        let sigs = verdict.dkim.unwrap_or_default();
        for (i, s) in sigs.iter().enumerate() {
            let reason = s
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            println!(
                "signature {}: dkim={} d={} s={}{reason}",
                i + 1,
                s.result,
                s.domain,
                s.selector
            );
        }
        print!("{}", verdict.authentication_results);
        Ok::<_, Failed>(sigs)
    })?;
    if sigs.is_empty() {
        return Err(Failed(
            exit::MISMATCH,
            "the message has no DKIM-Signature".into(),
        ));
    }
    let bad = sigs.iter().filter(|s| s.result != AuthResult::Pass).count();
    if bad == 0 {
        return Ok(());
    }
    let temporary = sigs
        .iter()
        .all(|s| matches!(s.result, AuthResult::Pass | AuthResult::TempError));
    let code = if temporary {
        exit::TEMPFAIL
    } else {
        exit::MISMATCH
    };
    Err(Failed(
        code,
        format!("{bad} of {} signature(s) did not pass", sigs.len()),
    ))
}

fn read(file: &Path) -> Result<Vec<u8>, Failed> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failed(exit::NOINPUT, format!("cannot read stdin: {e}")))?;
        return Ok(buf);
    }
    std::fs::read(file).map_err(|e| {
        Failed(
            exit::NOINPUT,
            format!("cannot read {}: {e}", file.display()),
        )
    })
}

/// A file saved on Unix has LF line endings; the message as it travelled (and as it was
/// signed) had CRLF (RFC 5322 2.1). A bare LF is read as CRLF; existing CRLFs are kept.
fn crlf(raw: Vec<u8>) -> Vec<u8> {
    if !raw.contains(&b'\n') {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut prev = 0u8;
    for b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::crlf;

    #[test]
    fn bare_lf_becomes_crlf_and_crlf_stays() {
        assert_eq!(crlf(b"a\nb\r\nc\n".to_vec()), b"a\r\nb\r\nc\r\n".to_vec());
        assert_eq!(crlf(b"abc".to_vec()), b"abc".to_vec());
    }
}
