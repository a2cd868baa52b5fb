//! The bench message: a fixed ASCII header followed by `x` padding.
//!
//! The header is plain lower-case hex so that a payload never holds CR, LF or
//! a space: crier's v1-style `PUBLISH ch payload` line stays one line, and the
//! same bytes travel unchanged through Redis and NATS. Layout (40 bytes):
//! publisher id (8 hex digits), per-(publisher, channel) sequence number (16),
//! send time in nanoseconds since the bench's shared start instant (16).

use bytes::{BufMut, BytesMut};

/// Bytes taken by the header; `--size` may not be smaller.
pub const HEADER_LEN: usize = 8 + 16 + 16;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What a subscriber learns from one received payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Appends a `size`-byte payload (header + padding) to `out`.
pub fn write(out: &mut BytesMut, h: Header, size: usize) {
    let mut head = [0u8; HEADER_LEN];
    put_hex(&mut head[0..8], u64::from(h.publisher));
    put_hex(&mut head[8..24], h.seq);
    put_hex(&mut head[24..40], h.sent_ns);
    out.put_slice(&head);
    out.put_bytes(b'x', size.saturating_sub(HEADER_LEN));
}

/// Decodes the header at the start of a payload; `None` if it is not ours.
pub fn read(payload: &[u8]) -> Option<Header> {
    let head = payload.get(..HEADER_LEN)?;
    Some(Header {
        publisher: u32::try_from(get_hex(&head[0..8])?).ok()?,
        seq: get_hex(&head[8..24])?,
        sent_ns: get_hex(&head[24..40])?,
    })
}

/// Writes `v` as exactly `dst.len()` hex digits (most significant first).
fn put_hex(dst: &mut [u8], mut v: u64) {
    for d in dst.iter_mut().rev() {
        *d = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// The value of each byte as a lowercase hex digit; 0xff where it is none.
static HEX_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        table[HEX[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Decodes lowercase hex without a branch per digit: this runs once per
/// message received, and the load generator shares the machine's two cores
/// with the server it measures.
fn get_hex(src: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    let mut seen = 0u8;
    for &c in src {
        let d = HEX_VALUE[usize::from(c)];
        seen |= d;
        v = (v << 4) | u64::from(d & 0xf);
    }
    (seen < 16).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let h = Header { publisher: 7, seq: 123_456_789, sent_ns: u64::MAX - 3 };
        let mut b = BytesMut::new();
        write(&mut b, h, 64);
        assert_eq!(b.len(), 64);
        assert!(b.iter().all(|&c| c.is_ascii_alphanumeric() && c != b'\r' && c != b'\n'));
        assert_eq!(read(&b), Some(h));
        assert_eq!(read(b"zz"), None);
        assert_eq!(read(&[b'g'; HEADER_LEN]), None);
    }
}
