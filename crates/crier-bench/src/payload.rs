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

/// What [`Sequences::check`] found in one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next message of its publisher, or a later one (`skipped` missed
    /// in between), sent at `sent_ns`.
    InOrder { sent_ns: u64, skipped: u64 },
    /// Older than one already seen from the same publisher.
    Reordered { sent_ns: u64 },
    /// Not a bench header, or an unknown publisher.
    Corrupt,
}

/// The sequence numbers one subscriber expects next, per publisher. The
/// usual case (the next number) is found by comparing the header's 16 hex
/// digits with the expected ones, kept as text and counted up in place: no
/// decoding per message but the send time's.
pub struct Sequences {
    /// Per publisher, the next sequence number as its 16 hex digits.
    next_hex: Vec<[u8; 16]>,
}

impl Sequences {
    pub fn new(publishers: usize) -> Self {
        Sequences { next_hex: vec![[b'0'; 16]; publishers] }
    }

    #[inline]
    pub fn check(&mut self, payload: &[u8]) -> Seen {
        let Some(head) = payload.get(..HEADER_LEN) else { return Seen::Corrupt };
        let Some(publisher) = hex8(head[0..8].try_into().unwrap_or_default()) else {
            return Seen::Corrupt;
        };
        let Some(sent_ns) = get_hex(&head[24..40]) else { return Seen::Corrupt };
        let p = publisher as usize;
        let Some(next_hex) = self.next_hex.get_mut(p) else { return Seen::Corrupt };
        if head[8..24] == next_hex[..] {
            count_up(next_hex);
            return Seen::InOrder { sent_ns, skipped: 0 };
        }
        let (Some(seq), Some(next)) = (get_hex(&head[8..24]), get_hex(next_hex)) else {
            return Seen::Corrupt;
        };
        if seq < next {
            return Seen::Reordered { sent_ns };
        }
        put_hex(next_hex, seq + 1);
        Seen::InOrder { sent_ns, skipped: seq - next }
    }
}

/// Adds one to a number written in lowercase hex digits.
fn count_up(digits: &mut [u8]) {
    for d in digits.iter_mut().rev() {
        match *d {
            b'9' => *d = b'a',
            b'f' => *d = b'0',
            _ => *d += 1,
        }
        if *d != b'0' {
            return;
        }
    }
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
        let mut seqs = Sequences::new(8);
        seqs.next_hex[7] = *b"00000000075bcd15";
        assert_eq!(seqs.check(&b), Seen::InOrder { sent_ns: h.sent_ns, skipped: 0 });
        assert_eq!(
            Sequences::new(8).check(&b),
            Seen::InOrder { sent_ns: h.sent_ns, skipped: h.seq }
        );
        for bad in [b'/', b':', b'`', b'g', b'A', b'F', 0x80, 0xe6] {
            for at in [3, 13, 30] {
                let mut b = b.clone();
                b[at] = bad;
                assert_eq!(
                    Sequences::new(8).check(&b),
                    Seen::Corrupt,
                    "byte {bad:#x} is no hex digit"
                );
            }
        }
        for v in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX, 0xdead_beef] {
            let mut hex = [0u8; 16];
            put_hex(&mut hex, v);
            assert_eq!(get_hex(&hex), Some(v));
        }
    }

    #[test]
    fn counting_up_in_hex_text() {
        for v in [0u64, 9, 0xf, 0xff, 0x19f, 0x0fff_ffff_ffff_fffe] {
            let (mut hex, mut want) = ([0u8; 16], [0u8; 16]);
            put_hex(&mut hex, v);
            count_up(&mut hex);
            put_hex(&mut want, v + 1);
            assert_eq!(hex, want, "{v:#x} + 1");
        }
    }

    #[test]
    fn sequences_find_gaps_and_reordering() {
        let message = |publisher, seq| {
            let mut b = BytesMut::new();
            write(&mut b, Header { publisher, seq, sent_ns: 5 }, 48);
            b
        };
        let mut seqs = Sequences::new(2);
        let in_order = |skipped| Seen::InOrder { sent_ns: 5, skipped };
        assert_eq!(seqs.check(&message(0, 0)), in_order(0));
        assert_eq!(seqs.check(&message(1, 0)), in_order(0));
        assert_eq!(seqs.check(&message(0, 1)), in_order(0));
        assert_eq!(seqs.check(&message(0, 5)), in_order(3));
        assert_eq!(seqs.check(&message(0, 6)), in_order(0));
        assert_eq!(seqs.check(&message(0, 2)), Seen::Reordered { sent_ns: 5 });
        assert_eq!(seqs.check(&message(0, 7)), in_order(0));
        assert_eq!(seqs.check(&message(2, 0)), Seen::Corrupt, "no publisher 2");
        assert_eq!(seqs.check(b"short"), Seen::Corrupt);
        for seq in 8..300 {
            assert_eq!(seqs.check(&message(0, seq)), in_order(0));
        }
    }
}
