//! Property tests of the input side, run by `cargo test`: whatever bytes a
//! client sends, and however the network splits them, the line reader and
//! the command parser never panic and always agree with themselves.

use bytes::Bytes;
use crier::protocol::Command;
use crier::protocol::codec::{FrameError, LineReader};
use proptest::prelude::*;

/// What a reader makes of `input` fed in pieces of the given sizes: the
/// lines, then the error that stopped it, if any.
fn lines(input: &[u8], pieces: &[usize], max_line: usize) -> (Vec<Bytes>, Option<FrameError>) {
    let mut reader = LineReader::new(max_line);
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let size = sizes.next().copied().unwrap_or(usize::MAX).clamp(1, rest.len().min(64 * 1024));
        let (piece, after) = rest.split_at(size);
        rest = after;
        reader
            .read_with(|scratch| {
                scratch[..piece.len()].copy_from_slice(piece);
                Ok(piece.len())
            })
            .expect("in memory");
        loop {
            match reader.next_line() {
                Ok(Some(line)) => out.push(line),
                Ok(None) => break,
                Err(error) => return (out, Some(error)),
            }
        }
    }
    (out, None)
}

/// Inputs that look like the protocol often enough to reach every branch.
fn protocol_bytes() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        Just(b"SUBSCRIBE".to_vec()),
        Just(b"psubscribe".to_vec()),
        Just(b"PUBLISH".to_vec()),
        Just(b"HELLO".to_vec()),
        Just(b"PING".to_vec()),
        Just(b"QUIT".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\t".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(word, 0..40).prop_map(|words| words.concat())
}

proptest! {
    #[test]
    fn the_parser_never_panics(line in protocol_bytes()) {
        let _ = Command::parse(Bytes::from(line));
    }

    #[test]
    fn packet_boundaries_do_not_matter(
        input in protocol_bytes(),
        pieces in proptest::collection::vec(1usize..64, 1..8),
        max_line in 1usize..48,
    ) {
        let whole = lines(&input, &[usize::MAX], max_line);
        let split = lines(&input, &pieces, max_line);
        prop_assert_eq!(&whole, &split);
        for line in &whole.0 {
            prop_assert!(line.len() <= max_line);
            prop_assert!(!line.contains(&b'\n'));
            let _ = Command::parse(line.clone());
        }
    }
}
