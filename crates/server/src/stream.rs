//! The byte streams a session runs over: TCP, or TLS over TCP after STARTTLS (or on the
//! submissions port), boxed so the driver does not care which.

use tokio::io::{AsyncRead, AsyncWrite};

/// Any byte stream a session can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type BoxStream = Box<dyn Stream>;
