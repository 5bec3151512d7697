//! The payload field types shared by commands and responses: NUL-free strings (the protocol's
//! strings are NUL-terminated, so a NUL inside one cannot be represented), 32-bit and 16-bit
//! big-endian integers, and a cursor that reads them without ever panicking.

use thiserror::Error;

/// A malformed payload field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    #[error("payload ends inside {0}")]
    Truncated(&'static str),
    #[error("{0} is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("{0} octets of trailing data after the payload")]
    Trailing(usize),
    #[error("a string contains a NUL octet")]
    ContainsNul,
    #[error("header name is empty or not printable ASCII without ':'")]
    BadHeaderName,
}

/// Bytes without NUL: a valid protocol string (its terminator is added when encoding).
/// Octets, not `str`: header values and ESMTP arguments may carry 8-bit data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NulFree(Vec<u8>);

impl NulFree {
    /// Refuses bytes containing a NUL.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, FieldError> {
        let bytes = bytes.into();
        if bytes.contains(&0) {
            return Err(FieldError::ContainsNul);
        }
        Ok(Self(bytes))
    }

    /// Any bytes, each NUL replaced by a space: for values that must be sent whatever they
    /// hold (a header field of the client's, an address).
    pub fn lossy(bytes: &[u8]) -> Self {
        Self(
            bytes
                .iter()
                .map(|b| if *b == 0 { b' ' } else { *b })
                .collect(),
        )
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Lossy UTF-8 view, for logs and for values that are ASCII by protocol.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Appends the string and its NUL terminator.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
        out.push(0);
    }
}

impl TryFrom<&str> for NulFree {
    type Error = FieldError;
    fn try_from(s: &str) -> Result<Self, FieldError> {
        Self::new(s.as_bytes())
    }
}

/// Reads fields off a payload front to back.
pub(crate) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(payload: &'a [u8]) -> Self {
        Self { rest: payload }
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, FieldError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or(FieldError::Truncated(what))?;
        self.rest = rest;
        Ok(u32::from_be_bytes(*head))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, FieldError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<2>()
            .ok_or(FieldError::Truncated(what))?;
        self.rest = rest;
        Ok(u16::from_be_bytes(*head))
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, FieldError> {
        let (&b, rest) = self.rest.split_first().ok_or(FieldError::Truncated(what))?;
        self.rest = rest;
        Ok(b)
    }

    /// One NUL-terminated string.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<NulFree, FieldError> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FieldError::Unterminated(what))?;
        let s = NulFree(self.rest[..end].to_vec());
        self.rest = &self.rest[end + 1..];
        Ok(s)
    }

    /// NUL-terminated strings up to the end of the payload.
    pub(crate) fn strings(&mut self, what: &'static str) -> Result<Vec<NulFree>, FieldError> {
        let mut out = Vec::new();
        while !self.rest.is_empty() {
            out.push(self.string(what)?);
        }
        Ok(out)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails if anything is left: a field the command does not have.
    pub(crate) fn finish(self) -> Result<(), FieldError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FieldError::Trailing(self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_refused() {
        assert_eq!(NulFree::new(b"a\0b".to_vec()), Err(FieldError::ContainsNul));
        assert!(NulFree::try_from("ab").is_ok());
    }

    #[test]
    fn cursor_never_panics_on_short_input() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u32("x"), Err(FieldError::Truncated("x")));
        assert_eq!(c.u16("y"), Ok(0x0102));
        assert_eq!(c.string("s"), Err(FieldError::Unterminated("s")));
        assert_eq!(c.u8("z"), Ok(3));
        assert_eq!(c.u8("z"), Err(FieldError::Truncated("z")));
    }
}
