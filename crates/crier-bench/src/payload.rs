//! The bench message: a fixed ASCII header followed by `x` padding.
//!
//! The header is plain lower-case hex so that a payload never holds CR, LF or
//! a space: crier's v1-style `PUBLISH ch payload` line stays one line, and the
//! same bytes travel unchanged through Redis and NATS. Nor does it hold a
//! quote, a backslash or a control character: in crier's JSON pushes (SSE)
//! its `data` string has no escape, so the subscriber's fast path reads it as
//! is (`sse.rs` unescapes in place all the same). Layout (40 bytes):
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

/// Decodes lowercase hex, 8 digits at a time (SWAR, no branch per digit):
/// this runs once per message received, and the load generator shares the
/// machine's two cores with the server it measures. `src` is 8 or 16 bytes.
fn get_hex(src: &[u8]) -> Option<u64> {
    src.chunks(8).try_fold(0u64, |value, chunk| {
        let chunk: [u8; 8] = chunk.try_into().ok()?;
        Some(value << 32 | u64::from(hex8(chunk)?))
    })
}

/// Eight lowercase hex digits, the first the most significant.
fn hex8(chunk: [u8; 8]) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    let x = u64::from_le_bytes(chunk);
    // For bytes below 0x80, (b + 0x80 - lo) has its high bit set iff b >= lo,
    // and (b + 0x7f - hi) iff b > hi; no lane carries into the next.
    let in_range = |lo: u8, hi: u8| {
        (x + ONES * u64::from(0x80 - lo)) & !(x + ONES * u64::from(0x7f - hi)) & HIGH
    };
    let (digit, letter) = (in_range(b'0', b'9'), in_range(b'a', b'f'));
    if x & HIGH != 0 || digit | letter != HIGH {
        return None;
    }
    // Each byte's value: its low nibble, plus 9 for a letter.
    let v = (x & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Pack the nibbles, first byte most significant.
    let v = ((v << 4) | (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = ((v << 8) | (v >> 16)) & 0x0000_ffff_0000_ffff;
    let v = ((v << 16) | (v >> 32)) & 0x0000_0000_ffff_ffff;
    u32::try_from(v).ok()
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
        // Nothing that a line protocol splits on or that JSON escapes.
        assert!(b.iter().all(|&c| c.is_ascii_alphanumeric()));
        assert_eq!(
            serde_json::to_string(std::str::from_utf8(&b).expect("ASCII")).ok(),
            Some(format!("\"{}\"", String::from_utf8_lossy(&b)))
        );
        assert_eq!(read(&b), Some(h));
        assert_eq!(read(b"zz"), None);
        assert_eq!(read(&[b'g'; HEADER_LEN]), None);
        for bad in [b'/', b':', b'`', b'g', b'A', b'F', 0x80, 0xe6] {
            let mut b = b.clone();
            b[13] = bad;
            assert_eq!(read(&b), None, "byte {bad:#x} is no hex digit");
        }
        for v in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX, 0xdead_beef] {
            let mut hex = [0u8; 16];
            put_hex(&mut hex, v);
            assert_eq!(get_hex(&hex), Some(v));
        }
    }
}
