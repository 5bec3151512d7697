//! Milter framing: every packet, in both directions, is a 4-octet big-endian length, then that
//! many octets: one command octet and its payload (Sendmail libmilter docs, "milter protocol").
//! The length counts the command octet, so it is never zero.

use std::collections::VecDeque;

use thiserror::Error;

/// Octets of the length prefix (libmilter `MILTER_LEN_BYTES`).
pub const LEN_BYTES: usize = 4;

/// The largest body chunk an MTA sends and a milter replaces at once (libmilter
/// `MILTER_CHUNK_SIZE`, also the default `MILTER_MAX_DATA_SIZE`).
pub const MILTER_CHUNK_SIZE: usize = 65535;

/// The largest length field tern accepts: a full body chunk plus its command octet, plus 1 KiB
/// of headroom for the fixed fields (index, NUL terminators) of modification packets around a
/// header near the chunk size. tern does not offer the `MDS_256K` / `MDS_1M` protocol flags, so
/// a conforming milter never sends more.
pub const MAX_PACKET_LEN: usize = 1 + MILTER_CHUNK_SIZE + 1024;

/// One framed packet: the command octet and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub command: u8,
    pub payload: Vec<u8>,
}

/// A framing error; the stream is unusable afterwards (there is no resynchronisation point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PacketError {
    #[error("milter packet with length 0 (no command octet)")]
    ZeroLength,
    #[error("milter packet of {len} octets is over the maximum of {max}")]
    TooLarge { len: u32, max: usize },
}

impl Packet {
    pub fn new(command: u8, payload: Vec<u8>) -> Self {
        Self { command, payload }
    }

    /// Appends the framed packet to `out`. Errors if the payload is too long for the length
    /// field (`TooLarge`); callers that build packets from typed commands never get there, as
    /// body chunks are at most [`MILTER_CHUNK_SIZE`].
    pub fn write_to(&self, out: &mut Vec<u8>) -> Result<(), PacketError> {
        let len = self.payload.len() + 1;
        let len32 = u32::try_from(len).map_err(|_| PacketError::TooLarge {
            len: u32::MAX,
            max: MAX_PACKET_LEN,
        })?;
        out.reserve(LEN_BYTES + len);
        out.extend_from_slice(&len32.to_be_bytes());
        out.push(self.command);
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    /// The framed packet as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PacketError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// Incremental framer: fed bytes as they arrive, it yields complete packets. It checks the
/// length field as soon as its 4 octets are in, so it never buffers more than
/// `LEN_BYTES + max` octets of an unfinished packet; after an error it stays failed.
#[derive(Debug)]
pub struct PacketReader {
    max: usize,
    partial: Vec<u8>,
    ready: VecDeque<Packet>,
    failed: Option<PacketError>,
}

impl Default for PacketReader {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketReader {
    /// A reader with the default maximum, [`MAX_PACKET_LEN`].
    pub fn new() -> Self {
        Self::with_max(MAX_PACKET_LEN)
    }

    /// A reader refusing length fields above `max` (at least 1).
    pub fn with_max(max: usize) -> Self {
        Self {
            max: max.max(1),
            partial: Vec::new(),
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// Feeds bytes; complete packets become available through [`Self::next_packet`].
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), PacketError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        while !data.is_empty() {
            // Complete the length prefix first.
            if self.partial.len() < LEN_BYTES {
                let take = (LEN_BYTES - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.partial.len() < LEN_BYTES {
                    break;
                }
                if let Err(e) = self.check_len() {
                    self.failed = Some(e);
                    self.partial.clear();
                    return Err(e);
                }
            }
            let want = LEN_BYTES + self.declared_len();
            let take = (want - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == want {
                let command = self.partial[LEN_BYTES];
                let payload = self.partial[LEN_BYTES + 1..].to_vec();
                self.partial.clear();
                self.ready.push_back(Packet { command, payload });
            }
        }
        Ok(())
    }

    /// The next complete packet, if any.
    pub fn next_packet(&mut self) -> Option<Packet> {
        self.ready.pop_front()
    }

    /// Octets of the unfinished packet held (never more than `LEN_BYTES + max`).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// The error the stream failed with, if it did.
    pub fn error(&self) -> Option<PacketError> {
        self.failed
    }

    fn declared_len(&self) -> usize {
        let mut len = [0u8; LEN_BYTES];
        len.copy_from_slice(&self.partial[..LEN_BYTES]);
        u32::from_be_bytes(len) as usize
    }

    fn check_len(&self) -> Result<(), PacketError> {
        let len = self.declared_len();
        if len == 0 {
            return Err(PacketError::ZeroLength);
        }
        if len > self.max {
            return Err(PacketError::TooLarge {
                len: u32::try_from(len).unwrap_or(u32::MAX),
                max: self.max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(reader: &mut PacketReader) -> Vec<Packet> {
        std::iter::from_fn(|| reader.next_packet()).collect()
    }

    #[test]
    fn known_bytes_of_a_continue_packet() {
        // SMFIR_CONTINUE: length 1, command 'c', no payload.
        let p = Packet::new(b'c', Vec::new());
        assert_eq!(p.to_bytes(), Ok(vec![0, 0, 0, 1, b'c']));
    }

    #[test]
    fn two_packets_in_one_push() {
        let mut r = PacketReader::new();
        r.push(&[0, 0, 0, 1, b'c', 0, 0, 0, 3, b'h', b'a', 0])
            .expect("valid");
        assert_eq!(
            read_all(&mut r),
            vec![
                Packet::new(b'c', vec![]),
                Packet::new(b'h', b"a\0".to_vec())
            ]
        );
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn zero_length_is_an_error_and_sticks() {
        let mut r = PacketReader::new();
        assert_eq!(r.push(&[0, 0, 0, 0]), Err(PacketError::ZeroLength));
        assert_eq!(r.push(&[0, 0, 0, 1, b'c']), Err(PacketError::ZeroLength));
        assert_eq!(r.next_packet(), None);
    }

    #[test]
    fn oversize_is_refused_before_the_payload_is_buffered() {
        let mut r = PacketReader::new();
        let len = (MAX_PACKET_LEN as u32 + 1).to_be_bytes();
        assert_eq!(
            r.push(&len),
            Err(PacketError::TooLarge {
                len: MAX_PACKET_LEN as u32 + 1,
                max: MAX_PACKET_LEN
            })
        );
        assert_eq!(r.buffered(), 0);
        let mut r = PacketReader::new();
        assert!(r.push(&u32::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn a_full_body_chunk_fits() {
        let p = Packet::new(b'b', vec![b'x'; MILTER_CHUNK_SIZE]);
        let mut r = PacketReader::new();
        r.push(&p.to_bytes().expect("frames")).expect("fits");
        assert_eq!(r.next_packet(), Some(p));
    }

    fn arb_packets() -> impl Strategy<Value = Vec<Packet>> {
        proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(c, p)| Packet::new(c, p)),
            0..8,
        )
    }

    proptest! {
        /// Whatever the chunking, the reader yields exactly the packets written, and never holds
        /// more than one unfinished packet.
        #[test]
        fn same_packets_whatever_the_chunking(
            packets in arb_packets(),
            cuts in proptest::collection::vec(1usize..64, 1..200),
        ) {
            let mut wire = Vec::new();
            for p in &packets {
                p.write_to(&mut wire).expect("frames");
            }
            let mut r = PacketReader::with_max(301);
            let mut got = Vec::new();
            let mut rest = &wire[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                i += 1;
                r.push(&rest[..n]).expect("valid stream");
                prop_assert!(r.buffered() <= LEN_BYTES + 301);
                rest = &rest[n..];
                got.extend(read_all(&mut r));
            }
            prop_assert_eq!(got, packets);
            prop_assert_eq!(r.buffered(), 0);
        }

        /// Arbitrary bytes: never a panic, never more buffered than the maximum allows, and
        /// every yielded packet within the maximum.
        #[test]
        fn arbitrary_bytes_stay_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            max in 1usize..200,
            chunk in 1usize..50,
        ) {
            let mut r = PacketReader::with_max(max);
            for piece in bytes.chunks(chunk) {
                if r.push(piece).is_err() {
                    break;
                }
                prop_assert!(r.buffered() <= LEN_BYTES + max);
                while let Some(p) = r.next_packet() {
                    prop_assert!(p.payload.len() < max);
                }
            }
        }
    }
}
