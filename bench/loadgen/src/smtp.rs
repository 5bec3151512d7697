//! Minimal SMTP client for load generation: one command at a time (no PIPELINING, like smtp-source),
//! every read bounded by a timeout.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Longest reply line we accept (RFC 5321 4.5.3.1.5 allows 512 octets; be generous).
const MAX_LINE: usize = 4096;
/// Most continuation lines in one reply (EHLO lists a dozen capabilities at most).
const MAX_LINES: usize = 100;
/// A message up to this size (with its final ".") goes out in one write. smtp-source does the
/// same: it writes into its stream buffer and flushes once before it reads the reply.
const ONE_WRITE: usize = 64 * 1024;

/// One connected SMTP client.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    line: String,
    /// Reused for the one write of a small message.
    out: Vec<u8>,
}

impl Client {
    /// Connects and returns the client together with the greeting's code.
    pub async fn connect(server: &str, limit: Duration) -> Result<(Client, u16)> {
        let stream = timeout(limit, TcpStream::connect(server))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {server}"))?;
        // The final "." is a tiny write after the body: without NODELAY, Nagle would hold it back
        // until the body is acknowledged, adding delay that is the client's, not the server's.
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut c = Client {
            reader: BufReader::new(r),
            writer: w,
            timeout: limit,
            line: String::new(),
            out: Vec::new(),
        };
        let code = c.reply().await.context("greeting")?;
        Ok((c, code))
    }

    /// Reads one (possibly multi-line) reply and returns its code (RFC 5321 4.2.1).
    pub async fn reply(&mut self) -> Result<u16> {
        for _ in 0..MAX_LINES {
            self.line.clear();
            let n = timeout(
                self.timeout,
                (&mut self.reader)
                    .take(MAX_LINE as u64)
                    .read_line(&mut self.line),
            )
            .await
            .context("reply timed out")??;
            if n == 0 {
                bail!("connection closed by server");
            }
            let bytes = self.line.as_bytes();
            if bytes.len() < 4 {
                // "250\r\n" is a valid last line with no text.
                if bytes.len() >= 3 {
                    return parse_code(&bytes[..3]);
                }
                bail!("short reply line {:?}", self.line);
            }
            let code = parse_code(&bytes[..3])?;
            if bytes[3] != b'-' {
                return Ok(code);
            }
        }
        bail!("reply longer than {MAX_LINES} lines")
    }

    /// Sends one command line (CRLF is appended) and reads its reply code.
    pub async fn command(&mut self, cmd: &str) -> Result<u16> {
        self.send(format!("{cmd}\r\n").as_bytes()).await?;
        self.reply()
            .await
            .with_context(|| format!("reply to {cmd}"))
    }

    /// Writes raw bytes, bounded by the timeout.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        timeout(self.timeout, self.writer.write_all(bytes))
            .await
            .context("write timed out")??;
        Ok(())
    }

    /// Sends a message on an open session (after EHLO) and returns the time from writing the final
    /// "." (for a small message: the one write that ends with it) to reading the reply to it. Errors when any step is refused.
    pub async fn transaction(
        &mut self,
        from: &str,
        rcpts: &[String],
        content: &[&[u8]],
    ) -> Result<Duration> {
        expect(
            self.command(&format!("MAIL FROM:<{from}>")).await?,
            250,
            "MAIL",
        )?;
        for r in rcpts {
            expect(self.command(&format!("RCPT TO:<{r}>")).await?, 250, "RCPT")?;
        }
        expect(self.command("DATA").await?, 354, "DATA")?;
        let t0 = if content.iter().map(|p| p.len()).sum::<usize>() + 3 <= ONE_WRITE {
            // One system call instead of one per part: the client's CPU per message is part of
            // every server's figure on a machine with few cores. The clock starts before the
            // write; for a message this small the write only copies into the socket buffer.
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            for part in content {
                out.extend_from_slice(part);
            }
            out.extend_from_slice(b".\r\n");
            let t0 = Instant::now();
            let sent = self.send(&out).await;
            self.out = out;
            sent?;
            t0
        } else {
            for part in content {
                self.send(part).await?;
            }
            let t0 = Instant::now();
            self.send(b".\r\n").await?;
            t0
        };
        let code = self.reply().await.context("reply to final dot")?;
        let took = t0.elapsed();
        expect(code, 250, "final dot")?;
        Ok(took)
    }

    /// Polite end of session; errors are irrelevant to the measurement. After QUIT the client
    /// has nothing more to say, so it half-closes (FIN) before reading the 221, as a client that
    /// is done may (RFC 5321 4.1.1.10: the server closes after its reply). This matters for the
    /// comparison: Exim 4.96 holds its 221 for up to 200 ms waiting for the client's FIN, so a
    /// client that waits for the 221 first (smtp-source) is capped at ~5 messages per second and
    /// session by that pause, not by Exim; Postfix's own SMTP client does not even wait for the
    /// 221 (`smtp_skip_quit_response = yes`, its default).
    pub async fn quit(mut self) {
        if self.send(b"QUIT\r\n").await.is_err() {
            return;
        }
        let _ = timeout(self.timeout, self.writer.shutdown()).await;
        let _ = self.reply().await;
    }
}

fn parse_code(b: &[u8]) -> Result<u16> {
    if b.len() == 3 && b.iter().all(u8::is_ascii_digit) {
        Ok(b.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')))
    } else {
        bail!("malformed reply code {:?}", String::from_utf8_lossy(b))
    }
}

/// Fails unless `code` is the expected one.
pub fn expect(code: u16, want: u16, what: &str) -> Result<()> {
    if code == want {
        Ok(())
    } else {
        bail!("{what}: got {code}, want {want}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn codes_parse() {
        assert_eq!(parse_code(b"250").unwrap(), 250);
        assert!(parse_code(b"25x").is_err());
        assert!(parse_code(b"25").is_err());
    }

    /// A scripted server: reads the client's bytes and answers each line as a real server would.
    /// Returns what the client sent between DATA and the end of the final ".".
    async fn transaction_against_scripted_server(content: &[&[u8]]) -> Vec<u8> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"220 test ESMTP\r\n").await.unwrap();
            let mut line = String::new();
            let mut data = Vec::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                let reply: &[u8] = match line.as_str() {
                    l if l.starts_with("EHLO") => b"250-test\r\n250 PIPELINING\r\n",
                    l if l.starts_with("MAIL") || l.starts_with("RCPT") => b"250 2.1.0 ok\r\n",
                    "DATA\r\n" => {
                        w.write_all(b"354 go\r\n").await.unwrap();
                        // Read to the terminating dot.
                        let mut buf = [0u8; 1];
                        while !data.ends_with(b"\r\n.\r\n") {
                            r.read_exact(&mut buf).await.unwrap();
                            data.push(buf[0]);
                        }
                        b"250 2.0.0 queued\r\n"
                    }
                    "QUIT\r\n" => {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        break;
                    }
                    _ => b"500 what\r\n",
                };
                w.write_all(reply).await.unwrap();
            }
            data
        });
        let (mut c, code) = Client::connect(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(code, 220);
        assert_eq!(c.command("EHLO client.test").await.unwrap(), 250);
        let rcpts = vec!["a@x.test".to_string(), "b@x.test".to_string()];
        c.transaction("s@y.test", &rcpts, content).await.unwrap();
        assert_eq!(c.command("NOOP").await.unwrap(), 500);
        c.quit().await;
        server.await.unwrap()
    }

    #[tokio::test]
    async fn a_small_message_goes_out_whole() {
        let data =
            transaction_against_scripted_server(&[b"Subject: t\r\n\r\n", b"hello\r\n"]).await;
        assert_eq!(data, b"Subject: t\r\n\r\nhello\r\n.\r\n");
    }

    /// Over ONE_WRITE the parts go out one by one, then the dot: the same bytes.
    #[tokio::test]
    async fn a_large_message_goes_out_in_parts() {
        let body = crate::message::body(ONE_WRITE);
        let data = transaction_against_scripted_server(&[b"Subject: t\r\n\r\n", &body]).await;
        assert_eq!(data.len(), 14 + ONE_WRITE + 3);
        assert!(data.starts_with(b"Subject: t\r\n\r\nabc"));
        assert!(data.ends_with(b"\r\n.\r\n"));
    }
}
