//! The local Maildirs, listed and read: the console's mail viewer (Mailpit-like).
//!
//! Layout (docs/spool-format.md, `tern_delivery::maildir`): a mailbox is
//! `<data_dir>/mailboxes/<escaped domain>/<escaped local part>/` with `new/`, `cur/` and `tmp/`
//! (https://cr.yp.to/proto/maildir.html), plus Maildir++ folders such as `.Junk/` inside it, each a
//! Maildir of its own. Only `new/` and `cur/` hold messages; `tmp/` holds deliveries in progress
//! and is never read.
//!
//! A message's id is its Maildir unique name, the file name up to the `:` that starts its flags
//! (a mail reader moves `new/x` to `cur/x:2,S` when it reads it; the id stays the same), with
//! `<folder>/` in front for a Maildir++ folder: `1700000000.M1P2Q3R4.mx,S=5,W=6` or
//! `.Junk/1700000000.M1P2Q3R4.mx,S=5,W=6`. An id with any other `/`, a `..`, a NUL, or a name
//! starting with `.` is refused ([`MailboxError::BadId`]) before any path is built, and no
//! symbolic link is followed: a file or directory that is a link is treated as absent, so nothing
//! outside the mailbox is ever read.
//!
//! Everything is bounded: the number of directory entries looked at, the bytes of a header
//! section parsed for a list, the size of a message shown and of its text and HTML bodies.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use mail_parser::{Address, MessageParser, MimeHeaders};
use serde::Serialize;

use tern_delivery::maildir::{escape_component, mailbox_path, unescape_component};

/// Directory entries looked at per directory (mailboxes of a domain, messages of a folder).
pub const MAX_ENTRIES: usize = 100_000;
/// Maildir++ folders looked at per mailbox.
pub const MAX_FOLDERS: usize = 200;
/// Bytes of a message read to parse its header section for a list.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Messages per page at most.
pub const MAX_PAGE: usize = 500;
/// Larger messages are not parsed for viewing (the raw download still works).
pub const MAX_VIEW_BYTES: u64 = 50 * 1024 * 1024;
/// Text and HTML bodies are cut to this many bytes when shown.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Header fields shown per message.
pub const MAX_HEADERS: usize = 1000;
/// Attachments listed per message.
pub const MAX_ATTACHMENTS: usize = 1000;

/// The folder name of the inbox (the mailbox root) in ids and outputs (RFC 3501 5.1: `INBOX`).
pub const INBOX: &str = "INBOX";

/// Why a mailbox or message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("no such {what}: {name}")]
    NotFound { what: &'static str, name: String },
    #[error("bad {what} {name:?}: {why}")]
    BadId {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("{error} ({context})")]
    Io { context: String, error: io::Error },
}

impl From<io::Error> for MailboxError {
    fn from(error: io::Error) -> Self {
        MailboxError::Io {
            context: "reading a local mailbox".into(),
            error,
        }
    }
}

fn io_at(path: &Path, error: io::Error) -> MailboxError {
    MailboxError::Io {
        context: format!("reading {}", path.display()),
        error,
    }
}

/// One mailbox in the list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MailboxSummary {
    pub address: String,
    /// Messages in every folder (inbox and Maildir++ folders).
    pub messages: usize,
    /// Messages not read yet: in `new/`, or in `cur/` without the `S` (seen) flag.
    pub unseen: usize,
    /// Messages in `.Junk/`.
    pub junk: usize,
    /// Bytes of all messages.
    pub size: u64,
}

/// One message in a list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MessageSummary {
    pub id: String,
    /// `INBOX`, `Junk`, or another Maildir++ folder's name without its dot.
    pub folder: String,
    pub subject: String,
    pub from: String,
    pub to: String,
    /// RFC 3339: the Date header, else when the file was written.
    pub date: String,
    pub size: u64,
    pub seen: bool,
}

/// A page of a mailbox's messages, newest first.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MessagesPage {
    pub address: String,
    pub total: usize,
    pub offset: usize,
    pub messages: Vec<MessageSummary>,
}

/// An attachment, listed (its bytes are in the raw message).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub size: usize,
}

/// One message, parsed for viewing. `text` and `html` are the decoded bodies, cut at
/// [`MAX_BODY_BYTES`] (then `truncated` is set); the HTML is a stranger's and must only be
/// shown sandboxed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MessageView {
    pub id: String,
    pub folder: String,
    pub subject: String,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub date: String,
    pub headers: Vec<[String; 2]>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub truncated: bool,
    pub attachments: Vec<Attachment>,
    pub size: u64,
    pub seen: bool,
}

/// Whether `path` is a real directory (not a link to one).
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The entries of `dir` (at most [`MAX_ENTRIES`]); a missing directory has none.
fn entries(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let iter = match fs::read_dir(dir) {
        Ok(iter) => iter,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in iter.take(MAX_ENTRIES) {
        out.push(entry?);
    }
    Ok(out)
}

/// Every mailbox under `<data_dir>/mailboxes`, sorted by address.
pub fn list_mailboxes(data_dir: &Path) -> io::Result<Vec<MailboxSummary>> {
    let root = data_dir.join("mailboxes");
    let mut out = Vec::new();
    for domain in entries(&root)? {
        let Some(domain_name) = domain.file_name().to_str().and_then(unescape_component) else {
            continue;
        };
        // An escaped domain never starts with a dot: such a directory is tern's own (the
        // delivery staging area, `mailboxes/.staging/`), not a domain.
        if domain.file_name().to_string_lossy().starts_with('.') || !domain.file_type()?.is_dir() {
            continue;
        }
        for local in entries(&domain.path())? {
            let Some(local_name) = local.file_name().to_str().and_then(unescape_component) else {
                continue;
            };
            // A mailbox never starts with a dot (escape_component writes %2E), so this skips
            // stray files and anything that is not tern's.
            if local.file_name().to_string_lossy().starts_with('.') || !local.file_type()?.is_dir()
            {
                continue;
            }
            let mut summary = MailboxSummary {
                address: format!("{local_name}@{domain_name}"),
                messages: 0,
                unseen: 0,
                junk: 0,
                size: 0,
            };
            for (folder, dir) in folders(&local.path())? {
                for m in folder_messages(&folder, &dir)? {
                    summary.messages += 1;
                    summary.unseen += usize::from(!m.seen);
                    summary.junk += usize::from(folder == ".Junk");
                    summary.size += m.size;
                }
            }
            out.push(summary);
        }
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(out)
}

/// The mailbox directory of `address`, which must exist.
fn mailbox_dir(data_dir: &Path, address: &str) -> Result<PathBuf, MailboxError> {
    let bad = |why| MailboxError::BadId {
        what: "address",
        name: address.to_owned(),
        why,
    };
    let (local, domain) = address
        .rsplit_once('@')
        .ok_or_else(|| bad("an address is local-part@domain"))?;
    if domain.is_empty() || address.contains('\0') {
        return Err(bad("an address is local-part@domain"));
    }
    // escape_component makes each part exactly one safe path component whatever it holds.
    let dir = mailbox_path(data_dir, local, domain);
    let domain_dir = data_dir.join("mailboxes").join(escape_component(domain));
    if !is_real_dir(&domain_dir) || !is_real_dir(&dir) {
        return Err(MailboxError::NotFound {
            what: "mailbox",
            name: address.to_owned(),
        });
    }
    Ok(dir)
}

/// The folders of a mailbox: `("", root)` for the inbox, then `(".Name", root/.Name)` for each
/// Maildir++ folder that is a real directory.
fn folders(mailbox: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = vec![(String::new(), mailbox.to_path_buf())];
    let mut subs = Vec::new();
    for entry in entries(mailbox)? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if valid_folder(name) && entry.file_type()?.is_dir() {
            subs.push((name.to_owned(), entry.path()));
        }
    }
    subs.sort();
    out.extend(subs.into_iter().take(MAX_FOLDERS));
    Ok(out)
}

/// A Maildir++ folder directory name: `.` and a name, no `/`, not `..`.
fn valid_folder(name: &str) -> bool {
    name.len() > 1
        && name.starts_with('.')
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name[1..].starts_with('.')
}

/// How a folder is shown: `INBOX`, `Junk`, `Sent`.
fn folder_label(folder: &str) -> String {
    match folder.strip_prefix('.') {
        Some(name) => name.to_owned(),
        None => INBOX.to_owned(),
    }
}

/// A message file found in a folder.
#[derive(Debug)]
struct Found {
    /// `""` or `.Name`.
    folder: String,
    /// The unique name (the file name up to `:`).
    unique: String,
    path: PathBuf,
    size: u64,
    modified: SystemTime,
    seen: bool,
}

impl Found {
    fn id(&self) -> String {
        if self.folder.is_empty() {
            self.unique.clone()
        } else {
            format!("{}/{}", self.folder, self.unique)
        }
    }
}

/// Whether a message file name is one to show: not hidden, and a plain file.
fn message_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('\0')
}

/// The messages in `new/` and `cur/` of the Maildir `dir`.
fn folder_messages(folder: &str, dir: &Path) -> io::Result<Vec<Found>> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        let d = dir.join(sub);
        if !is_real_dir(&d) {
            continue;
        }
        for entry in entries(&d)? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !message_name(name) {
                continue;
            }
            // DirEntry::metadata does not follow a symbolic link: a link is skipped.
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let (unique, flags) = match name.split_once(':') {
                Some((u, f)) => (u, Some(f)),
                None => (name, None),
            };
            // Maildir "info" `2,FLAGS`: S is seen. A message in new/ has not been seen.
            let seen = sub == "cur"
                && flags
                    .and_then(|f| f.strip_prefix("2,"))
                    .is_some_and(|f| f.contains('S'));
            out.push(Found {
                folder: folder.to_owned(),
                unique: unique.to_owned(),
                path: entry.path(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                seen,
            });
        }
    }
    Ok(out)
}

/// The messages of `address`, newest first (by file time, then name), `limit` (at most
/// [`MAX_PAGE`]) from `offset`.
pub fn list_messages(
    data_dir: &Path,
    address: &str,
    offset: usize,
    limit: usize,
) -> Result<MessagesPage, MailboxError> {
    let dir = mailbox_dir(data_dir, address)?;
    let mut all = Vec::new();
    for (folder, fdir) in folders(&dir).map_err(|e| io_at(&dir, e))? {
        all.extend(folder_messages(&folder, &fdir).map_err(|e| io_at(&fdir, e))?);
    }
    all.sort_by(|a, b| {
        b.modified
            .cmp(&a.modified)
            .then_with(|| b.unique.cmp(&a.unique))
    });
    let total = all.len();
    let limit = limit.min(MAX_PAGE);
    let mut messages = Vec::new();
    for m in all.iter().skip(offset).take(limit) {
        messages.push(summarize(m).map_err(|e| io_at(&m.path, e))?);
    }
    Ok(MessagesPage {
        address: address.to_owned(),
        total,
        offset,
        messages,
    })
}

/// Reads the header section of a message file (at most [`MAX_HEADER_BYTES`]).
fn read_head(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)?
        .take(MAX_HEADER_BYTES as u64)
        .read_to_end(&mut buf)?;
    // Keep the header section and its blank line only, so a cut body is not parsed.
    if let Some(end) = find_blank_line(&buf) {
        buf.truncate(end);
    }
    Ok(buf)
}

/// The end of the header section (just past the empty line), LF or CRLF.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn summarize(m: &Found) -> io::Result<MessageSummary> {
    let head = read_head(&m.path)?;
    let parsed = MessageParser::new().parse_headers(&head[..]);
    let (subject, from, to, date) = match &parsed {
        Some(msg) => (
            msg.subject().unwrap_or_default().to_owned(),
            addresses(msg.from()),
            addresses(msg.to()),
            msg.date().map(|d| d.to_rfc3339()),
        ),
        None => Default::default(),
    };
    Ok(MessageSummary {
        id: m.id(),
        folder: folder_label(&m.folder),
        subject,
        from,
        to,
        date: date.unwrap_or_else(|| tern_queue::time_format::format(m.modified)),
        size: m.size,
        seen: m.seen,
    })
}

/// `Name <addr>, addr2` for an address header.
fn addresses(a: Option<&Address<'_>>) -> String {
    let Some(a) = a else {
        return String::new();
    };
    a.iter()
        .take(100)
        .map(|addr| match (addr.name(), addr.address()) {
            (Some(n), Some(e)) => format!("{n} <{e}>"),
            (None, Some(e)) => e.to_owned(),
            (Some(n), None) => n.to_owned(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits an id into its folder (`""` or `.Name`) and unique name, refusing anything that
/// could name a path outside the folder.
fn parse_id(id: &str) -> Result<(&str, &str), MailboxError> {
    let bad = |why| MailboxError::BadId {
        what: "message id",
        name: id.to_owned(),
        why,
    };
    if id.contains('\0') {
        return Err(bad("it holds a NUL byte"));
    }
    let (folder, name) = match id.split_once('/') {
        Some((f, n)) => {
            if !valid_folder(f) {
                return Err(bad("the folder must be a Maildir++ folder like .Junk"));
            }
            (f, n)
        }
        None => ("", id),
    };
    if name.contains('/') {
        return Err(bad("only one / (after the folder) is allowed"));
    }
    if name.contains(':') {
        return Err(bad(
            "an id is the Maildir unique name, without the :2, flags",
        ));
    }
    if !message_name(name) || name == ".." || name == "." {
        return Err(bad("the name must not be empty or start with a dot"));
    }
    Ok((folder, name))
}

/// The message file of `id` in `address`'s mailbox: `new/<unique>` or `cur/<unique>:<info>`.
fn find_message(data_dir: &Path, address: &str, id: &str) -> Result<Found, MailboxError> {
    let (folder, unique) = parse_id(id)?;
    let mailbox = mailbox_dir(data_dir, address)?;
    let dir = if folder.is_empty() {
        mailbox
    } else {
        mailbox.join(folder)
    };
    let not_found = || MailboxError::NotFound {
        what: "message",
        name: id.to_owned(),
    };
    if !is_real_dir(&dir) {
        return Err(not_found());
    }
    folder_messages(folder, &dir)
        .map_err(|e| io_at(&dir, e))?
        .into_iter()
        .find(|m| m.unique == unique)
        .ok_or_else(not_found)
}

/// Where the raw message `id` is (for a download of its exact bytes).
pub fn raw_message_path(data_dir: &Path, address: &str, id: &str) -> Result<PathBuf, MailboxError> {
    Ok(find_message(data_dir, address, id)?.path)
}

/// Cuts `s` to at most `max` bytes on a character boundary; whether it was cut.
fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

/// A header value as shown: unfolded (RFC 5322 2.2.3), trimmed.
fn unfold(value: &str) -> String {
    value
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The message `id` of `address`, parsed (refused above [`MAX_VIEW_BYTES`]).
pub fn read_message(data_dir: &Path, address: &str, id: &str) -> Result<MessageView, MailboxError> {
    let found = find_message(data_dir, address, id)?;
    if found.size > MAX_VIEW_BYTES {
        return Err(MailboxError::Io {
            context: format!(
                "message {id} is {} bytes, more than the {} MiB the viewer parses; download it raw instead",
                found.size,
                MAX_VIEW_BYTES >> 20
            ),
            error: io::Error::new(io::ErrorKind::FileTooLarge, "message too large to view"),
        });
    }
    let mut bytes = Vec::new();
    fs::File::open(&found.path)
        .and_then(|f| f.take(MAX_VIEW_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| io_at(&found.path, e))?;
    let mut view = MessageView {
        id: found.id(),
        folder: folder_label(&found.folder),
        subject: String::new(),
        from: String::new(),
        to: String::new(),
        cc: String::new(),
        date: tern_queue::time_format::format(found.modified),
        headers: Vec::new(),
        text: None,
        html: None,
        truncated: false,
        attachments: Vec::new(),
        size: found.size,
        seen: found.seen,
    };
    let Some(msg) = MessageParser::new().parse(&bytes[..]) else {
        // Not a message mail-parser understands: show the start of it as text.
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        view.truncated = cut(&mut text, MAX_BODY_BYTES);
        view.text = Some(text);
        return Ok(view);
    };
    view.subject = msg.subject().unwrap_or_default().to_owned();
    view.from = addresses(msg.from());
    view.to = addresses(msg.to());
    view.cc = addresses(msg.cc());
    if let Some(d) = msg.date() {
        view.date = d.to_rfc3339();
    }
    view.headers = msg
        .headers_raw()
        .take(MAX_HEADERS)
        .map(|(name, value)| [name.to_owned(), unfold(value)])
        .collect();
    if msg.text_body_count() > 0 {
        if let Some(t) = msg.body_text(0) {
            let mut t = t.into_owned();
            view.truncated |= cut(&mut t, MAX_BODY_BYTES);
            view.text = Some(t);
        }
    }
    if msg.html_body_count() > 0 {
        if let Some(h) = msg.body_html(0) {
            let mut h = h.into_owned();
            view.truncated |= cut(&mut h, MAX_BODY_BYTES);
            view.html = Some(h);
        }
    }
    // mail-parser converts an HTML-only message to text and back: keep the text only when the
    // message has a text part of its own, so the console shows what the sender wrote.
    let has_text_part = msg.text_bodies().any(|p| !p.is_text_html());
    if !has_text_part && view.html.is_some() {
        view.text = None;
    }
    let has_html_part = msg.html_bodies().any(|p| p.is_text_html());
    if !has_html_part {
        view.html = None;
    }
    view.attachments = msg
        .attachments()
        .take(MAX_ATTACHMENTS)
        .map(|p| Attachment {
            name: p.attachment_name().unwrap_or("(no name)").to_owned(),
            content_type: p
                .content_type()
                .map(|c| match c.subtype() {
                    Some(sub) => format!("{}/{sub}", c.ctype()),
                    None => c.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: p.len(),
        })
        .collect();
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PLAIN: &[u8] = b"Return-Path: <a@x.test>\nFrom: Alice <alice@x.test>\nTo: bob@tern.test\nSubject: <b>hello</b>\nDate: Wed, 02 Dec 2026 10:00:00 +0000\n\nplain body\n";
    const HTML: &[u8] = b"From: m@x.test\nTo: bob@tern.test\nSubject: html\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html; charset=utf-8\n\n<p>hi<script>alert(1)</script></p>\n--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=report.pdf\nContent-Transfer-Encoding: base64\n\nSGVsbG8=\n--b--\n";

    /// A mailbox for `local@domain` with its tmp/new/cur; returns its directory.
    fn mailbox(data: &Path, local: &str, domain: &str) -> PathBuf {
        let dir = mailbox_path(data, local, domain);
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        dir
    }

    fn put(dir: &Path, sub: &str, name: &str, bytes: &[u8], age_secs: u64) {
        let path = dir.join(sub).join(name);
        fs::write(&path, bytes).unwrap();
        let t = SystemTime::now() - std::time::Duration::from_secs(age_secs);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn unescape_inverts_escape() {
        for s in [
            "alice",
            "",
            "a b/c",
            ".hidden",
            "Ünïcode",
            "x%y",
            "[192.0.2.1]",
            "a\u{7}",
        ] {
            let esc = escape_component(s);
            assert_eq!(
                unescape_component(&esc).as_deref(),
                Some(s.to_ascii_lowercase().as_str()),
                "{s:?}"
            );
        }
        assert_eq!(unescape_component("%zz"), None);
        assert_eq!(unescape_component("%4"), None);
        assert_eq!(unescape_component("%FF"), None);
    }

    #[test]
    fn lists_mailboxes_with_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        let bob = mailbox(data, "bob", "tern.test");
        put(&bob, "new", "1.M1.mx,S=10", PLAIN, 30);
        put(&bob, "cur", "2.M2.mx,S=10:2,S", PLAIN, 20);
        put(&bob, "cur", "3.M3.mx:2,", PLAIN, 10);
        put(&bob, "tmp", "4.M4.mx", PLAIN, 5); // in progress: never counted
        let junk = bob.join(".Junk");
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(junk.join(sub)).unwrap();
        }
        put(&junk, "new", "5.M5.mx", PLAIN, 1);
        // The delivery staging area is not a domain.
        fs::create_dir_all(data.join("mailboxes/.staging/s00/tmp")).unwrap();
        let odd = mailbox(data, "a b", "tern.test");
        put(&odd, "new", "6.M6.mx", HTML, 1);
        let list = list_mailboxes(data).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].address, "a b@tern.test");
        let b = &list[1];
        assert_eq!(
            (b.address.as_str(), b.messages, b.unseen, b.junk),
            ("bob@tern.test", 4, 3, 1)
        );
        assert_eq!(b.size, 4 * PLAIN.len() as u64);
        // No mailboxes directory yet: an empty list, not an error.
        assert!(list_mailboxes(&data.join("nothing")).unwrap().is_empty());
    }

    #[test]
    fn lists_messages_newest_first_in_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        let bob = mailbox(data, "bob", "tern.test");
        put(&bob, "new", "old", PLAIN, 300);
        put(&bob, "cur", "mid:2,S", PLAIN, 200);
        let junk = bob.join(".Junk");
        fs::create_dir_all(junk.join("new")).unwrap();
        put(&junk, "new", "new1", HTML, 100);
        let page = list_messages(data, "Bob@TERN.test", 0, 10).unwrap();
        assert_eq!(page.total, 3);
        let ids: Vec<_> = page.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, [".Junk/new1", "mid", "old"]);
        assert_eq!(page.messages[0].folder, "Junk");
        let mid = &page.messages[1];
        assert_eq!(
            (
                mid.folder.as_str(),
                mid.subject.as_str(),
                mid.from.as_str(),
                mid.to.as_str(),
                mid.seen
            ),
            (
                "INBOX",
                "<b>hello</b>",
                "Alice <alice@x.test>",
                "bob@tern.test",
                true
            )
        );
        assert!(mid.date.starts_with("2026-12-02T10:00:00"), "{}", mid.date);
        assert!(!page.messages[2].seen);
        let page = list_messages(data, "bob@tern.test", 1, 1).unwrap();
        assert_eq!((page.total, page.messages.len()), (3, 1));
        assert_eq!(page.messages[0].id, "mid");
        assert!(list_messages(data, "bob@tern.test", 9, 500)
            .unwrap()
            .messages
            .is_empty());
        assert!(matches!(
            list_messages(data, "nobody@tern.test", 0, 1),
            Err(MailboxError::NotFound { .. })
        ));
        assert!(matches!(
            list_messages(data, "no-at-sign", 0, 1),
            Err(MailboxError::BadId { .. })
        ));
    }

    #[test]
    fn a_large_header_section_is_read_only_in_part() {
        let tmp = tempfile::tempdir().unwrap();
        let bob = mailbox(tmp.path(), "bob", "tern.test");
        let mut big = b"Subject: big\n".to_vec();
        big.extend(
            std::iter::repeat_n(
                b"X-Pad: 0123456789012345678901234567890123456789\n".as_slice(),
                5000,
            )
            .flatten(),
        );
        big.extend_from_slice(b"\nbody\n");
        put(&bob, "new", "big", &big, 1);
        let page = list_messages(tmp.path(), "bob@tern.test", 0, 1).unwrap();
        assert_eq!(page.messages[0].subject, "big");
        assert_eq!(page.messages[0].size, big.len() as u64);
    }

    #[test]
    fn reads_a_message_with_html_and_attachments() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        let bob = mailbox(data, "bob", "tern.test");
        put(&bob, "new", "h1", HTML, 1);
        put(&bob, "cur", "p1:2,S", PLAIN, 2);
        let v = read_message(data, "bob@tern.test", "h1").unwrap();
        assert_eq!(
            (v.id.as_str(), v.folder.as_str(), v.subject.as_str()),
            ("h1", "INBOX", "html")
        );
        assert!(v
            .html
            .as_deref()
            .unwrap_or_default()
            .contains("<script>alert(1)</script>"));
        assert_eq!(v.text, None);
        assert_eq!(
            v.attachments,
            [Attachment {
                name: "report.pdf".into(),
                content_type: "application/pdf".into(),
                size: 5
            }]
        );
        assert!(v
            .headers
            .iter()
            .any(|[n, val]| n == "Subject" && val == "html"));
        let p = read_message(data, "bob@tern.test", "p1").unwrap();
        assert_eq!(p.text.as_deref().map(str::trim), Some("plain body"));
        assert_eq!(p.html, None);
        assert!(p.seen && !p.truncated);
        assert_eq!(
            raw_message_path(data, "bob@tern.test", "p1").unwrap(),
            bob.join("cur/p1:2,S")
        );
    }

    #[test]
    fn long_bodies_are_cut_and_flagged() {
        let tmp = tempfile::tempdir().unwrap();
        let bob = mailbox(tmp.path(), "bob", "tern.test");
        let mut m = b"Subject: long\n\n".to_vec();
        m.extend(std::iter::repeat_n(b'a', MAX_BODY_BYTES + 100));
        put(&bob, "new", "long", &m, 1);
        let v = read_message(tmp.path(), "bob@tern.test", "long").unwrap();
        assert!(v.truncated);
        assert!(v.text.unwrap_or_default().len() <= MAX_BODY_BYTES);
    }

    #[test]
    fn bad_ids_are_refused_before_any_path_is_built() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        let bob = mailbox(data, "bob", "tern.test");
        put(&bob, "new", "ok", PLAIN, 1);
        for id in [
            "",
            "..",
            ".",
            "../x",
            "new/ok",
            ".Junk/../ok",
            "../../etc/passwd",
            ".Junk/a/b",
            "a\0b",
            "ok:2,S",
            ".hidden",
            "./ok",
            "../bob/new/ok",
        ] {
            assert!(
                matches!(
                    read_message(data, "bob@tern.test", id),
                    Err(MailboxError::BadId { .. })
                ),
                "{id:?} was not refused"
            );
        }
        assert!(matches!(
            read_message(data, "bob@tern.test", "missing"),
            Err(MailboxError::NotFound { .. })
        ));
        assert!(matches!(
            read_message(data, "bob@tern.test", ".Junk/ok"),
            Err(MailboxError::NotFound { .. })
        ));
        // An address cannot climb out either: it is escaped into one path component.
        assert!(matches!(
            read_message(data, "../..@tern.test", "ok"),
            Err(MailboxError::NotFound { .. })
        ));
        assert!(matches!(
            read_message(data, "bob@..", "ok"),
            Err(MailboxError::NotFound { .. })
        ));
    }

    #[test]
    fn symbolic_links_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("new")).unwrap();
        fs::write(outside.join("secret"), PLAIN).unwrap();
        fs::write(outside.join("new/s2"), PLAIN).unwrap();
        let bob = mailbox(&data, "bob", "tern.test");
        symlink(outside.join("secret"), bob.join("new/link")).unwrap();
        symlink(&outside, bob.join(".Evil")).unwrap();
        assert!(matches!(
            read_message(&data, "bob@tern.test", "link"),
            Err(MailboxError::NotFound { .. })
        ));
        assert!(matches!(
            read_message(&data, "bob@tern.test", ".Evil/s2"),
            Err(MailboxError::NotFound { .. })
        ));
        assert_eq!(
            list_messages(&data, "bob@tern.test", 0, 10).unwrap().total,
            0
        );
        // A mailbox directory that is a link is not a mailbox.
        symlink(&outside, data.join("mailboxes/tern.test/eve")).unwrap();
        assert!(matches!(
            list_messages(&data, "eve@tern.test", 0, 10),
            Err(MailboxError::NotFound { .. })
        ));
        let list = list_mailboxes(&data).unwrap();
        assert_eq!(
            list.iter().map(|m| m.address.as_str()).collect::<Vec<_>>(),
            ["bob@tern.test"]
        );
        assert_eq!(list[0].messages, 0);
    }
}
